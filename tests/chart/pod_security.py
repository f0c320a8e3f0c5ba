"""The Pod Security Standard `restricted` (baseline included), ported from Kubernetes' pod-security-admission
checks so the tests can apply it to rendered pods offline.

Source: kubernetes/kubernetes `staging/src/k8s.io/pod-security-admission/policy/check_*.go`, the checks
the `restricted` level runs at its latest version (Kubernetes 1.34 added `hostProbesAndHostLifecycle` and
moved `runAsNonRoot` to `runAsNonRoot_1_34`; read at the commits that index: allowPrivilegeEscalation
1e28863, capabilities_restricted 422c8fc, capabilities_baseline 003effe, runAsNonRoot 040ba6f, runAsUser
43753f1, seccompProfile_restricted 422c8fc, restrictedVolumes 13a1804, seLinuxOptions 04791b4, sysctls
04791b4, hostProbesAndHostLifecycle 2e94b40). Two relaxations of the real checks are left out, so this is
stricter than the admission controller: pods with `hostUsers: false` (user namespaces) and the sysctls
allowed only from 1.27/1.29 on.
"""

from __future__ import annotations

from collections.abc import Iterator

_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
_RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}


def _containers(pod: dict) -> Iterator[dict]:
    """`visitContainers`: init, regular and ephemeral containers."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key, [])


def _context(container: dict) -> dict:
    return container.get("securityContext") or {}


def _baseline(pod: dict, annotations: dict[str, str]) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"host namespaces: {field}=true"
    pod_context = pod.get("securityContext") or {}
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            yield f"forbidden sysctl {sysctl['name']}"
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            yield f"hostPath volume {volume['name']}"
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield f"AppArmor annotation {key}={value}"
    contexts = [("pod", pod_context)] + [(c["name"], _context(c)) for c in _containers(pod)]
    for owner, context in contexts:
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            yield f"{owner}: appArmorProfile Unconfined"
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"{owner}: seccompProfile Unconfined"
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            yield f"{owner}: seLinuxOptions {selinux}"
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield f"{owner}: windowsOptions.hostProcess"
    for container in _containers(pod):
        context, name = _context(container), container["name"]
        if context.get("privileged"):
            yield f"{name}: privileged"
        added = set((context.get("capabilities") or {}).get("add", []))
        if added - _BASELINE_CAPABILITIES:
            yield f"{name}: adds capabilities {sorted(added - _BASELINE_CAPABILITIES)}"
        if context.get("procMount", "Default") != "Default":
            yield f"{name}: procMount {context['procMount']}"
        for port in container.get("ports", []):
            if port.get("hostPort"):
                yield f"{name}: hostPort {port['hostPort']}"
        handlers = [container.get(probe) for probe in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(container.get("lifecycle") or {}).get(hook) for hook in ("postStart", "preStop")]
        for handler in filter(None, handlers):
            for kind in ("httpGet", "tcpSocket"):
                if (handler.get(kind) or {}).get("host"):
                    yield f"{name}: probe or lifecycle host {handler[kind]['host']}"


def _restricted(pod: dict) -> Iterator[str]:
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= _RESTRICTED_VOLUME_TYPES:
            yield f"volume {volume['name']} has a restricted type"
    pod_context = pod.get("securityContext") or {}
    if pod_context.get("runAsNonRoot") is False:
        yield "pod sets runAsNonRoot=false"
    if pod_context.get("runAsUser") == 0:
        yield "pod sets runAsUser=0"
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_TYPES:
        yield f"pod seccompProfile {pod_seccomp}"
    for container in _containers(pod):
        context, name = _context(container), container["name"]
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{name} must set securityContext.allowPrivilegeEscalation=false"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            yield f'{name} must set securityContext.capabilities.drop=["ALL"]'
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            yield f"{name} may add only NET_BIND_SERVICE"
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod_context.get("runAsNonRoot") is not True):
            yield f"{name}: pod or container must set securityContext.runAsNonRoot=true"
        if context.get("runAsUser") == 0:
            yield f"{name} sets runAsUser=0"
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in _SECCOMP_TYPES:
            yield f"{name}: seccompProfile {seccomp}"
        if seccomp is None and pod_seccomp not in _SECCOMP_TYPES:
            yield f'{name}: pod or container must set seccompProfile.type to "RuntimeDefault" or "Localhost"'


def restricted_violations(pod: dict, annotations: dict[str, str] | None = None) -> list[str]:
    """What the `restricted` Pod Security Standard forbids in a pod.

    Args:
        pod: a pod spec.
        annotations: the pod's annotations (AppArmor's legacy annotations are checked).

    Returns:
        One line per violation; empty when the pod may run in a `restricted` namespace.
    """
    return [*_baseline(pod, annotations or {}), *_restricted(pod)]
