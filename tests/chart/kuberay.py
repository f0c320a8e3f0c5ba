"""What the KubeRay operator and Kubernetes make of the chart's RayService, ported from their source so
the tests can apply it offline (no operator and no API server run here).

The KubeRay rules follow KubeRay v1.6.0, the floor Chart.yaml states (commit
3fe72c3c876d2a530b50870f14b76a8e94bb1f9b of ray-project/kuberay), in `ray-operator/controllers/ray/`:

- `common/service.go`: `BuildServeService`, `getServicePorts`, `getPortsFromCluster`, `isServingPort`:
  the serve Service keeps only the head container's ports named `serve` or `serve-*` (the prefix is new
  in 1.6.0), each defined as the RayService's `serveService` defines a port of that name; the selector
  is always the cluster's serving pods.
- `common/pod.go`: `DefaultHeadPodTemplate` (with in-tree autoscaling the head pod runs as the head
  group's ServiceAccount and gets the autoscaler container), `BuildAutoscalerContainer`,
  `mergeAutoscalerOverrides` (`autoscalerOptions`), `DefaultWorkerPodTemplate` (the `wait-gcs-ready`
  init container, with the Ray container's securityContext), `BuildPod` (`/dev/shm`, and `/tmp/ray`
  shared by the head and the autoscaler).
- `utils/util.go`: `GetHeadGroupServiceAccountName` (the head template's account, else the cluster's
  name), `CheckName` (names longer than 50 characters are cut from the front).
- `raycluster_controller.go`: `reconcileAutoscalerServiceAccount` (an account the head template names
  must exist: KubeRay creates none then), `reconcileAutoscalerRole`/`RoleBinding` (KubeRay creates the
  Role and binds it to that account), with `common/rbac.go`.

Kubernetes' ServiceAccount admission (kubernetes/kubernetes `plugin/pkg/admission/serviceaccount/
admission.go`, `shouldAutomount` and `mountServiceAccountToken`; documented under "ServiceAccount
admission controller" in reference/access-authn-authz/service-accounts-admin): a pod whose account does
not exist is refused; the token is mounted when the pod's `automountServiceAccountToken` says so, else
when the account's does, else by default, into every container that mounts nothing at its path.
"""

from __future__ import annotations

import copy

KUBERAY_VERSION = "1.6.0"
KUBERAY_COMMIT = "3fe72c3c876d2a530b50870f14b76a8e94bb1f9b"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
CLUSTER_SUFFIX = "x7k2p"
"""RayService names each RayCluster `<rayservice>-<random suffix>`; any suffix serves the rules here."""

_DEFAULT_PORTS = {"client": 10001, "gcs-server": 6379, "dashboard": 8265, "metrics": 8080, "serve": 8000}
_BASH = ["/bin/bash", "-c", "--"]


def check_name(name: str) -> str:
    """KubeRay's `utils.CheckName`: at most 50 characters (cut from the front), starting with a letter."""
    if len(name) > 50:
        name = name[len(name) - 50 :]
    if name[0].isdigit() or not name[0].isalnum():
        name = "r" + name[1:]
    return name


def cluster_name(rayservice: dict) -> str:
    """The name of the RayCluster a RayService creates."""
    return f"{rayservice['metadata']['name']}-{CLUSTER_SUFFIX}"


def _head_template(rayservice: dict) -> dict:
    return rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]


def _is_serving_port(name: str) -> bool:
    return name == "serve" or name.startswith("serve-")


def _head_ports(rayservice: dict) -> dict[str, int]:
    """`getServicePorts`: the Ray container's ports by name (unnamed: `<port>-port`), KubeRay's defaults
    when it declares none, and `metrics` added when missing."""
    declared = _head_template(rayservice)["spec"]["containers"][0].get("ports", [])
    ports = {port.get("name") or f"{port['containerPort']}-port": port["containerPort"] for port in declared}
    ports = ports or dict(_DEFAULT_PORTS)
    ports.setdefault("metrics", _DEFAULT_PORTS["metrics"])
    return ports


def serve_service(rayservice: dict) -> dict:
    """The serve Service KubeRay creates for a RayService (`BuildServeService`, isRayService).

    Args:
        rayservice: the rendered RayService.

    Returns:
        The Service as KubeRay would create it.

    Raises:
        ValueError: KubeRay would refuse to create it (no serving port and no `serveService`).
    """
    spec = rayservice["spec"]
    name, namespace = rayservice["metadata"]["name"], rayservice["metadata"].get("namespace")
    cluster = spec["rayClusterConfig"]
    labels = {
        "ray.io/originated-from-cr-name": name,
        "ray.io/originated-from-crd": "RayService",
        "ray.io/serve": f"{name}-serve",
    }
    selector = {"ray.io/cluster": cluster_name(rayservice), "ray.io/serve": "true"}
    default_type = cluster["headGroupSpec"].get("serviceType", "")
    ports = [{"name": n, "port": p} for n, p in _head_ports(rayservice).items() if _is_serving_port(n)]
    incremental = spec.get("upgradeStrategy", {}).get("type") == "NewClusterWithIncrementalUpgrade"
    if not ports and "serveService" not in spec:
        raise ValueError("Please specify a port named 'serve' (or with the prefix 'serve-') in the Ray head container")
    if "serveService" in spec and not incremental:
        service = copy.deepcopy(spec["serveService"])
        service.setdefault("spec", {})["selector"] = selector
        metadata = service.setdefault("metadata", {})
        if ports:
            defined = {port["name"]: port for port in service["spec"].get("ports", [])}
            service["spec"]["ports"] = [defined.get(port["name"], port) for port in ports]
        metadata["labels"] = {**metadata.get("labels", {}), **labels}
        metadata.setdefault("name", f"{name}-serve-svc")
        metadata["namespace"] = namespace
        if not service["spec"].get("type"):
            service["spec"]["type"] = default_type
        return {"apiVersion": "v1", "kind": "Service", **service}
    if not ports:
        raise ValueError("Please specify a port named 'serve' (or with the prefix 'serve-') in the Ray head container")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-serve-svc", "namespace": namespace, "labels": labels},
        "spec": {"selector": selector, "ports": ports, "type": default_type},
    }


def head_service_account(rayservice: dict) -> str:
    """The ServiceAccount the head pod runs as, and KubeRay binds its autoscaler Role to."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    named = _head_template(rayservice)["spec"].get("serviceAccountName") or ""
    if cluster.get("enableInTreeAutoscaling"):
        return check_name(named or cluster_name(rayservice))
    return named or "default"


def kuberay_creates_head_service_account(rayservice: dict) -> bool:
    """Whether KubeRay creates the head's ServiceAccount itself (only when the template names none)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return bool(cluster.get("enableInTreeAutoscaling")) and not _head_template(rayservice)["spec"].get(
        "serviceAccountName"
    )


def _add_empty_dir(container: dict, pod: dict, name: str, path: str, medium: str = "") -> None:
    """`addEmptyDir`: mount an emptyDir at `path` unless the container mounts something there."""
    mounts = container.setdefault("volumeMounts", [])
    if any(mount["mountPath"] == path for mount in mounts):
        return
    volumes = pod.setdefault("volumes", [])
    if not any(volume["name"] == name for volume in volumes):
        volumes.append({"name": name, "emptyDir": {"medium": medium} if medium else {}})
    mounts.append({"name": name, "mountPath": path})


def autoscaler_container(rayservice: dict) -> dict:
    """`BuildAutoscalerContainer` with `mergeAutoscalerOverrides` applied."""
    ray = _head_template(rayservice)["spec"]["containers"][0]
    container = {
        "name": "autoscaler",
        "image": ray["image"],
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "RAY_CLUSTER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}},
            {"name": "RAY_CLUSTER_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "RAY_HEAD_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KUBERAY_CRD_VER", "value": "v1"},
        ],
        "command": _BASH,
        "args": [
            "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) --cluster-namespace $(RAY_CLUSTER_NAMESPACE)"
        ],
        "resources": {
            "limits": {"cpu": "500m", "memory": "512Mi"},
            "requests": {"cpu": "500m", "memory": "512Mi"},
        },
    }
    options = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions") or {}
    for key in ("resources", "image", "imagePullPolicy", "securityContext"):
        if options.get(key):
            container[key] = copy.deepcopy(options[key])
    for key in ("env", "envFrom", "volumeMounts"):
        if options.get(key):
            container[key] = container.get(key, []) + copy.deepcopy(options[key])
    return container


def head_pod(rayservice: dict) -> dict:
    """The head pod's spec as KubeRay builds it: its ServiceAccount and, with in-tree autoscaling, the
    autoscaler container; `/dev/shm` for the object store and the shared `/tmp/ray`."""
    spec = copy.deepcopy(_head_template(rayservice)["spec"])
    ray = spec["containers"][0]
    autoscaling = rayservice["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling")
    if autoscaling:
        spec["serviceAccountName"] = head_service_account(rayservice)
        spec["containers"].append(autoscaler_container(rayservice))
    if not any(port.get("name") == "metrics" for port in ray.setdefault("ports", [])):
        ray["ports"].append({"name": "metrics", "containerPort": _DEFAULT_PORTS["metrics"]})
    _add_empty_dir(ray, spec, "shared-mem", "/dev/shm", "Memory")
    if autoscaling:
        for container in (ray, spec["containers"][-1]):
            _add_empty_dir(container, spec, "ray-logs", "/tmp/ray")
    return spec


def worker_pod(rayservice: dict, index: int = 0) -> dict:
    """A worker pod's spec as KubeRay builds it: the `wait-gcs-ready` init container, then `/dev/shm`."""
    group = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][index]
    spec = copy.deepcopy(group["template"]["spec"])
    ray = spec["containers"][0]
    spec.setdefault("initContainers", []).append(
        {
            "name": "wait-gcs-ready",
            "image": ray["image"],
            "imagePullPolicy": ray.get("imagePullPolicy"),
            "command": _BASH,
            "args": ["until ray health-check --address <head>:6379; do sleep 5; done"],
            "securityContext": copy.deepcopy(ray.get("securityContext")),
            "env": copy.deepcopy(ray.get("env", [])),
            "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
            "resources": {
                "limits": {"cpu": "200m", "memory": "256Mi"},
                "requests": {"cpu": "200m", "memory": "256Mi"},
            },
        }
    )
    _add_empty_dir(ray, spec, "shared-mem", "/dev/shm", "Memory")
    return spec


def token_mounted_in(pod: dict, accounts: dict[str, dict]) -> set[str]:
    """The containers (init containers included) Kubernetes mounts the ServiceAccount token into.

    Args:
        pod: a pod spec.
        accounts: the namespace's ServiceAccounts by name (Kubernetes makes `default` in every namespace).

    Returns:
        The names of the containers given the token at its path.

    Raises:
        LookupError: the pod's ServiceAccount does not exist, so admission refuses the pod.
    """
    name = pod.get("serviceAccountName") or "default"
    accounts = {"default": {}, **accounts}
    if name not in accounts:
        raise LookupError(f"service account {name} not found: the API server refuses the pod")
    automount = pod.get("automountServiceAccountToken")
    if automount is None:
        automount = accounts[name].get("automountServiceAccountToken", True)
    if not automount:
        return set()
    containers = pod.get("initContainers", []) + pod["containers"]
    return {c["name"] for c in containers if not any(m["mountPath"] == TOKEN_PATH for m in c.get("volumeMounts", []))}
