"""A throw-away node with pods, for ambit's end-to-end tests and demo
(docs/ARCHITECTURE.md#test-topology).

A "pod" is a network namespace with a veth into a bridge and a cgroup-v2 child cgroup holding
its processes. The bridge lives in a namespace of its own (the "wire"), so the host namespace
takes no part: no routes, no forwarding, nothing that could leak a packet off the machine.
Addresses come only from 198.18.0.0/15 and 2001:2::/48. Everything is removed on close(), also
when a test fails; processes are ended by the PIDs this module started.

An agent is ambitd with its own instance name (pins under /sys/fs/bpf/ambit/<instance>/v<ABI>),
its own config directory, and its programs attached to the topology's cgroup, never the host
root.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CGROUP2_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _abi_version():
    """AMBIT_ABI_VERSION from bpf/abi/redirect.h: the v<N> directory this build pins under."""
    header = pathlib.Path(__file__).resolve().parents[2] / "bpf/abi/redirect.h"
    for line in header.read_text().splitlines():
        if line.startswith("#define AMBIT_ABI_VERSION "):
            return int(line.split()[2])
    raise AssertionError(f"no AMBIT_ABI_VERSION in {header}")


ABI_VERSION = _abi_version()


def require_root():
    if os.geteuid() != 0:
        sys.stderr.write(
            "FAIL: this end-to-end test needs root (network namespaces, BPF, cgroups); "
            "run it as root, e.g. 'sudo make test'\n")
        sys.exit(1)


def _become_subreaper():
    """Data planes outlive the agent that started them (by design, for upgrades); when a test
    stops an agent, its ambit-tunnel is re-parented to us instead of to init, so that close() can
    reap it once it is stopped and no zombie is left behind."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans():
    for _ in range(50):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def cgroup2_mount():
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1]
    raise RuntimeError("no cgroup v2 hierarchy mounted")


def run(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def build_dir():
    return pathlib.Path(os.environ.get("AMBIT_BUILD_DIR",
                                       pathlib.Path(__file__).resolve().parents[2] / "build"))


class Pod:
    def __init__(self, topo, name, index, namespace, service_account, node):
        self.topo = topo
        self.name = name
        self.namespace = namespace
        self.service_account = service_account
        self.node = node
        self.netns = f"{topo.prefix}-{name}"
        self.ip4 = f"198.18.{topo.subnet}.{index}"
        self.ip6 = f"2001:2:0:{topo.subnet:x}::{index:x}"
        # One cgroup subtree per simulated node, as each node's agent attaches to its own.
        self.cgroup = os.path.join(topo.cgroup_root, node, name)
        self.netns_path = f"/var/run/netns/{self.netns}"

    def popen(self, argv, in_cgroup=True, **kw):
        """Starts argv inside the pod's netns (and its cgroup, unless in_cgroup is False)."""
        if in_cgroup:
            # Join the cgroup first: 'ip netns exec' remounts /sys, hiding the cgroup tree.
            wrapped = ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh",
                       "ip", "netns", "exec", self.netns] + list(argv)
        else:
            wrapped = ["ip", "netns", "exec", self.netns] + list(argv)
        proc = subprocess.Popen(wrapped, **kw)
        self.topo.procs.append(proc)
        return proc

    def run(self, argv, in_cgroup=True, timeout=30, input=None):
        proc = self.popen(argv, in_cgroup=in_cgroup, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.PIPE if input is not None else None,
                          text=True, errors="replace")
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{argv} in pod {self.name} timed out after {timeout}s: {err}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def python(self, code, *args, in_cgroup=True, timeout=30):
        return self.run(["/usr/bin/python3", "-c", code] + [str(a) for a in args],
                        in_cgroup=in_cgroup, timeout=timeout)

    def yaml(self, ip6=True):
        ips = [f"    - ip: {self.ip4}"] + ([f"    - ip: {self.ip6}"] if ip6 else [])
        return "\n".join([
            "apiVersion: v1",
            "kind: Pod",
            "metadata:",
            f"  name: {self.name}",
            f"  namespace: {self.namespace}",
            "  labels:",
            f"    app: {self.name[:63].rstrip('-.')}",  # a label value is at most 63 bytes
            "  annotations:",
            f"    ambit.dev/netns: {self.netns_path}",
            "spec:",
            f"  serviceAccountName: {self.service_account}",
            f"  nodeName: {self.node}",
            "status:",
            f"  podIP: {self.ip4}",
            "  podIPs:",
        ] + ips) + "\n"


# An HTTP/1.1 application (dual-stack, port argv[1]) that answers every request with what it saw:
# method, path, the client's address, the x-jwt-group and authorization headers; with argv[2]
# "--headers" also every header (names lower-cased) and the size of the body. It reads a request's
# body (Content-Length or chunked) before answering, so a keep-alive connection stays in step.
# Prints "listening" once it listens.
ECHO_HTTP_APP = r"""
import http.server, json, socket, sys
ALL_HEADERS = "--headers" in sys.argv[2:]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))
    def answer(self):
        received = self.read_body()
        seen = {"method": self.command, "path": self.path,
                "client": self.client_address[0].removeprefix("::ffff:"),
                "group": self.headers.get("x-jwt-group"),
                "authorization": self.headers.get("authorization")}
        if ALL_HEADERS:
            seen["headers"] = {k.lower(): v for k, v in self.headers.items()}
            seen["body_bytes"] = len(received)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
s = S(("::", int(sys.argv[1])), H)
print("listening", flush=True)
s.serve_forever()
"""

def waypoint_gateway(waypoint_for="all"):
    """A waypoint declared as Istio users declare one: backend/waypoint, a Gateway of class
    istio-waypoint taking `waypoint_for` traffic (service, workload, all)."""
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: backend
  labels:
    istio.io/waypoint-for: {waypoint_for}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"""


WAYPOINT_GATEWAY = waypoint_gateway()


def with_labels(pod, labels, annotations=None):
    """The pod's YAML with extra labels (and annotations)."""
    text = pod.yaml()
    extra = "".join(f"    {k}: {v}\n" for k, v in labels.items())
    text = text.replace(f"    app: {pod.name}\n", f"    app: {pod.name}\n{extra}")
    if annotations:
        extra = "".join(f"    {k}: \"{v}\"\n" for k, v in annotations.items())
        text = text.replace(f"    ambit.dev/netns: {pod.netns_path}\n",
                            f"    ambit.dev/netns: {pod.netns_path}\n{extra}")
    return text


def strict_peer_authentication(namespace, name="strict"):
    """A namespace-wide STRICT PeerAuthentication, as YAML."""
    return f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {namespace}
spec:
  mtls:
    mode: STRICT
"""


def deny_port_policy(namespace, name, port):
    """A namespace-wide AuthorizationPolicy denying every connection to `port`, as YAML."""
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["{port}"]
"""


def rss_kib(pid):
    """Resident set size of a process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    """Open descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


_HANDED_OUT_PORTS = set()


def free_port():
    """A loopback TCP port nothing listens on right now, never the same one twice in a run.

    Binding to port 0 and closing may give the same port to two calls in a row (an agent's
    metrics and readiness ports once were one port), and a port from the ephemeral range may be
    taken as the source port of any connection before the agent listens on it. So: a random
    port below the ephemeral range, one this process has not handed out, that binds now."""
    import random
    import socket
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, ephemeral_low - 1
    for _ in range(1000):
        port = random.randint(low, high) if high > low else 0
        # 15000-15099 are the mesh's own fixed ports (15008, 15001, 15006, 15020, ...).
        if port in _HANDED_OUT_PORTS or 15000 <= port < 15100:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port in _HANDED_OUT_PORTS:
            continue
        _HANDED_OUT_PORTS.add(port)
        return port
    raise AssertionError("no free loopback port after 1000 tries")


class Agent:
    def __init__(self, topo, node, instance, log_path):
        self.topo = topo
        self.node = node
        self.instance = instance
        self.config_dir = os.path.join(topo.workdir, f"config-{node}")
        self.cgroup = os.path.join(topo.cgroup_root, node)
        os.makedirs(self.cgroup, exist_ok=True)
        self.run_dir = os.path.join(topo.workdir, f"run-{node}")
        # One trust domain: every agent of a topology signs with the same CA material, as
        # nodes sharing Istio's cacerts do (the first agent to start generates it).
        self.ca_dir = os.path.join(topo.workdir, "ca")
        self.admin_socket = os.path.join(self.run_dir, "admin.sock")
        self.log_path = log_path
        self.proc = None
        # Several agents share the host's network namespace here: each serves metrics and
        # readiness on its own loopback port instead of 15020/15021 on every address.
        self.metrics_port = free_port()
        self.readiness_port = free_port()
        os.makedirs(self.config_dir, exist_ok=True)

    @property
    def instance_dir(self):
        """Every ABI version's pins of this agent's instance."""
        return f"/sys/fs/bpf/ambit/{self.instance}"

    @property
    def pin_root(self):
        """Where this build's ambitd pins."""
        return f"{self.instance_dir}/v{ABI_VERSION}"

    def argv(self, *extra):
        return [str(build_dir() / "agent/main/ambitd"), "--config-dir", self.config_dir,
                "--node-name", self.node, "--instance", self.instance,
                "--cgroup", self.cgroup, "--run-dir", self.run_dir,
                "--ca-state-dir", self.ca_dir,
                "--metrics-address", f"127.0.0.1:{self.metrics_port}",
                "--readiness-address", f"127.0.0.1:{self.readiness_port}"] + list(extra)

    def http_get(self, port, path, timeout=5):
        """(status, body) of GET http://127.0.0.1:port/path."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def metrics(self):
        status, body = self.http_get(self.metrics_port, "/metrics")
        assert status == 200, f"/metrics answered {status}: {body}"
        return body

    def ready(self):
        return self.http_get(self.readiness_port, "/healthz/ready")

    def try_ready(self, default=None):
        """ready(), or `default` while nothing listens on the readiness port yet."""
        try:
            return self.ready()
        except OSError:
            return default

    def start(self, *extra, wait_pods=()):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv(*extra), stdout=self.log, stderr=subprocess.STDOUT)
        self.topo.procs.append(self.proc)
        for pod in wait_pods:
            self.wait_log(f"pod {pod.namespace}/{pod.name} ")
        return self.proc

    def stop(self):
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self):
        self.stop()
        run(*self.argv("--cleanup"), check=False)

    def logs(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=15, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.logs().count(needle) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ambitd exited ({self.proc.returncode}) while waiting for "
                                     f"{needle!r}:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in agent log within {timeout}s:\n"
                             f"{self.logs()[-3000:]}")

    def write_config(self, name, text):
        path = os.path.join(self.config_dir, name)
        tmp = path + ".tmp~"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)

    def tunnel_pid(self):
        out = run("pgrep", "-f", "--", f"--control-socket {self.run_dir}/dataplane.sock",
                  check=False).stdout.split()
        return int(out[0]) if out else None


def remove_cgroup(path):
    """Removes a cgroup directory the test created, waiting up to 5 s for its processes to go."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # processes we killed may still be exiting


class Topology:
    """with Topology() as t: a = t.add_pod("a"); ..."""

    def __init__(self, name="t"):
        require_root()
        _become_subreaper()
        self.prefix = f"amb{os.getpid() % 100000}{name}"[:12]
        self.subnet = (os.getpid() % 200) + 1  # 198.18.<subnet>.0/24 inside this topology
        self.wire = f"{self.prefix}-wire"
        self.pods = {}
        self.agents = []
        self.procs = []
        self.workdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.cgroup_root = os.path.join(cgroup2_mount(), self.prefix)
        self._up = False

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def up(self):
        os.makedirs(self.cgroup_root, exist_ok=True)
        run("ip", "netns", "add", self.wire)
        self._up = True
        w = ["ip", "-n", self.wire]
        run(*w, "link", "set", "lo", "up")
        run(*w, "link", "add", "br0", "type", "bridge")
        run(*w, "link", "set", "br0", "up")
        # The wire namespace only switches frames; it has no addresses and forwards nothing.

    def add_pod(self, name, namespace="default", service_account="default", node="node1"):
        index = len(self.pods) + 2
        pod = Pod(self, name, index, namespace, service_account, node)
        run("ip", "netns", "add", pod.netns)
        n = ["ip", "-n", pod.netns]
        host_if = f"v{self.prefix[-6:]}{index}"[:15]
        run("ip", "link", "add", "eth0", "netns", pod.netns, "type", "veth", "peer", "name",
            host_if, "netns", self.wire)
        run("ip", "-n", self.wire, "link", "set", host_if, "master", "br0", "up")
        run("ip", "netns", "exec", pod.netns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0")
        run(*n, "link", "set", "lo", "up")
        run(*n, "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        run(*n, "-6", "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad")
        run(*n, "link", "set", "eth0", "up")
        os.makedirs(pod.cgroup, exist_ok=True)
        self.pods[name] = pod
        return pod

    def add_agent(self, node="node1"):
        agent = Agent(self, node, f"{self.prefix}{node}"[:24],
                      os.path.join(self.workdir, f"ambitd-{node}.log"))
        self.agents.append(agent)
        return agent

    def write_pods(self, agent, pods, name="pods.yaml"):
        agent.write_config(name, "---\n".join(p.yaml() for p in pods))

    def close(self):
        for agent in self.agents:
            try:
                agent.cleanup()
            except Exception as e:  # keep tearing down
                sys.stderr.write(f"agent cleanup: {e}\n")
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for pod in self.pods.values():
            run("ip", "netns", "del", pod.netns, check=False)
            self._remove_cgroup(pod.cgroup)
        for node in {p.node for p in self.pods.values()} | {a.node for a in self.agents}:
            self._remove_cgroup(os.path.join(self.cgroup_root, node))
        if self._up:
            run("ip", "netns", "del", self.wire, check=False)
        self._remove_cgroup(self.cgroup_root)
        shutil.rmtree(self.workdir, ignore_errors=True)
        _reap_orphans()

    @staticmethod
    def _remove_cgroup(path):
        remove_cgroup(path)


# Small programs run inside pods. They print one JSON line.
SERVER = r"""
import json, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("listening", flush=True)
count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
for _ in range(count):
    c, peer = s.accept()
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.sendall(b"echo:" + data)
    c.shutdown(socket.SHUT_WR)
    print(json.dumps({"peer": peer[0], "local": c.getsockname()[0], "local_port": c.getsockname()[1], "bytes": len(data)}), flush=True)
    c.close()
"""

CLIENT = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
payload = sys.argv[3].encode() if len(sys.argv) > 3 else b"hello"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(5)
s.connect((host, port))
peer = s.getpeername()
s.sendall(payload)
s.shutdown(socket.SHUT_WR)  # half-close: the reply must still arrive
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"peer": peer[0], "peer_port": peer[1], "reply": data.decode()}), flush=True)
"""


def wait_listening(proc, timeout=10):
    """Reads the server's 'listening' line."""
    deadline = time.time() + timeout
    line = proc.stdout.readline()
    if "listening" not in line:
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return deadline
