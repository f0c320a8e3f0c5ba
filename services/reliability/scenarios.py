"""The scenarios of `make reliability`, each on loopback with its own processes, stopped by their pids:
a replica stopped (SIGTERM) or killed (SIGKILL) under load through the gateway, overload at four times
capacity, a soak at moderate mixed load, and health checks while preprocessing runs at its limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.gateway.v1 import gateway_pb2 as gw
from maas.gateway.v1 import gateway_pb2_grpc
from maas.inference import grpc_service_pb2 as v2pb
from maas.inference import grpc_service_pb2_grpc
from maas.vision.v1 import vision_pb2, vision_pb2_grpc
from services.bench.loadgen import sequence_requests
from services.common.codec import Tensor, encode_inputs
from services.common.settings import REPO_ROOT
from services.reliability.harness import (
    CALL_TIMEOUT_SECONDS,
    Call,
    RssSampler,
    Service,
    closed_loop,
    open_loop,
    percentile_ms,
    routing_file,
    running,
)
from services.tokenizer.spec import TokenizerSettings

CALLERS = 8
SHIRT = REPO_ROOT / "docs" / "examples" / "shirt.png"
OVERLOAD_FACTOR = 4
CAPACITY_CALLERS = 16
HEALTH_PERIOD_SECONDS = 0.02
LARGE_MESSAGES = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Figure:
    """One measured figure against its target. A `performance` figure (a latency, a ratio of latencies, a
    memory growth) depends on how busy the machine is: the full run gates on it, CI's short run reports it."""

    name: str
    value: float
    unit: str
    target: str
    ok: bool
    performance: bool = False

    def shown(self) -> str:
        """The value with its unit."""
        number = f"{self.value:,.2f}" if isinstance(self.value, float) else f"{self.value:,}"
        return f"{number} {self.unit}".strip()


@dataclass
class Step:
    """One scenario's outcome: what ran, its figures, and the details behind them."""

    title: str
    setup: str
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def passed(self, gate_performance: bool) -> bool:
        """True when every gated figure meets its target."""
        return all(figure.ok for figure in self.figures if gate_performance or not figure.performance)


@dataclass(frozen=True)
class Durations:
    """How long each scenario runs: the full run, or the short one CI runs."""

    replica_load: float
    capacity: float
    overload: float
    fuzz_cases: int
    soak: float
    preprocessing: float
    gate_performance: bool

    @classmethod
    def full(cls) -> Durations:
        """`make reliability`: 10,000 fuzz cases, a 10-minute soak, every figure gated."""
        return cls(
            replica_load=20.0,
            capacity=8.0,
            overload=10.0,
            fuzz_cases=10_000,
            soak=600.0,
            preprocessing=20.0,
            gate_performance=True,
        )

    @classmethod
    def short(cls) -> Durations:
        """CI's run: 2,000 fuzz cases, the soak cut to 60 s, the rest shortened. It gates on lost calls,
        errors and recovery; its latencies and memory growth are reported, not gated (CI's machine is shared)."""
        return cls(
            replica_load=10.0,
            capacity=5.0,
            overload=6.0,
            fuzz_cases=2_000,
            soak=60.0,
            preprocessing=10.0,
            gate_performance=False,
        )


def _env(repository: Path) -> dict[str, str]:
    return {"MAAS_MODEL_REPOSITORY": str(repository)}


def _gateway(repository: Path, routing: Path) -> Service:
    env = {"MAAS_GATEWAY_ROUTING_FILE": str(routing), "MAAS_GATEWAY_MAX_RECONNECT_BACKOFF_SECONDS": "0.2"}
    return Service("gateway", {**_env(repository), **env})


def _codes(calls: list[Call]) -> Counter:
    return Counter(call.code for call in calls)


def _served(metrics_port: int, method: str) -> float:
    """The count of OK calls of `method` a service has served, from its /metrics."""
    try:
        text = LOOPBACK.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("maas_grpc_requests_total{") and f'method="{method}"' in line and 'code="OK"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def replica_stopped(repository: Path, durations: Durations, signum: signal.Signals) -> Step:
    """Two vision replicas behind the gateway under `CALLERS` closed-loop callers; one gets `signum` a
    third of the way in and is started again on its port two thirds in (SIGKILL: one second after)."""
    killed = signum is signal.SIGKILL
    title = "SIGKILL of one of two replicas, then a restart" if killed else "SIGTERM to one of two replicas"
    image = SHIRT.read_bytes()
    with tempfile.TemporaryDirectory(prefix="maas-reliability-") as workdir:
        one, two = Service("vision", _env(repository)), Service("vision", _env(repository))
        route: dict = {"target": "vision"}
        if killed:
            route["retries"] = {"in_flight": True}
        routing = routing_file(Path(workdir), {"vision": [one.address, two.address]}, {"fashion_cnn": route})
        gateway = _gateway(repository, routing)
        async with running([one, two, gateway]), grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gw.ClassifyImageRequest(images=[image])

            def call():
                return stub.ClassifyImage(request, timeout=CALL_TIMEOUT_SECONDS)

            await closed_loop(call, CALLERS, 1.0)
            load = asyncio.create_task(closed_loop(call, CALLERS, durations.replica_load))
            await asyncio.sleep(durations.replica_load / 3)
            signalled = time.monotonic()
            one.signal(signum)
            status = await one.process.wait()
            gone = time.monotonic() - signalled
            await asyncio.sleep(1.0 if killed else max(0.0, durations.replica_load / 3 - gone))
            restarted = time.monotonic()
            await one.start()
            ready = time.monotonic()
            baseline = _served(one.metrics_port, "ClassifyImage")
            first_served = None
            while time.monotonic() < ready + 10 and not load.done():
                if _served(one.metrics_port, "ClassifyImage") > baseline:
                    first_served = time.monotonic() - ready
                    break
                await asyncio.sleep(0.05)
            calls = await load
    codes = _codes(calls)
    failed = [call for call in calls if call.code != "OK"]
    ratio = len(failed) / len(calls) if calls else 1.0
    step = Step(
        title,
        f"Two `vision` replicas (`maas run vision`) behind the gateway (`endpoints` target), {CALLERS} callers "
        "in a closed loop of typed `ClassifyImage` calls (a real Fashion-MNIST PNG) for "
        f"{durations.replica_load:.0f} s; "
        f"one replica gets {signum.name} a third of the way in"
        + (
            ", and is started again on its port a second after it died; the route allows retrying calls lost in "
            "flight (`retries.in_flight`: classification has no side effects)."
            if killed
            else " (it drains: health NOT_SERVING, new calls refused as not run, which the gateway retries on the "
            "other replica), and is started again on its port two thirds in."
        ),
    )
    if killed:
        last = max((call.sent + call.seconds for call in failed), default=signalled) - signalled
        step.figures = [
            Figure("failed calls", ratio * 100, "%", "<= 0.1 %", ratio <= 0.001),
            Figure("last failure after the kill", max(0.0, last), "s", "<= 5 s", last <= 5),
            Figure(
                "restarted replica serving calls after READY",
                first_served if first_served is not None else float("inf"),
                "s",
                "<= 5 s",
                first_served is not None and first_served <= 5,
            ),
        ]
    else:
        step.figures = [Figure("failed calls", len(failed), "", "= 0", not failed)]
    step.details = [
        f"calls: {len(calls):,}; statuses: {dict(codes)}",
        f"the signalled replica exited with status {status} {gone:.2f} s after the signal; restarted "
        f"{restarted - signalled:.1f} s after it, READY {ready - restarted:.1f} s later",
        f"p50 {percentile_ms((c.seconds for c in calls), 50):.1f} ms, "
        f"p99 {percentile_ms((c.seconds for c in calls), 99):.1f} ms",
    ]
    return step


def _embed_requests(repository: Path, count: int, tokens: int) -> list[v2pb.ModelInferRequest]:
    """v2 `minilm_embed` requests of real reviews, each cut to `tokens` tokens (one sequence each)."""
    from services.common.reviews import reviews
    from services.tokenizer.model import WordPieceTokenizer

    texts, _ = reviews("testing_data")
    tokenizer = WordPieceTokenizer(_newest(repository / "tokenizer"))
    ids, mask, _ = tokenizer.encode_arrays(texts[:count], max_length=tokens)
    return sequence_requests("minilm_embed", ids, mask)


def _newest(model: Path) -> Path:
    return max((p for p in model.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


async def overload(repository: Path, durations: Durations) -> Step:
    """`minilm_embed` on its own transformer service: its capacity measured with a closed loop, then
    open-loop arrivals at four times that rate, then the time until a lone call is served as fast as at
    capacity again."""
    requests = _embed_requests(repository, 256, 128)
    queue = CAPACITY_CALLERS
    service = Service("transformer", {**_env(repository), "MAAS_TRANSFORMER_MAX_QUEUE_SIZE": str(queue)})
    async with running([service]), grpc.aio.insecure_channel(service.address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        cycle = iter(np.resize(np.arange(len(requests)), 1_000_000))

        def call():
            return stub.ModelInfer(requests[next(cycle)], timeout=CALL_TIMEOUT_SECONDS)

        await closed_loop(call, CAPACITY_CALLERS, 2.0)
        capacity_calls = await closed_loop(call, CAPACITY_CALLERS, durations.capacity)
        rss_before = service.rss()
        capacity = sum(c.code == "OK" for c in capacity_calls) / durations.capacity
        p99_capacity = percentile_ms((c.seconds for c in capacity_calls if c.code == "OK"), 99)
        with RssSampler({"transformer": service}, 0.5) as sampler:
            calls = await open_loop({"embed": (capacity * OVERLOAD_FACTOR, call)}, durations.overload)
        rss_peak = max(s["transformer"] for _, s in sampler.samples)
        ended = time.monotonic()
        recovered = None
        while time.monotonic() < ended + 30:
            probe = await closed_loop(call, 1, 0.001)
            if probe and probe[0].code == "OK" and probe[0].seconds * 1000 <= p99_capacity:
                recovered = probe[0].sent + probe[0].seconds - ended
                break
    refused = [c for c in calls if c.code == "RESOURCE_EXHAUSTED"]
    accepted = [c for c in calls if c.code == "OK"]
    other = _codes(c for c in calls if c.code not in ("OK", "RESOURCE_EXHAUSTED"))
    p99_refused = percentile_ms((c.seconds for c in refused), 99)
    p99_accepted = percentile_ms((c.seconds for c in accepted), 99)
    growth = (rss_peak - rss_before) / rss_before * 100 if rss_before else float("inf")
    step = Step(
        f"Overload at {OVERLOAD_FACTOR}x capacity on minilm_embed",
        f"One transformer service (`maas run transformer`, `MAX_QUEUE_SIZE={queue}`: the queue holds what the "
        f"service runs within its latency at capacity). Capacity: {CAPACITY_CALLERS} callers in a closed loop of "
        f"v2 `minilm_embed` calls (one real review each, at most 128 tokens) for {durations.capacity:.0f} s. Then "
        f"open-loop arrivals at {OVERLOAD_FACTOR}x that rate for {durations.overload:.0f} s, whatever the answers; "
        "then lone calls until one is served within the p99 at capacity.",
    )
    step.figures = [
        Figure("refusals", len(refused), "", "> 0", bool(refused)),
        Figure("refusals p99", p99_refused, "ms", "<= 5 ms", bool(refused) and p99_refused <= 5, performance=True),
        Figure(
            "accepted p99 / p99 at capacity",
            p99_accepted / p99_capacity if p99_capacity else float("inf"),
            "x",
            "<= 2x",
            p99_capacity > 0 and p99_accepted <= 2 * p99_capacity,
            performance=True,
        ),
        Figure("RSS growth", growth, "%", "<= 10 %", growth <= 10, performance=True),
        Figure(
            "recovery",
            recovered if recovered is not None else float("inf"),
            "s",
            "<= 5 s",
            recovered is not None and recovered <= 5,
        ),
    ]
    step.details = [
        f"capacity {capacity:,.0f} calls/s, p99 {p99_capacity:.1f} ms; "
        f"offered {capacity * OVERLOAD_FACTOR:,.0f} calls/s",
        f"overload: {len(calls):,} calls, {len(accepted):,} served (p99 {p99_accepted:.1f} ms), {len(refused):,} "
        f"refused RESOURCE_EXHAUSTED (p50 {percentile_ms((c.seconds for c in refused), 50):.2f} ms), "
        f"other statuses: {dict(other) or 'none'}",
        f"RSS {rss_before / 2**20:,.0f} MiB before, {rss_peak / 2**20:,.0f} MiB at most during the overload",
    ]
    return step


FUZZ = REPO_ROOT / "tests" / "fuzz" / "fuzz_stack.py"
FUZZ_TIMEOUT_SECONDS = 3600


async def fuzz(durations: Durations) -> Step:
    """`make fuzz` (hypothesis-generated malformed requests against every endpoint of one `maas up`) at
    `durations.fuzz_cases` cases, run as its own pytest process; its counts read from its JSON report."""
    with tempfile.TemporaryDirectory(prefix="maas-reliability-") as workdir:
        report = Path(workdir) / "fuzz.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pytest",
            str(FUZZ),
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            f"timeout={FUZZ_TIMEOUT_SECONDS}",
            cwd=REPO_ROOT,
            env={**os.environ, "FUZZ_CASES": str(durations.fuzz_cases), "FUZZ_REPORT": str(report)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        counts = json.loads(report.read_text()) if report.exists() else {}
    codes = counts.get("codes", {})
    failing = sum(codes.get(code, 0) for code in ("INTERNAL", "UNKNOWN"))
    tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    step = Step(
        f"Fuzz: {durations.fuzz_cases:,} malformed requests (`make fuzz`)",
        f"`make fuzz` with `FUZZ_CASES={durations.fuzz_cases}` (`tests/fuzz/fuzz_stack.py`): hypothesis-generated "
        "hostile messages and bytes against every endpoint of one `maas up`; it fails on INTERNAL or UNKNOWN, a call "
        "over 5 s, a service that dies or grows by over 100 MB, or an endpoint that answers valid requests "
        "differently afterwards.",
    )
    step.figures = [
        Figure("INTERNAL or UNKNOWN", failing, "", "= 0", bool(codes) and failing == 0),
        Figure(
            "fuzz run passed (no hang, no crash, answers unchanged)",
            process.returncode,
            "exit status",
            "= 0",
            process.returncode == 0,
        ),
    ]
    step.details = [
        f"cases: {counts.get('cases', 0):,} (seed {counts.get('seed', '?')}); statuses: {codes}",
        f"pytest: {tail[0]}",
    ]
    return step


SOAK_RATES = {"text (transformer)": 8.0, "text (lstm)": 8.0, "image": 16.0, "embed": 8.0}
"""Calls per second of each kind in the soak: moderate, a fraction of what the stack serves on 2 cores."""


async def soak(repository: Path, durations: Durations) -> Step:
    """The whole stack (tokenizer, vision, text, transformer, gateway, one process each) under moderate
    mixed open-loop load through the gateway; RSS of every process sampled throughout."""
    from services.common.reviews import reviews

    texts, _ = reviews("testing_data")
    image = SHIRT.read_bytes()
    with tempfile.TemporaryDirectory(prefix="maas-reliability-") as workdir:
        models = {name: Service(name, _env(repository)) for name in ("tokenizer", "vision", "text", "transformer")}
        routing = routing_file(
            Path(workdir),
            {name: [service.address] for name, service in models.items()},
            {
                "tokenizer": {"target": "tokenizer"},
                "fashion_cnn": {"target": "vision"},
                "review_lstm": {"target": "text"},
                "minilm_embed": {"target": "transformer"},
                "minilm_sentiment": {"target": "transformer"},
            },
        )
        gateway = _gateway(repository, routing)
        services = {**models, "gateway": gateway}
        async with running(services.values()), grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            counter = iter(range(10**9))

            def text() -> str:
                return texts[next(counter) % len(texts)]

            mix = {
                "text (transformer)": lambda: stub.ClassifyText(
                    gw.ClassifyTextRequest(texts=[text()], model=gw.TEXT_MODEL_TRANSFORMER),
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
                "text (lstm)": lambda: stub.ClassifyText(
                    gw.ClassifyTextRequest(texts=[text()], model=gw.TEXT_MODEL_LSTM), timeout=CALL_TIMEOUT_SECONDS
                ),
                "image": lambda: stub.ClassifyImage(
                    gw.ClassifyImageRequest(images=[image]), timeout=CALL_TIMEOUT_SECONDS
                ),
                "embed": lambda: stub.Embed(gw.EmbedRequest(texts=[text()]), timeout=CALL_TIMEOUT_SECONDS),
            }
            with RssSampler(services, 2.0) as sampler:
                calls = await open_loop({kind: (SOAK_RATES[kind], call) for kind, call in mix.items()}, durations.soak)
    errors = [c for c in calls if c.code != "OK"]
    start = durations.soak / 5
    window = max(4.0, durations.soak / 30)
    growth = {}
    for name in services:
        early, late = sampler.at(name, start, window), sampler.last(name, window)
        growth[name] = (late - early) / early * 100 if early else float("inf")
    minute = f"{start / 60:g}" if start >= 60 else f"{start:g} s"
    step = Step(
        f"Soak: {durations.soak / 60:g} minutes of moderate mixed load through the gateway",
        "Tokenizer, vision, text and transformer services and the gateway, one process each; open-loop arrivals "
        f"through the gateway at {sum(SOAK_RATES.values()):g} calls/s in all ("
        + ", ".join(f"{kind} {rate:g}/s" for kind, rate in SOAK_RATES.items())
        + ") of real reviews and a Fashion-MNIST PNG; the RSS of every process sampled every 2 s. RSS growth: "
        f"the median over the last {window:g} s against the median over {window:g} s from "
        f"{'minute ' + minute if start >= 60 else minute}.",
    )
    step.figures = [Figure("errors", len(errors), "", "= 0", not errors)]
    step.figures += [
        Figure(f"RSS growth, {name}", value, "%", "<= 5 %", value <= 5, performance=True)
        for name, value in growth.items()
    ]
    by_kind: dict[str, list[Call]] = {}
    for call in calls:
        by_kind.setdefault(call.kind, []).append(call)
    step.details = [
        f"{kind}: {len(kind_calls):,} calls, p50 {percentile_ms((c.seconds for c in kind_calls), 50):.1f} ms, "
        f"p99 {percentile_ms((c.seconds for c in kind_calls), 99):.1f} ms, statuses {dict(_codes(kind_calls))}"
        for kind, kind_calls in by_kind.items()
    ]
    step.details += [
        f"RSS {name}: {sampler.at(name, start, window) / 2**20:,.1f} MiB -> "
        f"{sampler.last(name, window) / 2**20:,.1f} MiB"
        for name in services
    ]
    marks = [0.0, durations.soak / 10, start, durations.soak / 2]
    step.details += [
        f"RSS {name} over the run (median over {window:g} s from each point; warm-up is the growth before "
        f"{'minute ' + minute if start >= 60 else minute}): "
        + ", ".join(f"{mark:g} s {sampler.at(name, mark, window) / 2**20:,.1f} MiB" for mark in marks)
        + f", last {window:g} s {sampler.last(name, window) / 2**20:,.1f} MiB"
        for name in services
    ]
    return step


def largest_texts(texts: list[str], limits: TokenizerSettings) -> list[bytes]:
    """The largest request of real texts a tokenizer with `limits` accepts: `max_texts` texts, each its
    share of `max_request_bytes` (at most `max_text_bytes`), made of one of the longest texts repeated
    and cut at a character boundary."""
    share = min(limits.max_request_bytes // limits.max_texts, limits.max_text_bytes)
    longest = sorted((text.encode() for text in texts), key=len, reverse=True)
    chosen = []
    for index in range(limits.max_texts):
        text = longest[index % len(longest)] + b" "
        chosen.append((text * (share // len(text) + 1))[:share].decode(errors="ignore").encode())
    return chosen


async def health_under_preprocessing(repository: Path, durations: Durations) -> Step:
    """Tokenizer and vision services each kept busy by callers sending the largest requests they accept
    (the tokenizer: as many review bytes as its limits take; vision: 1,024 PNGs to decode), while a health
    check asks each service every 20 ms."""
    from services.common.reviews import reviews

    texts, _ = reviews("testing_data")
    limits = TokenizerSettings()
    long_texts = largest_texts(texts, limits)
    image = SHIRT.read_bytes()
    tokenizer = Service("tokenizer", _env(repository))
    vision = Service("vision", _env(repository))
    async with (
        running([tokenizer, vision]),
        grpc.aio.insecure_channel(tokenizer.address, options=LARGE_MESSAGES) as t_channel,
        grpc.aio.insecure_channel(vision.address, options=LARGE_MESSAGES) as v_channel,
        grpc.aio.insecure_channel(tokenizer.address) as t_health,
        grpc.aio.insecure_channel(vision.address) as v_health,
    ):
        tokenize = v2pb.ModelInferRequest(model_name="tokenizer")
        encode_inputs(tokenize, [Tensor("TEXT", "BYTES", np.array(long_texts, dtype=object))])
        classify = vision_pb2.ClassifyImageRequest(images=[vision_pb2.Image(encoded=image)] * 1024)
        t_stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(t_channel)
        v_stub = vision_pb2_grpc.VisionServiceStub(v_channel)
        checks: list[Call] = []

        async def check(channel: grpc.aio.Channel, kind: str, stop: float) -> None:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            while time.monotonic() < stop:
                sent = time.monotonic()
                try:
                    reply = await health.Check(request, timeout=CALL_TIMEOUT_SECONDS)
                    code = "OK" if reply.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                checks.append(Call(sent, time.monotonic() - sent, code, kind))
                await asyncio.sleep(max(0.0, HEALTH_PERIOD_SECONDS - (time.monotonic() - sent)))

        stop = time.monotonic() + durations.preprocessing
        results = await asyncio.gather(
            closed_loop(
                lambda: t_stub.ModelInfer(tokenize, timeout=CALL_TIMEOUT_SECONDS),
                2,
                durations.preprocessing,
                "tokenizer",
            ),
            closed_loop(
                lambda: v_stub.ClassifyImage(classify, timeout=CALL_TIMEOUT_SECONDS),
                2,
                durations.preprocessing,
                "vision",
            ),
            check(t_health, "tokenizer", stop),
            check(v_health, "vision", stop),
        )
    load = [*results[0], *results[1]]
    started = min((c.sent for c in checks), default=0.0)
    windows: dict[tuple[str, int], list[float]] = {}
    for c in checks:
        windows.setdefault((c.kind, int((c.sent - started) // 5)), []).append(c.seconds)
    worst = max((percentile_ms(values, 99) for values in windows.values()), default=float("inf"))
    failed = [c for c in checks if c.code != "OK"]
    step = Step(
        "Health checks while preprocessing runs at its limits",
        "A tokenizer and a vision service, each with 2 callers in a closed loop of the largest requests they "
        f"accept (tokenizer: v2 `TEXT` of {len(long_texts):,} texts made of the longest reviews, "
        f"{sum(map(len, long_texts)):,} bytes of text against its limit of {limits.max_request_bytes:,}; "
        "vision: typed `ClassifyImage` "
        f"of 1,024 PNGs to decode) for {durations.preprocessing:.0f} s, while a `grpc.health.v1` check asks "
        "each service every 20 ms on a channel of its own. p99 per service and 5-second window; the worst counts.",
    )
    step.figures = [
        Figure("failed health checks", len(failed), "", "= 0", not failed),
        Figure("health check p99, worst 5 s window", worst, "ms", "<= 50 ms", worst <= 50, performance=True),
    ]
    step.details = [
        f"{kind}: {sum(c.kind == kind for c in checks):,} checks, p50 "
        f"{percentile_ms((c.seconds for c in checks if c.kind == kind), 50):.1f} ms, p99 "
        f"{percentile_ms((c.seconds for c in checks if c.kind == kind), 99):.1f} ms, max "
        f"{max((c.seconds for c in checks if c.kind == kind), default=0) * 1000:.1f} ms"
        for kind in ("tokenizer", "vision")
    ]
    step.details += [
        f"{kind} load: {sum(c.kind == kind for c in load):,} calls, "
        f"statuses {dict(_codes([c for c in load if c.kind == kind]))}, "
        f"p50 {percentile_ms((c.seconds for c in load if c.kind == kind), 50):.0f} ms"
        for kind in ("tokenizer", "vision")
    ]
    return step
