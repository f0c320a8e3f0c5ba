"""The chart's production features render into objects that fit together: TLS Secrets that cert-manager
Certificates make and the services' settings name, probes on the plaintext health-only port, mTLS to the
model services, alerts that promtool checks and fires on series, KEDA triggers on real metric names, the
Grafana dashboard, and API key rate limits divided by the replicas the chart knows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import services.common.metrics  # noqa: F401  (registers the maas metrics)
from services.cli.main import _parser
from services.common.auth import load_api_keys
from services.gateway.routing import parse_routing
from tests.chart.conftest import CHART, CI_VALUES, NAMESPACE, RELEASE, component, container, of_kind, render
from tests.chart.test_manifests import CONTRACT, SETTINGS, _from_env, env_of

PRODUCTION = next(path for path in CI_VALUES if path.name == "production-values.yaml")
HEALTH_OFFSET = 2000
METRIC_NAME = re.compile(r"\b(maas_[a-z_]+|process_[a-z_]+)\b")


def _registered() -> set[str]:
    """Every sample name the maas processes export (`_total`, `_bucket`, ... included)."""
    return {sample.name for family in REGISTRY.collect() for sample in family.samples} | {
        f"{family.name}{suffix}"
        for family in REGISTRY.collect()
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }


def _deployments(docs: tuple[dict, ...]) -> dict[str, dict]:
    return {component(doc): doc for doc in of_kind(docs, "Deployment")}


def _mounted_secrets(deployment: dict) -> dict[str, str]:
    """mount path -> Secret name of a Deployment's service container."""
    spec = deployment["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container(deployment)["volumeMounts"] if m["name"] in secrets}


def test_every_service_serves_tls_from_a_certificate_of_cert_managers_and_probes_a_plaintext_health_port():
    docs = render(PRODUCTION)
    certificates = {doc["spec"]["secretName"]: doc for doc in of_kind(docs, "Certificate")}
    deployments = _deployments(docs)
    assert set(deployments) == set(CONTRACT) - {"text"}
    for name, deployment in deployments.items():
        settings = _from_env(SETTINGS[name], env_of(deployment))
        mounts = _mounted_secrets(deployment)
        secret = mounts["/etc/maas/tls"]
        assert secret == f"{RELEASE}-maas-{name}-tls" and "server auth" in certificates[secret]["spec"]["usages"]
        assert (str(settings.tls_cert_file), str(settings.tls_key_file)) == (
            "/etc/maas/tls/tls.crt",
            "/etc/maas/tls/tls.key",
        )
        assert settings.health_port == CONTRACT[name] + HEALTH_OFFSET
        box = container(deployment)
        assert {port["name"]: port["containerPort"] for port in box["ports"]}["health"] == settings.health_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert box[probe]["grpc"] == {"port": settings.health_port}
        if name == "gateway":
            assert settings.tls_client_ca_file is None, "callers need no certificate unless tls.clientCASecret is set"
            client = mounts["/etc/maas/client-tls"]
            assert "client auth" in certificates[client]["spec"]["usages"]
            assert str(settings.downstream_tls().cert_file) == "/etc/maas/client-tls/tls.crt"
            assert str(settings.downstream_tls().ca_file) == "/etc/maas/client-tls/ca.crt"
        else:
            assert str(settings.tls_client_ca_file) == "/etc/maas/tls/ca.crt", "only the gateway's certificate gets in"
    issuers = {json.dumps(doc["spec"]["issuerRef"], sort_keys=True) for doc in certificates.values()}
    assert len(issuers) == 1, "one issuer signs every certificate, so each ca.crt verifies the others"
    for policy in of_kind(docs, "NetworkPolicy"):
        if component(policy) in deployments:
            health = [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "health"]
            assert health and "from" not in health[0], "kubelet probes the health port from the node"


def test_the_certificates_name_every_host_the_gateway_dials_and_ray_targets_stay_plaintext():
    docs = render(PRODUCTION)
    (configmap,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-routing")]
    routing = parse_routing(configmap["data"]["routing.yaml"], "routing.yaml")
    names = {name for doc in of_kind(docs, "Certificate") for name in doc["spec"].get("dnsNames", [])}
    for target_name, target in routing.targets.items():
        host = target.address.removeprefix("dns:///").rsplit(":", 1)[0]
        if target_name == "text":
            assert target.plaintext and host.endswith("-ray-serve")
        else:
            assert not target.plaintext and host in names, host
    assert f"{RELEASE}-maas-vision.{NAMESPACE}.svc.cluster.local" in names


def test_the_gateway_can_require_its_callers_certificates_and_the_helm_test_still_checks_it():
    docs = render(PRODUCTION, "tls.clientCASecret=callers-ca")
    gateway = _deployments(docs)["gateway"]
    settings = _from_env(SETTINGS["gateway"], env_of(gateway))
    assert str(settings.tls_client_ca_file) == "/etc/maas/client-ca/ca.crt"
    assert _mounted_secrets(gateway)["/etc/maas/client-ca"] == "callers-ca"
    (pod,) = of_kind(docs, "Pod")
    boxes = {box["name"]: box for box in pod["spec"]["containers"]}
    checks = {name: _parser().parse_args([str(arg) for arg in box["args"]]) for name, box in boxes.items()}
    assert not any(address.rsplit(":", 1)[0].endswith("-gateway") for address in checks["test"].addresses)
    assert checks["test"].tls_cert.as_posix() == "/etc/maas/client-tls/tls.crt"
    assert checks["gateway-health"].addresses == [f"{RELEASE}-maas-gateway-metrics:{50051 + HEALTH_OFFSET}"]
    assert checks["gateway-health"].tls_ca is None


def test_api_key_rate_limits_are_divided_by_the_gateway_replicas_the_chart_knows(tmp_path: Path):
    keys = "gateway.auth.enabled=true,gateway.auth.keys[0].name=ops,gateway.auth.keys[0].key=a-long-enough-ops-key"
    roles = "gateway.auth.keys[0].roles={infer,admin}"
    for sets, replicas in (
        ((), 6),
        (("gateway.autoscaling.enabled=false", "gateway.replicaCount=3"), 3),
        (("gateway.auth.rateLimitReplicas=4",), 4),
    ):
        docs = render(None, keys, roles, *sets)
        env = env_of(_deployments(docs)["gateway"])
        assert _from_env(SETTINGS["gateway"], env).rate_limit_replicas == replicas, sets
    (secret,) = of_kind(docs, "Secret")
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(secret["stringData"]["api-keys.yaml"])
    bearer = [("authorization", "Bearer a-long-enough-ops-key")]
    assert load_api_keys(keys_file).check(bearer, "RepositoryModelUnload") == "ops"


def test_keda_replaces_the_hpa_and_scales_on_metrics_the_services_export():
    docs = render(PRODUCTION)
    scaled = {component(doc): doc for doc in of_kind(docs, "ScaledObject")}
    assert set(scaled) == {"gateway", "vision", "transformer"}
    assert {component(doc) for doc in of_kind(docs, "HorizontalPodAutoscaler")} == {"tokenizer"}
    values = yaml.safe_load(PRODUCTION.read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    exported = _registered()
    for name, doc in scaled.items():
        autoscaling = defaults[name]["autoscaling"]
        assert (doc["spec"]["minReplicaCount"], doc["spec"]["maxReplicaCount"]) == (
            autoscaling["minReplicas"],
            autoscaling["maxReplicas"],
        )
        (trigger,) = doc["spec"]["triggers"]
        query = trigger["metadata"]["query"]
        assert set(METRIC_NAME.findall(query)) <= exported, query
        job = f"{RELEASE}-maas-{name}-metrics" if name == "gateway" else f"{RELEASE}-maas-{name}"
        assert f'job="{job}"' in query and f'namespace="{NAMESPACE}"' in query
        keda = values[name]["autoscaling"]["keda"]
        assert trigger["metadata"]["threshold"] == str(keda["threshold"])
        assert ("maas_batch_queue_depth" in query) == (keda["metric"] == "queueDepth")


def test_the_dashboard_queries_only_metrics_the_services_export():
    docs = render(PRODUCTION)
    (configmap,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["maas.json"])
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used <= _registered() | {"maas_gateway_retries_total"}, used - _registered()
    for wanted in ("maas_grpc_requests_total", "maas_batch_queue_depth", "maas_model_requests_in_flight"):
        assert wanted in used
    assert any("version" in expr for expr in expressions)


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run does)")
    return binary


def _rules_file(tmp_path: Path, summaries_only: bool = False) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rules file; `summaries_only` keeps only the
    summary annotation (promtool's unit tests compare every annotation)."""
    (rule,) = of_kind(render(None), "PrometheusRule")
    spec = rule["spec"]
    if summaries_only:
        for alert in spec["groups"][0]["rules"]:
            alert["annotations"] = {"summary": alert["annotations"]["summary"]}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_promtool_accepts_the_alerting_rules(tmp_path: Path, promtool: str):
    rules = _rules_file(tmp_path)
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout
    exported = _registered()
    for rule in yaml.safe_load(rules.read_text())["groups"][0]["rules"]:
        assert set(METRIC_NAME.findall(rule["expr"])) <= exported, rule["alert"]


SERIES = f'namespace="{NAMESPACE}",job="{RELEASE}-maas-vision",model="fashion_cnn"'


def _alert(name: str, severity: str, summary: str, version: str | None = None) -> dict:
    """One alert of `fashion_cnn` on the vision job that promtool must see firing at 15 minutes."""
    labels = {"severity": severity, "namespace": NAMESPACE, "job": f"{RELEASE}-maas-vision", "model": "fashion_cnn"}
    if version is not None:
        labels["version"] = version
    summary = f"{RELEASE}-maas-vision: {summary}"
    return {
        "eval_time": "15m",
        "alertname": name,
        "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary}}],
    }


ALERT_TESTS = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                {"series": f'maas_grpc_requests_total{{{SERIES},version="2",code="OK"}}', "values": "0+60x20"},
                {"series": f'maas_grpc_requests_total{{{SERIES},version="2",code="INTERNAL"}}', "values": "0+30x20"},
                {"series": f'maas_grpc_requests_total{{{SERIES},version="1",code="OK"}}', "values": "0+600x20"},
                {"series": f"maas_model_ready{{{SERIES}}}", "values": "1 1 0x18"},
                {"series": f'maas_batch_queue_full_total{{{SERIES},version="1"}}', "values": "0 0 0 5+5x17"},
                {"series": f'maas_batch_queue_depth{{{SERIES},version="1"}}', "values": "1000x20"},
                {"series": f'maas_batch_queue_limit{{{SERIES},version="1"}}', "values": "1024x20"},
            ],
            "alert_rule_test": [
                _alert("MaasHighErrorRatio", "critical", "33.33% of fashion_cnn version 2 calls fail", "2"),
                _alert("MaasModelNotReady", "critical", "model fashion_cnn has no version loaded"),
                {"eval_time": "3m", "alertname": "MaasModelNotReady", "exp_alerts": []},
                _alert("MaasBatchQueueFull", "critical", "fashion_cnn version 1 refuses calls, its queue is full", "1"),
                _alert("MaasBatchQueueFilling", "warning", "fashion_cnn version 1 queue is 97.66% full", "1"),
            ],
        }
    ],
}


def test_the_alerts_fire_on_series_that_call_for_them_and_only_then(tmp_path: Path, promtool: str):
    _rules_file(tmp_path, summaries_only=True)
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(ALERT_TESTS))
    done = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
