"""Traffic policy without sockets: the routing file's new keys, the weighted picker, the retry
budget, API keys and their rate limits (clocks are injected; nothing here is timed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.auth import ApiKeys, KeyEntry, KeysFileError, TokenBucket, load_api_keys
from services.common.errors import Overloaded, PermissionDenied, Unauthenticated
from services.gateway.routing import RoutingError, parse_routing
from services.gateway.traffic import RetryBudget, WeightedPicker

ROUTING = """
targets:
  stable: {address: "dns:///stable.maas.svc:50053"}
  canary: {endpoints: ["10.0.0.7:50053", "10.0.0.8:50053"]}
  v6: {endpoints: ["[::1]:50053", "[::1]:50054"]}
models:
  fashion_cnn: {target: stable, version: 2, timeout_seconds: 1.5, retries: {attempts: 2, budget_ratio: 0.1}}
  minilm_sentiment:
    split:
      - {target: stable, version: 1, weight: 90}
      - {target: canary, version: "2", weight: 10}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_routing_file_takes_pins_splits_timeouts_retries_and_endpoints():
    routing = parse_routing(ROUTING, "r.yaml")
    pinned = routing.models["fashion_cnn"]
    assert pinned.backends[0].target == "stable" and pinned.backends[0].version == "2"
    assert pinned.timeout_seconds == 1.5 and pinned.retries.attempts == 2 and pinned.retries.budget_ratio == 0.1
    split = routing.models["minilm_sentiment"]
    assert [(b.target, b.version, b.weight) for b in split.backends] == [("stable", "1", 90), ("canary", "2", 10)]
    assert split.retries.attempts == 3 and split.timeout_seconds is None
    assert routing.targets["canary"].grpc_target == "ipv4:10.0.0.7:50053,10.0.0.8:50053"
    assert routing.targets["v6"].grpc_target == "ipv6:[::1]:50053,[::1]:50054"
    assert routing.targets["stable"].grpc_target == "dns:///stable.maas.svc:50053"
    assert (
        routing.models_of("stable") == ["fashion_cnn", "minilm_sentiment"]
        and routing.target_of("minilm_sentiment") == "stable"
    )
    assert parse_routing(routing.to_yaml(), "again") == routing


@pytest.mark.parametrize(
    ("models", "fragments"),
    [
        ("{m: {target: a, split: [{target: a}, {target: a}]}}", ["models.m", "either target"]),
        ("{m: {}}", ["models.m", "either target"]),
        ("{m: {split: [{target: a, weight: 0}, {target: a, weight: 0}]}}", ["add up to 0"]),
        ("{m: {split: [{target: a}]}}", ["models.m.split", "at least 2"]),
        ("{m: {split: [{target: a}, {target: b}], version: 1}}", ["version goes on each backend"]),
        ("{m: {target: a, version: v2}}", ["models.m.version", "non-negative integer"]),
        ("{m: {target: a, timeout_seconds: 0}}", ["models.m.timeout_seconds"]),
        ("{m: {target: a, retries: {attempts: 0}}}", ["models.m.retries.attempts"]),
        ("{m: {target: a, retries: {tries: 2}}}", ["models.m.retries.tries", "Extra inputs"]),
        ("{m: {split: [{target: a, weight: -1}, {target: a}]}}", ["models.m.split.0.weight"]),
        ("{m: {split: [{target: a}, {target: nowhere}]}}", ["m -> nowhere"]),
    ],
)
def test_a_bad_route_is_refused_with_where_and_why(models: str, fragments: list[str]):
    with pytest.raises(RoutingError) as info:
        parse_routing(f"targets: {{a: {{address: 'dns:///x:1'}}}}\nmodels: {models}\n", "r.yaml")
    message = str(info.value)
    assert message.startswith("routing file r.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("{endpoints: ['vision:50053']}", "use address: dns:///vision:50053"),
        ("{endpoints: ['10.0.0.1']}", "is not host:port"),
        ("{endpoints: ['10.0.0.1:50053', '[::1]:50053']}", "mix IPv4 and IPv6"),
        ("{endpoints: []}", "at least 1"),
        ("{address: 'dns:///x:1', endpoints: ['10.0.0.1:1']}", "either address or endpoints"),
    ],
)
def test_bad_endpoints_are_refused(target: str, fragment: str):
    with pytest.raises(RoutingError, match=r"targets\.a") as info:
        parse_routing(f"targets: {{a: {target}}}\nmodels: {{}}\n", "r.yaml")
    assert fragment in str(info.value)


def test_the_picker_follows_the_weights_exactly_and_interleaves():
    picker = WeightedPicker([90, 10])
    picks = [picker.pick() for _ in range(2000)]
    assert picks.count(0) == 1800 and picks.count(1) == 200
    assert all(picks[i : i + 10].count(1) == 1 for i in range(0, 2000, 10))
    assert [WeightedPicker([0, 5]).pick() for _ in range(3)] == [1, 1, 1]


def test_the_picker_avoids_backends_a_call_failed_on_unless_no_other_is_weighted():
    picker = WeightedPicker([1, 1, 0])
    assert {picker.pick(avoid={0}) for _ in range(5)} == {1}
    assert picker.pick(avoid={0, 1}) in (0, 1)


def test_the_retry_budget_allows_a_share_of_calls_plus_a_floor_per_second():
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_second=1, clock=clock)
    spent = sum(budget.try_spend() for _ in range(20))
    assert spent == 10
    for _ in range(4):
        budget.record_call()
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    clock.now += 1
    assert [budget.try_spend() for _ in range(2)] == [True, False]
    clock.now += 1000
    assert sum(budget.try_spend() for _ in range(20)) == 10


def test_a_budget_with_no_floor_only_earns_retries_from_calls():
    budget = RetryBudget(ratio=0.25, min_per_second=0, clock=Clock())
    assert budget.try_spend() and not budget.try_spend()
    for _ in range(4):
        budget.record_call()
    assert budget.try_spend() and not budget.try_spend()


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() == 0 and bucket.take() == pytest.approx(0.5)
    clock.now += 100
    assert [bucket.take() == 0 for _ in range(4)] == [True, True, True, False]


KEY = "k" * 32
OTHER = "o" * 32


def bearer(key: str) -> list[tuple[str, str]]:
    return [("x-request-id", "r1"), ("authorization", f"Bearer {key}")]


def test_api_keys_refuse_missing_malformed_and_wrong_keys():
    keys = ApiKeys(
        [KeyEntry(name="team", key=KEY), KeyEntry(name="ci", sha256=hashlib.sha256(OTHER.encode()).hexdigest())]
    )
    assert keys.check(bearer(KEY)) == "team" and keys.check(bearer(OTHER)) == "ci"
    assert keys.check([("authorization", f"bearer  {KEY} ")]) == "team"
    cases = [
        (None, "missing API key: send metadata 'authorization: Bearer <key>'"),
        ([("x-request-id", "r1")], "missing API key"),
        ([("authorization", KEY)], "malformed authorization metadata"),
        ([("authorization", "Bearer ")], "malformed authorization metadata"),
        (bearer(KEY) + bearer(KEY), "malformed authorization metadata"),
        (bearer("not-a-key"), "invalid API key"),
    ]
    for metadata, message in cases:
        with pytest.raises(Unauthenticated) as info:
            keys.check(metadata)
        assert str(info.value).startswith(message)
        assert KEY not in str(info.value)


def test_a_key_over_its_rate_is_refused_with_when_to_retry():
    clock = Clock()
    keys = ApiKeys(
        [KeyEntry(name="team", key=KEY, rate_per_second=10, burst=2), KeyEntry(name="ci", key=OTHER)], clock=clock
    )
    assert keys.check(bearer(KEY)) == keys.check(bearer(KEY)) == "team"
    with pytest.raises(Overloaded) as info:
        keys.check(bearer(KEY))
    assert str(info.value) == "API key 'team' is over its rate limit of 10 calls/s (burst 2); retry in 0.100 s"
    assert all(keys.check(bearer(OTHER)) == "ci" for _ in range(100))
    clock.now += 0.1
    assert keys.check(bearer(KEY)) == "team"


def test_behind_several_gateway_replicas_each_takes_its_share_of_a_keys_rate():
    clock = Clock()
    keys = ApiKeys([KeyEntry(name="team", key=KEY, rate_per_second=30, burst=6)], clock=clock, replicas=3)
    assert keys.check(bearer(KEY)) == keys.check(bearer(KEY)) == "team"
    with pytest.raises(Overloaded) as info:
        keys.check(bearer(KEY))
    assert str(info.value) == (
        "API key 'team' is over its rate limit of 10 calls/s (burst 2, this replica's share of 30 calls/s); "
        "retry in 0.100 s"
    )
    assert info.value.retry_delay == 0.1


def test_only_keys_with_the_admin_role_may_load_and_unload():
    keys = ApiKeys([KeyEntry(name="app", key=KEY), KeyEntry(name="ops", key=OTHER, roles=("infer", "admin"))])
    for method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        with pytest.raises(PermissionDenied) as info:
            keys.check(bearer(KEY), method)
        assert str(info.value) == f"API key 'app' may not call {method}: it needs the admin role (the key has infer)"
        assert keys.check(bearer(OTHER), method) == "ops"
    assert keys.check(bearer(KEY), "ModelInfer") == keys.check(bearer(KEY), "RepositoryIndex") == "app"
    admin_only = ApiKeys([KeyEntry(name="deployer", key=KEY, roles=("admin",))])
    with pytest.raises(PermissionDenied, match="needs the infer role"):
        admin_only.check(bearer(KEY), "ModelInfer")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("keys: []", "keys: Tuple should have at least 1 item"),
        ("keys: [{name: a, key: short}]", "keys.0.key"),
        ("keys: [{name: a}]", "give either key or sha256"),
        ("keys: [{name: a, sha256: abc}]", "sha256 must be 64 hex digits"),
        (f"keys: [{{name: a, key: {KEY}, burst: 3}}]", "burst needs rate_per_second"),
        (f"keys: [{{name: a, key: {KEY}}}, {{name: a, key: {OTHER}}}]", "key names repeat"),
        (f"keys: [{{name: a, key: {KEY}}}, {{name: b, key: {KEY}}}]", "the same key appears twice"),
        (f"keys: [{{name: a, key: {KEY}, rate_per_second: 0}}]", "keys.0.rate_per_second"),
        ("keys: [", "not YAML"),
        (f"keys: [{{name: a, key: {KEY}, roles: [root]}}]", "keys.0.roles.0"),
        (f"keys: [{{name: a, key: {KEY}, roles: []}}]", "keys.0.roles"),
    ],
)
def test_a_bad_keys_file_is_refused_without_echoing_keys(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeysFileError) as info:
        load_api_keys(path)
    assert str(info.value).startswith(f"API keys file {path}: ") and fragment in str(info.value)
    assert KEY not in str(info.value)


def test_a_keys_file_loads_and_a_missing_one_is_refused(tmp_path: Path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: team, key: {KEY}, rate_per_second: 5}}\n")
    assert len(load_api_keys(path)) == 1
    with pytest.raises(KeysFileError, match="No such file"):
        load_api_keys(tmp_path / "absent.yaml")
