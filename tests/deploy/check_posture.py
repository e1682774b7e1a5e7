"""The security and operational posture every rendered kustomization of deploy/ must keep.

Pure functions: rendered objects in, one line per problem out (empty: all is well), so a test can
plant a fault in a copy of the real objects and see it named. The rules:

- every container: `privileged: false`, `allowPrivilegeEscalation: false`,
  `readOnlyRootFilesystem: true`, capabilities `drop: [ALL]` and only its own added
  (CAPABILITIES), one image (`IMAGE` with some tag), an ambit binary or sleep as the command;
  no host network, PID or IPC namespace; no Bidirectional mount propagation (the API server
  allows it only in privileged containers); every hostPath one of HOST_PATHS, mounted read-only
  unless written there; no liveness or startup probe;
- the node agent's DaemonSet: system-node-critical, tolerating every taint, RollingUpdate with
  maxSurge 1 and maxUnavailable 0, Prometheus annotations on 15020, a readiness probe on 15021
  `/healthz/ready` on ambitd only, the three containers with the contract's flags and the mounts
  those flags name (--take-over among them), the field-ref environment, a grace period that
  outlasts the data planes' drain (--dataplane-drain-grace) by DRAIN_MARGIN, no preStop hook;
- RBAC: the node agent's ClusterRole is exactly NODE_RULES, the CA's exactly CA_RULES, and
  nothing else has a role;
- each kustomization holds exactly the objects EXPECTED names for it, plus its own checks
  (config-dir: no API-server access; apiserver: --kube-api=in-cluster; ca: the CA and the node
  agents' CA flags and credentials; cleanup: `ambitd --cleanup` with the agent's mounts).
"""

import re

IMAGE = "ambit/ambit"
# Seconds between the end of the data planes' drain and the kubelet's SIGKILL.
DRAIN_MARGIN = 10
NAMESPACE = "ambit-system"
BIN = "/usr/local/bin"

# Capabilities each container may add (docs/ARCHITECTURE.md#deployment says why each).
CAPABILITIES = {
    "ambitd": {"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"},
    "ambit-tunnel": {"NET_ADMIN", "SYS_ADMIN"},
    "ambit-waypoint": {"NET_ADMIN", "SYS_ADMIN"},
    "cleanup": {"BPF", "NET_ADMIN", "SYS_ADMIN"},
    # ambit-cni --install / --uninstall: root owns the CNI directories; no capability needed.
    "install-cni": set(),
    "uninstall-cni": set(),
    "ambit-ca": set(),
    "done": set(),
}
COMMANDS = {
    "ambitd": [f"{BIN}/ambitd"],
    "ambit-tunnel": [f"{BIN}/ambit-tunnel"],
    "ambit-waypoint": [f"{BIN}/ambit-waypoint"],
    "cleanup": [f"{BIN}/ambitd"],
    "install-cni": [f"{BIN}/ambit-cni"],
    "uninstall-cni": [f"{BIN}/ambit-cni"],
    "ambit-ca": [f"{BIN}/ambitd"],
    "done": ["/bin/sleep", "infinity"],
}

# host path -> (hostPath type, containers that may write there). Anything else on the host is
# not mounted at all; these read-only unless listed as written.
HOST_PATHS = {
    "/sys/fs/bpf": ("Directory", {"ambitd", "cleanup"}),  # pins
    "/sys/fs/cgroup": ("Directory", set()),  # attaching needs an open directory only
    "/var/run/ambit": ("DirectoryOrCreate", {"ambitd", "ambit-tunnel", "ambit-waypoint",
                                             "cleanup"}),
    "/run/lock/ambit": ("DirectoryOrCreate", {"ambitd", "cleanup"}),
    "/var/run/netns": ("DirectoryOrCreate", set()),
    "/proc": ("Directory", {"ambitd"}),  # pod sysctls, written from inside each pod's netns
    "/etc/ambit/config": ("Directory", set()),
    # The node's CNI plug-ins and network configuration (deploy/cni, deploy/cleanup).
    "/opt/cni/bin": ("DirectoryOrCreate", {"install-cni", "uninstall-cni"}),
    "/etc/cni/net.d": ("DirectoryOrCreate", {"install-cni", "uninstall-cni"}),
}
# Mounts that must follow the host's later mounts into the container.
HOST_TO_CONTAINER = {"/sys/fs/bpf", "/var/run/netns"}


def _rules(role):
    out = set()
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    out.add((group, resource, verb))
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            out.add(("?", "resourceNames/nonResourceURLs", "?"))
    return out


READ = ("get", "list", "watch")
# The API-server access of the contract: ambitd's --kube-api reads these, nothing more.
NODE_RULES = {("", r, v) for r in ("pods", "namespaces", "services") for v in READ} | {
    ("security.istio.io", r, v)
    for r in ("peerauthentications", "authorizationpolicies", "requestauthentications")
    for v in READ
} | {("gateway.networking.k8s.io", "gateways", v) for v in READ}
# The CA: TokenReview of callers' tokens, and whose pods run where.
CA_RULES = {("authentication.k8s.io", "tokenreviews", "create")} | {
    ("", "pods", v) for v in READ}

NODE_AGENT_ARGS = [
    "--dataplane=external",
    # An upgrade's new pod takes over from the old one instead of waiting for its lock.
    "--take-over",
    "--run-dir=/var/run/ambit",
    "--host-proc=/host/proc",
    "--netns-dir=/var/run/netns",
    "--node-netns=/host/proc/1/ns/net",
]
CA_NODE_ARGS = [
    # The name the CA's serving certificate carries (agent/issuance/ca_server.h), resolved in
    # the agent's namespace (ambit-system) by the pod's DNS search path.
    "--ca-address=ambit-ca:15012",
]
CA_SERVER_ARGS = [
    "--ca-only",
    "--ca-listen=0.0.0.0:15012",
    "--ca-token-review",
    "--kube-api=in-cluster",
]
ENV_FIELDS = {
    "NODE_NAME": "spec.nodeName",
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "INSTANCE_IP": "status.podIP",
}

_COMMON = {("Namespace", "ambit-system"), ("ServiceAccount", "ambit"), ("ConfigMap", "ambit-mesh"),
           ("DaemonSet", "ambit"), ("PodMonitor", "ambit")}
_RBAC = {("ClusterRole", "ambit"), ("ClusterRoleBinding", "ambit")}
_CA = {("ServiceAccount", "ambit-ca"), ("ClusterRole", "ambit-ca"),
       ("ClusterRoleBinding", "ambit-ca"), ("Deployment", "ambit-ca"), ("Service", "ambit-ca")}
EXPECTED = {
    "base/node": _COMMON,
    "base": _COMMON | _RBAC,
    "overlays/config-dir": _COMMON,
    "overlays/apiserver": _COMMON | _RBAC,
    "ca": _COMMON | _RBAC | _CA,
    "cleanup": {("DaemonSet", "ambit-cleanup")},
    "cni": _COMMON | _RBAC,
    "istiod": _COMMON | _RBAC,
}


def _find(objects, kind, name):
    for o in objects:
        if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name:
            return o
    return None


def _pod_spec(obj):
    return (((obj.get("spec") or {}).get("template") or {}).get("spec")) or {}


def _containers(pod):
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def _flag_value(args, flag):
    for a in args or []:
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def _mount_for(pod, container, path):
    """(mount, volume) of the container's mount at exactly `path`, or (None, None)."""
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        if m.get("mountPath") == path:
            return m, volumes.get(m.get("name"))
    return None, None


def _host_path(volume):
    return ((volume or {}).get("hostPath") or {}).get("path")


def workload_problems(obj):
    """Posture of one DaemonSet or Deployment: containers, host access, mounts, probes."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    problems = []
    pod = _pod_spec(obj)
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{where}: {key} is set; ambit needs none of the host's namespaces")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for v in volumes.values():
        hp = v.get("hostPath")
        if hp is None:
            continue
        if hp.get("path") not in HOST_PATHS:
            problems.append(f"{where}: volume {v['name']} mounts host path {hp.get('path')}, "
                            "which is none of the paths ambit needs")
        elif hp.get("type") != HOST_PATHS[hp["path"]][0]:
            problems.append(f"{where}: volume {v['name']} (host {hp['path']}) has type "
                            f"{hp.get('type')}, not {HOST_PATHS[hp['path']][0]}")
    for c in _containers(pod):
        name = c.get("name")
        cw = f"{where} container {name}"
        if name not in CAPABILITIES:
            problems.append(f"{cw}: not a container this tree defines")
            continue
        sc = c.get("securityContext")
        if not sc:
            problems.append(f"{cw}: no securityContext")
            sc = {}
        if sc.get("privileged") is not False:
            problems.append(f"{cw}: privileged must be false (it is {sc.get('privileged')})")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{cw}: capabilities must drop [ALL] (drops {caps.get('drop')})")
        added = set(caps.get("add") or [])
        if added - CAPABILITIES[name]:
            problems.append(f"{cw}: adds capabilities {sorted(added - CAPABILITIES[name])} "
                            f"beyond {sorted(CAPABILITIES[name])}")
        image = c.get("image") or ""
        if not re.fullmatch(re.escape(IMAGE) + r":[A-Za-z0-9_.-]+", image):
            problems.append(f"{cw}: image {image!r} is not {IMAGE}:<tag>")
        if c.get("command") != COMMANDS[name]:
            problems.append(f"{cw}: command {c.get('command')} is not {COMMANDS[name]}")
        for probe in ("livenessProbe", "startupProbe"):
            if probe in c:
                problems.append(f"{cw}: has a {probe}; a restart would reset every connection "
                                "of the node (readiness reports, never restarts)")
        for m in c.get("volumeMounts") or []:
            v = volumes.get(m.get("name"))
            if v is None:
                problems.append(f"{cw}: mounts volume {m.get('name')}, which the pod lacks")
                continue
            prop = m.get("mountPropagation")
            if prop == "Bidirectional" and not sc.get("privileged"):
                problems.append(f"{cw}: mount {m['mountPath']} is Bidirectional, which the API "
                                "server refuses for an unprivileged container")
            hp = _host_path(v)
            if hp in HOST_PATHS:
                writers = HOST_PATHS[hp][1]
                if name not in writers and not m.get("readOnly"):
                    problems.append(f"{cw}: host path {hp} is mounted writable; {name} only "
                                    "reads it")
                if hp in HOST_TO_CONTAINER and prop != "HostToContainer":
                    problems.append(f"{cw}: host path {hp} must be mounted with "
                                    "mountPropagation HostToContainer (got "
                                    f"{prop or 'None'})")
    return problems


def node_agent_problems(ds):
    """The node agent's DaemonSet as the contract describes it."""
    where = "DaemonSet/ambit"
    problems = []
    spec = ds.get("spec") or {}
    pod = _pod_spec(ds)
    strategy = spec.get("updateStrategy") or {}
    ru = strategy.get("rollingUpdate") or {}
    if strategy.get("type") != "RollingUpdate" or ru.get("maxSurge") != 1 or \
            ru.get("maxUnavailable") != 0:
        problems.append(f"{where}: update strategy must be RollingUpdate with maxSurge 1 and "
                        f"maxUnavailable 0 (is {strategy})")
    if pod.get("priorityClassName") != "system-node-critical":
        problems.append(f"{where}: priorityClassName must be system-node-critical")
    if {"operator": "Exists"} not in (pod.get("tolerations") or []):
        problems.append(f"{where}: no toleration of every taint ({{operator: Exists}})")
    grace = pod.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or not 30 <= grace <= 120:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} is not 30..120 s")
    # The old pod's data planes drain for up to --dataplane-drain-grace (ambitd's, 30 s unless
    # set) after SIGTERM; the kubelet's SIGKILL must come later, with a margin.
    drain = 30
    for c in pod.get("containers") or []:
        if c.get("name") == "ambitd":
            m = re.fullmatch(r"(\d+)s", _flag_value(c.get("args") or [],
                                                    "--dataplane-drain-grace") or "30s")
            drain = int(m.group(1)) if m else drain
    if isinstance(grace, int) and grace < drain + DRAIN_MARGIN:
        problems.append(f"{where}: terminationGracePeriodSeconds {grace} leaves the drain "
                        f"({drain} s) less than {DRAIN_MARGIN} s of margin")
    for c in pod.get("containers") or []:
        if ((c.get("lifecycle") or {}).get("preStop")) is not None:
            problems.append(f"{where}: {c.get('name')} has a preStop hook: SIGTERM starts the "
                            "drain and nothing may end it early")
    annotations = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true" or \
            annotations.get("prometheus.io/port") != "15020":
        problems.append(f"{where}: pod annotations must have prometheus.io/scrape \"true\" and "
                        "prometheus.io/port \"15020\"")
    containers = {c.get("name"): c for c in pod.get("containers") or []}
    inits = [c.get("name") for c in pod.get("initContainers") or []]
    if sorted(containers) != ["ambit-tunnel", "ambit-waypoint", "ambitd"] or \
            inits not in ([], ["install-cni"]):
        problems.append(f"{where}: containers must be ambitd, ambit-tunnel and ambit-waypoint, "
                        f"after at most install-cni (are {sorted(containers)}, init {inits})")
        return problems
    ambitd = containers["ambitd"]
    args = ambitd.get("args") or []
    for a in NODE_AGENT_ARGS:
        if a not in args:
            problems.append(f"{where}: ambitd lacks {a}")
    # Each path flag must name what the pod mounts there.
    for flag, host in (("--run-dir", "/var/run/ambit"), ("--host-proc", "/proc"),
                       ("--netns-dir", "/var/run/netns"), ("--cgroup", "/sys/fs/cgroup"),
                       ("--bpffs", "/sys/fs/bpf")):
        path = _flag_value(args, flag)
        if flag == "--bpffs" and path is None:
            path = "/sys/fs/bpf"  # ambitd's default
        if path is None:
            problems.append(f"{where}: ambitd lacks {flag}")
            continue
        _, volume = _mount_for(pod, ambitd, path)
        if _host_path(volume) != host:
            problems.append(f"{where}: ambitd's {flag}={path} is not a mount of the host's {host}")
    node_netns = _flag_value(args, "--node-netns")
    host_proc = _flag_value(args, "--host-proc")
    if node_netns and host_proc and not node_netns.startswith(host_proc + "/"):
        problems.append(f"{where}: --node-netns={node_netns} is not under --host-proc")
    _, lock = _mount_for(pod, ambitd, "/run/lock/ambit")
    if _host_path(lock) != "/run/lock/ambit":
        problems.append(f"{where}: ambitd's instance lock (/run/lock/ambit) is not the host's, "
                        "so neither a second agent nor deploy/cleanup would see this one")
    env = {e.get("name"): ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
           for e in ambitd.get("env") or []}
    for name, field in ENV_FIELDS.items():
        if env.get(name) != field:
            problems.append(f"{where}: ambitd env {name} must come from fieldRef {field}")
    probe = ambitd.get("readinessProbe") or {}
    get = probe.get("httpGet") or {}
    if get.get("port") != 15021 or get.get("path") != "/healthz/ready":
        problems.append(f"{where}: ambitd's readiness probe must be GET :15021/healthz/ready")
    ports = {p.get("containerPort"): p.get("name") for p in ambitd.get("ports") or []}
    if 15020 not in ports or 15021 not in ports:
        problems.append(f"{where}: ambitd must declare ports 15020 and 15021")
    run_dir = _flag_value(args, "--run-dir")
    _, run_volume = _mount_for(pod, ambitd, run_dir or "")
    for name, sock in (("ambit-tunnel", "dataplane.sock"),
                       ("ambit-waypoint", "waypoint/dataplane.sock")):
        c = containers[name]
        if "readinessProbe" in c:
            problems.append(f"{where}: {name} has a readiness probe; only ambitd's (15021) "
                            "says whether the node is ready")
        want = f"--control-socket={run_dir}/{sock}"
        if want not in (c.get("args") or []):
            problems.append(f"{where}: {name} must be started with {want}")
        _, volume = _mount_for(pod, c, run_dir or "")
        if volume is None or run_volume is None or volume.get("name") != run_volume.get("name"):
            problems.append(f"{where}: {name} does not share ambitd's run directory {run_dir}")
    return problems


def rbac_problems(objects, kustomization):
    problems = []
    roles = [o for o in objects if o.get("kind") in ("ClusterRole", "Role")]
    for role in roles:
        name = role["metadata"]["name"]
        want = {"ambit": NODE_RULES, "ambit-ca": CA_RULES}.get(name)
        if want is None:
            problems.append(f"{role['kind']}/{name}: no role of that name is expected")
            continue
        have = _rules(role)
        if have != want:
            extra = sorted(have - want)
            missing = sorted(want - have)
            problems.append(f"{role['kind']}/{name}: rules differ from the contract: "
                            f"extra {extra}, missing {missing}")
    for binding in (o for o in objects if o.get("kind") in ("ClusterRoleBinding", "RoleBinding")):
        name = binding["metadata"]["name"]
        ref = binding.get("roleRef") or {}
        subjects = binding.get("subjects") or []
        if ref.get("name") != name or subjects != [
                {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]:
            problems.append(f"{binding['kind']}/{name}: must bind ClusterRole {name} to the "
                            f"ServiceAccount {NAMESPACE}/{name} alone")
    return problems


def kustomization_problems(objects, kustomization):
    """Every rule above for the rendered objects of deploy/<kustomization>."""
    problems = []
    have = {(o.get("kind"), (o.get("metadata") or {}).get("name")) for o in objects}
    want = EXPECTED.get(kustomization)
    if want is None:
        return [f"deploy/{kustomization}: no expectations for this kustomization "
                "(add it to check_posture.EXPECTED)"]
    if have != want:
        problems.append(f"deploy/{kustomization}: objects differ: extra {sorted(have - want)}, "
                        f"missing {sorted(want - have)}")
    for o in objects:
        ns = (o.get("metadata") or {}).get("namespace")
        if o.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding") and \
                ns != NAMESPACE:
            problems.append(f"{o.get('kind')}/{o['metadata'].get('name')}: namespace {ns}, not "
                            f"{NAMESPACE}")
        if o.get("kind") in ("DaemonSet", "Deployment"):
            problems.extend(workload_problems(o))
    problems.extend(rbac_problems(objects, kustomization))
    ds = _find(objects, "DaemonSet", "ambit")
    if ds is not None:
        problems.extend(node_agent_problems(ds))
        problems.extend(_podmonitor_problems(objects, ds))
        args = _containers_by_name(ds)["ambitd"].get("args") or []
        pod = _pod_spec(ds)
        kube_api = _flag_value(args, "--kube-api")
        if kustomization.startswith("overlays/config-dir") or kustomization == "base/node":
            if kube_api:
                problems.append(f"deploy/{kustomization}: ambitd has --kube-api without RBAC")
        if kustomization == "overlays/config-dir":
            if pod.get("automountServiceAccountToken") is not False:
                problems.append("deploy/overlays/config-dir: the pod mounts a service-account "
                                "token it has no use for")
            _, volume = _mount_for(pod, _containers_by_name(ds)["ambitd"],
                                   _flag_value(args, "--config-dir") or "/etc/ambit/config")
            if _host_path(volume) != "/etc/ambit/config":
                problems.append("deploy/overlays/config-dir: --config-dir is not the host's "
                                "/etc/ambit/config")
        if kustomization in ("overlays/apiserver", "ca", "istiod") and kube_api != "in-cluster":
            problems.append(f"deploy/{kustomization}: ambitd must run with --kube-api=in-cluster")
        if kustomization == "ca":
            problems.extend(_ca_problems(objects, ds))
        if kustomization == "istiod":
            problems.extend(_istiod_problems(ds))
        if kustomization == "cni":
            if kube_api != "in-cluster":
                problems.append("deploy/cni: ambitd must run with --kube-api=in-cluster")
            problems.extend(_cni_problems(ds, "install-cni", "--install"))
    cleanup = _find(objects, "DaemonSet", "ambit-cleanup")
    if cleanup is not None:
        problems.extend(_cleanup_problems(cleanup))
        problems.extend(_cni_problems(cleanup, "uninstall-cni", "--uninstall"))
    return problems


def _cni_problems(ds, name, mode):
    """ambit-cni's init container: its mode, and its directory flags naming the host's CNI
    directories; --install also points the plug-in at ambitd's ZDS socket on the host."""
    where = f"DaemonSet/{ds['metadata']['name']}"
    pod = _pod_spec(ds)
    inits = [c.get("name") for c in pod.get("initContainers") or []]
    if name not in inits:
        return [f"{where}: no init container {name}"]
    if inits.index(name) != 0:
        problems = [f"{where}: {name} must be the first init container"]
    else:
        problems = []
    c = _containers_by_name(ds)[name]
    args = c.get("args") or []
    if mode not in args:
        problems.append(f"{where}: {name} lacks {mode}")
    for flag, host in (("--cni-bin-dir", "/opt/cni/bin"), ("--cni-conf-dir", "/etc/cni/net.d")):
        path = _flag_value(args, flag)
        _, volume = _mount_for(pod, c, path or "")
        if _host_path(volume) != host:
            problems.append(f"{where}: {name}'s {flag}={path} is not a mount of the host's {host}")
    if mode == "--install":
        socket = _flag_value(args, "--zds-socket")
        ambitd = _containers_by_name(ds).get("ambitd") or {}
        run_dir = _flag_value(ambitd.get("args") or [], "--run-dir")
        _, run_volume = _mount_for(pod, ambitd, run_dir or "")
        want = f"{_host_path(run_volume)}/zds.sock"
        if socket != want:
            problems.append(f"{where}: {name}'s --zds-socket={socket} is not ambitd's ZDS socket "
                            f"as the node sees it ({want})")
        excluded = (_flag_value(args, "--exclude-namespaces") or "kube-system").split(",")
        if NAMESPACE not in excluded:
            problems.append(f"{where}: {name} must exclude {NAMESPACE} (the agent's own pod "
                            "cannot wait for the agent)")
        listen = _flag_value(ambitd.get("args") or [], "--zds-listen")
        if listen is not None and listen != f"{run_dir}/zds.sock":
            problems.append(f"{where}: ambitd's --zds-listen={listen} is not where {name} "
                            f"points the plug-in ({run_dir}/zds.sock)")
    return problems


def _containers_by_name(obj):
    return {c.get("name"): c for c in _containers(_pod_spec(obj))}


def _podmonitor_problems(objects, ds):
    pm = _find(objects, "PodMonitor", "ambit")
    if pm is None:
        return []
    problems = []
    labels = ((ds["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    selector = ((pm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append("PodMonitor/ambit: its selector does not select the agent's pods")
    ports = {p.get("name"): p.get("containerPort")
             for p in _containers_by_name(ds)["ambitd"].get("ports") or []}
    endpoints = (pm.get("spec") or {}).get("podMetricsEndpoints") or []
    if [ports.get(e.get("port")) for e in endpoints] != [15020]:
        problems.append("PodMonitor/ambit: must scrape exactly ambitd's port 15020")
    return problems


def _istiod_problems(ds):
    """deploy/istiod: istiod's CA address, a projected token of audience istio-ca, and the roots
    from istiod's istio-ca-root-cert ConfigMap (docs/ARCHITECTURE.md#ca-api)."""
    problems = []
    pod = _pod_spec(ds)
    ambitd = _containers_by_name(ds)["ambitd"]
    args = ambitd.get("args") or []
    if not (_flag_value(args, "--ca-address") or "").endswith(":15012"):
        problems.append("DaemonSet/ambit: --ca-address must be istiod's CA port 15012")
    token = _flag_value(args, "--ca-token-file") or ""
    _, volume = _mount_for(pod, ambitd, token.rsplit("/", 1)[0])
    sources = ((volume or {}).get("projected") or {}).get("sources") or []
    tokens = [s.get("serviceAccountToken") for s in sources if s.get("serviceAccountToken")]
    if not token or not tokens or tokens[0].get("audience") != "istio-ca" or \
            tokens[0].get("path") != token.rsplit("/", 1)[1]:
        problems.append(f"DaemonSet/ambit: --ca-token-file={token} is not a projected "
                        "service-account token of audience istio-ca")
    root = _flag_value(args, "--ca-root-cert") or ""
    _, volume = _mount_for(pod, ambitd, root.rsplit("/", 1)[0])
    if not root.endswith("/root-cert.pem") or \
            ((volume or {}).get("configMap") or {}).get("name") != "istio-ca-root-cert":
        problems.append(f"DaemonSet/ambit: --ca-root-cert={root} must be root-cert.pem of the "
                        "istio-ca-root-cert ConfigMap")
    return problems


def _ca_problems(objects, ds):
    problems = []
    pod = _pod_spec(ds)
    ambitd = _containers_by_name(ds)["ambitd"]
    args = ambitd.get("args") or []
    for a in CA_NODE_ARGS:
        if a not in args:
            problems.append(f"DaemonSet/ambit: ambitd lacks {a}")
    token = _flag_value(args, "--ca-token-file")
    if token is None:
        problems.append("DaemonSet/ambit: ambitd lacks --ca-token-file")
    else:
        mount, volume = _mount_for(pod, ambitd, token.rsplit("/", 1)[0])
        sources = ((volume or {}).get("projected") or {}).get("sources") or []
        tokens = [s.get("serviceAccountToken") for s in sources if s.get("serviceAccountToken")]
        if not tokens or tokens[0].get("audience") != "ambit-ca" or \
                tokens[0].get("path") != token.rsplit("/", 1)[1]:
            problems.append(f"DaemonSet/ambit: --ca-token-file={token} is not a projected "
                            "service-account token of audience ambit-ca")
    root = _flag_value(args, "--ca-root-cert")
    if root is None:
        problems.append("DaemonSet/ambit: ambitd lacks --ca-root-cert")
    else:
        _, volume = _mount_for(pod, ambitd, root.rsplit("/", 1)[0])
        if volume is None or "secret" in volume:
            problems.append(f"DaemonSet/ambit: --ca-root-cert={root} must come from a mounted "
                            "ConfigMap (never the Secret holding the CA key)")
    ca = _find(objects, "Deployment", "ambit-ca")
    if ca is None:
        return problems
    cpod = _pod_spec(ca)
    if cpod.get("serviceAccountName") != "ambit-ca":
        problems.append("Deployment/ambit-ca: must run as ServiceAccount ambit-ca")
    server = _containers_by_name(ca).get("ambit-ca") or {}
    sargs = server.get("args") or []
    for a in CA_SERVER_ARGS:
        if a not in sargs:
            problems.append(f"Deployment/ambit-ca: lacks {a}")
    get = (server.get("readinessProbe") or {}).get("httpGet") or {}
    if get.get("port") != 15021 or get.get("path") != "/healthz/ready":
        problems.append("Deployment/ambit-ca: the readiness probe must be GET "
                        ":15021/healthz/ready")
    _, config = _mount_for(cpod, server, _flag_value(sargs, "--config-dir") or "")
    if ((config or {}).get("configMap") or {}).get("name") != "ambit-mesh":
        problems.append("Deployment/ambit-ca: --config-dir must be the ambit-mesh ConfigMap "
                        "(the node agents' trust domain)")
    agent_sa = f"system:serviceaccount:{NAMESPACE}:{pod.get('serviceAccountName')}"
    if _flag_value(sargs, "--ca-token-users") != agent_sa:
        problems.append(f"Deployment/ambit-ca: --ca-token-users must be the node agents' "
                        f"service account alone ({agent_sa})")
    cacerts = _flag_value(sargs, "--cacerts-dir")
    _, volume = _mount_for(cpod, server, cacerts or "")
    if ((volume or {}).get("secret") or {}).get("secretName") != "cacerts":
        problems.append(f"Deployment/ambit-ca: --cacerts-dir={cacerts} is not the cacerts "
                        "Secret")
    svc = _find(objects, "Service", "ambit-ca")
    if svc is not None:
        labels = ((ca["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        sel = (svc.get("spec") or {}).get("selector") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            problems.append("Service/ambit-ca: does not select the CA's pods")
        if [(p.get("port"), p.get("targetPort")) for p in svc["spec"].get("ports") or []] != \
                [(15012, 15012)]:
            problems.append("Service/ambit-ca: must serve 15012 only")
    for v in pod.get("volumes") or []:
        if (v.get("secret") or {}).get("secretName") == "cacerts":
            problems.append("DaemonSet/ambit: mounts the cacerts Secret (the CA key) on every "
                            "node")
    return problems


def _cleanup_problems(ds):
    problems = []
    pod = _pod_spec(ds)
    init = {c.get("name"): c for c in pod.get("initContainers") or []}
    c = init.get("cleanup")
    if c is None:
        return ["DaemonSet/ambit-cleanup: no init container `cleanup`"]
    args = c.get("args") or []
    for a in ("--cleanup", "--dataplane=external", "--run-dir=/var/run/ambit"):
        if a not in args:
            problems.append(f"DaemonSet/ambit-cleanup: cleanup lacks {a}")
    if "--force" in args:
        problems.append("DaemonSet/ambit-cleanup: --force would remove the capture under a "
                        "running agent")
    for path, host in (("/sys/fs/bpf", "/sys/fs/bpf"), ("/var/run/ambit", "/var/run/ambit"),
                       ("/run/lock/ambit", "/run/lock/ambit")):
        _, volume = _mount_for(pod, c, path)
        if _host_path(volume) != host:
            problems.append(f"DaemonSet/ambit-cleanup: cleanup does not mount the host's {host} "
                            f"at {path} as the agent does")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("DaemonSet/ambit-cleanup: mounts a service-account token it has no use "
                        "for")
    if {"operator": "Exists"} not in (pod.get("tolerations") or []):
        problems.append("DaemonSet/ambit-cleanup: must tolerate every taint, as the agent does")
    return problems


def flag_uses(objects):
    """{(binary, flag)} of every `--flag` an ambit container's args use."""
    uses = set()
    for o in objects:
        if o.get("kind") not in ("DaemonSet", "Deployment"):
            continue
        for c in _containers(_pod_spec(o)):
            cmd = c.get("command") or []
            if not cmd or not cmd[0].startswith(BIN + "/"):
                continue
            binary = cmd[0][len(BIN) + 1:]
            for a in list(cmd[1:]) + list(c.get("args") or []):
                if a.startswith("--"):
                    uses.add((binary, a[2:].split("=", 1)[0]))
    return uses
