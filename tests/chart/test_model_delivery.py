"""Model delivery: the model-repository image reaches every pod that reads the repository, checked on the
way (an init container into an emptyDir, or a hook Job into a shared claim the pods wait for), and the
images the chart names are the ones the Containerfile builds."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from services.cli.main import _parser
from tests.chart.conftest import CHART, CI_VALUES, container, helm, of_kind, render
from tests.chart.pod_security import restricted_violations
from tests.chart.test_manifests import component
from tests.chart.test_pod_security import pods as release_pods
from tests.conftest import REPO_ROOT

PVC = next(path for path in CI_VALUES if path.name == "pvc-values.yaml")
RAYSERVICE = next(path for path in CI_VALUES if path.name == "rayservice-values.yaml")
CONTAINERFILE = (REPO_ROOT / "Containerfile").read_text()
DEFAULT_MODELS_IMAGE = "localhost/maas/model-repository:0.1.0"


def pod_specs(docs: tuple[dict, ...]) -> dict[str, dict]:
    """Pod spec of every Deployment (by component) and of the Ray head and workers."""
    specs = {component(doc): doc["spec"]["template"]["spec"] for doc in of_kind(docs, "Deployment")}
    for rayservice in of_kind(docs, "RayService"):
        cluster = rayservice["spec"]["rayClusterConfig"]
        specs["ray-head"] = cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster["workerGroupSpecs"]:
            specs[f"ray-{group['groupName']}"] = group["template"]["spec"]
    return specs


def cli(box: dict) -> object:
    """A container's command line, parsed by the `maas` CLI's own parser."""
    assert box["command"] == ["maas"]
    return _parser().parse_args([str(arg) for arg in box["args"]])


def assert_locked_down(box: dict) -> None:
    context = box["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"] and context["runAsNonRoot"]


@pytest.mark.parametrize("values", [None, RAYSERVICE], ids=["defaults", "rayservice"])
def test_source_image_copies_the_repository_into_each_pods_emptydir_before_the_service_starts(values: Path | None):
    docs = render(values)
    specs = pod_specs(docs)
    assert specs.keys() >= {"gateway", "tokenizer"} and len(specs) >= 4
    for name, spec in specs.items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        if name == "gateway":
            assert "initContainers" not in spec and "models" not in volumes
            continue
        (init,) = spec["initContainers"]
        assert init["image"] == DEFAULT_MODELS_IMAGE
        args = cli(init)
        assert (args.command, args.target) == ("models", "install")
        mounts = {mount["name"]: mount for mount in init["volumeMounts"]}
        assert mounts["models"] == {"name": "models", "mountPath": str(args.destination)}
        assert volumes["models"] == {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}
        assert_locked_down(init)
        assert init["resources"]["limits"]["memory"] == "256Mi"
        (box,) = spec["containers"]
        assert {"name": "models", "mountPath": "/opt/maas/model_repository", "readOnly": True} in box["volumeMounts"]
    assert not of_kind(docs, "Job") and not of_kind(docs, "PersistentVolumeClaim")


def test_the_init_container_copies_from_where_the_image_holds_the_repository():
    (init,) = pod_specs(render())["vision"]["initContainers"]
    copied_to = re.search(r"^COPY --from=models \S* ?\. (\S+)$", CONTAINERFILE, re.M)
    assert copied_to, "the model-repository target copies the `models` build context"
    assert str(cli(init).source) == copied_to.group(1)


PVC_CASES = {
    "pvc-values": (PVC, (), "registry.example.com/maas/model-repository@sha256:", "/models"),
    "rayservice": (RAYSERVICE, ("modelRepository.source=pvc",), DEFAULT_MODELS_IMAGE, "/opt/maas/model_repository"),
}


@pytest.mark.parametrize("case", PVC_CASES)
def test_source_pvc_fills_the_claim_with_a_hook_job_and_pods_wait_for_its_marker(case: str):
    values, sets, image_prefix, path = PVC_CASES[case]
    docs = render(values, *sets)
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = of_kind(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and spec["securityContext"]["runAsUser"] == 10001
    assert restricted_violations(spec) == []
    assert spec["automountServiceAccountToken"] is False
    (install,) = spec["containers"]
    assert_locked_down(install)
    image = install["image"]
    assert image.startswith(image_prefix)
    args = cli(install)
    assert (args.target, str(args.source), args.marker) == ("install", "/opt/maas/model_repository", image)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert {"name": "models", "mountPath": str(args.destination)} in install["volumeMounts"]

    pods = pod_specs(docs)
    assert ("ray-head" in pods) == (values == RAYSERVICE)
    for name, pod in pods.items():
        if name == "gateway":
            continue
        (box,) = pod["containers"]
        (wait,) = pod["initContainers"]
        assert wait["image"] == box["image"], "the pod's own image waits: no extra pull"
        assert_locked_down(wait)
        waiting = cli(wait)
        assert (waiting.target, str(waiting.repository), waiting.marker) == ("wait", path, image)
        assert waiting.timeout == 600
        assert {"name": "models", "mountPath": path, "readOnly": True} in wait["volumeMounts"]
        assert {"name": "models", "mountPath": path, "readOnly": True} in box["volumeMounts"]
        assert {"name": "MAAS_MODEL_REPOSITORY", "value": path} in box["env"]
        claimed = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]
        assert claimed == {"claimName": claim["metadata"]["name"], "readOnly": True}


def test_an_existing_claim_is_filled_and_mounted_and_none_is_created():
    docs = render(PVC, "modelRepository.pvc.existingClaim=shared-models")
    assert not of_kind(docs, "PersistentVolumeClaim")
    (job,) = of_kind(docs, "Job")
    claims = [{v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}["models"]]
    claims += [
        {v["name"]: v for v in pod["volumes"]}["models"] for name, pod in pod_specs(docs).items() if name != "gateway"
    ]
    assert len(claims) == 5
    assert {claim["persistentVolumeClaim"]["claimName"] for claim in claims} == {"shared-models"}


@pytest.mark.parametrize("source", ["image", "pvc"])
@pytest.mark.parametrize("values", [None, RAYSERVICE], ids=["deployments", "rayservice"])
def test_every_pod_that_copies_or_waits_for_the_repository_meets_the_restricted_standard(
    values: Path | None, source: str
):
    docs = render(values, f"modelRepository.source={source}")
    jobs = {job["metadata"]["name"]: job["spec"]["template"]["spec"] for job in of_kind(docs, "Job")}
    assert len(jobs) == (source == "pvc")
    pods = {name: spec for name, (spec, _) in release_pods(docs).items()} | jobs
    assert ("ray head" in pods) == (values == RAYSERVICE)
    delivering = {
        name
        for name, pod in pods.items()
        if any(box["name"] == "model-repository" for box in pod.get("initContainers", []))
    }
    assert delivering == set(pods) - {"rel-maas-gateway", "rel-maas-test", *jobs}
    assert {name: restricted_violations(pod) for name, pod in pods.items()} == {name: [] for name in pods}


def test_notes_say_how_the_repository_arrives():
    notes = helm("install", "rel", CHART, "--namespace", "maas", "--dry-run=client")
    assert "init container copies it from" in notes and DEFAULT_MODELS_IMAGE in notes
    notes = helm("install", "rel", CHART, "--namespace", "maas", "--dry-run=client", "--values", PVC)
    assert "the Job rel-maas-model-repository copies" in notes and "do not pass --wait" in notes


def test_the_images_the_chart_names_are_the_containerfiles_targets_at_the_projects_version():
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", CONTAINERFILE, re.M))
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == version
    gpu = next(path for path in CI_VALUES if path.name == "gpu-values.yaml")
    named = set()
    for values in (None, gpu, RAYSERVICE):
        for name, spec in pod_specs(render(values)).items():
            named |= {box["image"] for box in spec["containers"] + spec.get("initContainers", [])}
            if name in ("vision", "transformer") and values == gpu:
                assert spec["containers"][0]["image"] == f"localhost/maas/models-cuda:{version}"
    assert named == {
        f"localhost/maas/{target}:{version}"
        for target in ("gateway", "tokenizer", "models", "models-cuda", "models-ray", "model-repository")
    }
    assert {ref.split("/")[-1].split(":")[0] for ref in named} <= targets


def exposed_ports() -> dict[str, set[int]]:
    """The ports each Containerfile stage EXPOSEs, those of the stage it builds on included."""
    stages: dict[str, set[int]] = {}
    current: set[int] = set()
    for line in CONTAINERFILE.splitlines():
        if found := re.fullmatch(r"FROM (\S+) AS (\S+)", line):
            current = stages[found.group(2)] = set(stages.get(found.group(1), ()))
        elif line.startswith("EXPOSE "):
            current |= {int(port) for port in line.split()[1:]}
    return stages


def test_each_service_image_exposes_the_ports_its_containers_open():
    opened: dict[str, set[int]] = {}
    for doc in of_kind(render(), "Deployment"):
        box = container(doc)
        target = box["image"].rsplit("/", 1)[1].split(":")[0]
        opened.setdefault(target, set()).update(port["containerPort"] for port in box["ports"])
    exposed = exposed_ports()
    assert opened.keys() == {"gateway", "tokenizer", "models"}
    assert {target: exposed[target] for target in opened} == opened
    assert exposed["models-cuda"] == exposed["models"]
