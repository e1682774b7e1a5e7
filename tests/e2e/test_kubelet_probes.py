"""End to end: kubelet probes reach pods under STRICT mTLS, and nothing else from the node does.

Kubelet probes a pod from the node's network namespace, in plaintext and without a mesh
identity. ambitd is told which namespace is the node's (--node-netns); the sockops program
records each connection a socket of that namespace opens to an enrolled pod's address, by its
4-tuple, and the pod's tunnel admits exactly those connections past PeerAuthentication and
AuthorizationPolicy (docs/ARCHITECTURE.md#kubelet-probes).

Here the node is the topology's wire namespace, given an address on the bridge, and "kubelet"
is curl (HTTP probe) and a Python socket (TCP probe) run in it from a cgroup inside the agent's
attach cgroup. Refused, while the same requests from kubelet pass: a pod in plaintext (from
inside and from outside the attach cgroup: another network namespace is not the node), a
process of the wire namespace outside the attach cgroup, and a pod that takes the node's
address and has the probed pod's neighbour entry point at it (a spoofed source). The
application logs every request and connection it sees: only kubelet's appear.

Run as root: python3 run.py test_kubelet_probes.KubeletProbeTest
"""

import json
import os
import re
import select
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, remove_cgroup, run, strict_peer_authentication  # noqa: E402
from test_telemetry import parse_metrics, total  # noqa: E402

HTTP_PORT = 8080
TCP_PORT = 9000

# The probed application: HTTP on HTTP_PORT and a TCP echo on TCP_PORT, both dual-stack. Prints
# one JSON line per request or connection it sees: what came and from where.
APP = r"""
import http.server, json, socket, sys, threading
lock = threading.Lock()
def log(**kw):
    with lock:
        print(json.dumps(kw), flush=True)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        log(kind="http", path=self.path, client=self.client_address[0].removeprefix("::ffff:"))
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
http_server = S(("::", int(sys.argv[1])), H)
threading.Thread(target=http_server.serve_forever, daemon=True).start()
echo = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
echo.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
echo.bind(("::", int(sys.argv[2])))
echo.listen(64)
print("listening", flush=True)
def serve(c, peer):
    c.settimeout(5)
    try:
        data = c.recv(100)
        log(kind="tcp", data=data.decode(errors="replace"), client=peer[0].removeprefix("::ffff:"))
        c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, peer = echo.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# A TCP probe as kubelet makes one, plus a round trip: connects to argv[1]:argv[2], sends argv[3]
# and expects it back. Prints {"ok": ...}.
TCP_PROBE = r"""
import json, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(sys.argv[3].encode())
    data = s.recv(100)
    print(json.dumps({"ok": data == sys.argv[3].encode(), "data": data.decode(errors="replace")}))
except OSError as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""

DENY_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: locked
spec: {}
"""


def url(ip, port, path):
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


class KubeletProbeTest(unittest.TestCase):
    def setUp(self):
        self.topo = Topology("k")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        t = self.topo
        # The node's addresses, on the bridge in the wire namespace.
        self.node_ip4 = f"198.18.{t.subnet}.250"
        self.node_ip6 = f"2001:2:0:{t.subnet:x}::fa"
        run("ip", "-n", t.wire, "addr", "add", f"{self.node_ip4}/24", "dev", "br0")
        run("ip", "-n", t.wire, "-6", "addr", "add", f"{self.node_ip6}/64", "dev", "br0",
            "nodad")
        self.a = t.add_pod("a", namespace="backend", service_account="api")
        self.d = t.add_pod("d", namespace="locked", service_account="vault")
        self.c = t.add_pod("c", namespace="default")  # not enrolled: plaintext from a pod
        self.agent = t.add_agent()
        # Kubelet's cgroup: inside the agent's attach cgroup, as the node's processes are under
        # the cgroup-v2 root where ambitd attaches in a cluster.
        self.kubelet_cgroup = os.path.join(self.agent.cgroup, "kubelet")
        os.makedirs(self.kubelet_cgroup)
        self.addCleanup(remove_cgroup, self.kubelet_cgroup)
        self.topo.write_pods(self.agent, [self.a, self.d])
        self.agent.write_config("policy.yaml", strict_peer_authentication("backend") + "---\n" +
                                strict_peer_authentication("locked") + "---\n" + DENY_ALL)
        self.agent.start("--node-netns", f"/var/run/netns/{t.wire}", wait_pods=[self.a, self.d])
        self.agent.wait_log("kubelet probes: connections from network namespace "
                            f"/var/run/netns/{t.wire}")
        self.apps = {}
        self.app_lines = {}
        for pod in (self.a, self.d):
            app = pod.popen(["/usr/bin/python3", "-u", "-c", APP, str(HTTP_PORT), str(TCP_PORT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
            self.assertIn(b"listening", os.read(app.stdout.fileno(), 100))
            self.apps[pod.name] = app
            self.app_lines[pod.name] = []

    # ---- who sends ----

    def in_wire(self, argv, cgroup=None, timeout=20):
        """argv in the wire (node) namespace; in `cgroup` if given, else in this test's own
        cgroup, which is outside the agent's attach cgroup."""
        wrapped = ["ip", "netns", "exec", self.topo.wire] + list(argv)
        if cgroup:
            wrapped = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"] + wrapped
        return subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout)

    def kubelet(self, argv):
        return self.in_wire(argv, cgroup=self.kubelet_cgroup)

    @staticmethod
    def curl(target, source=None):
        argv = ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"]
        if source:
            argv += ["--interface", source]
        return argv + [target]

    @staticmethod
    def tcp(ip, payload):
        return ["/usr/bin/python3", "-c", TCP_PROBE, ip, str(TCP_PORT), payload]

    def assert_http(self, result, ok, what):
        code = result.stdout.strip()
        if ok:
            self.assertEqual(code, "200", f"{what}: {result.stderr}\n{self.agent.logs()[-3000:]}")
        else:
            self.assertNotEqual(code, "200", f"{what} got through")
            self.assertNotEqual(result.returncode, 0, what)

    def assert_tcp(self, result, ok, what):
        self.assertEqual(result.returncode, 0, result.stderr)
        answer = json.loads(result.stdout)
        self.assertEqual(answer["ok"], ok, f"{what}: {answer}\n{self.agent.logs()[-3000:]}")

    # ---- what the application saw ----

    def seen(self, pod):
        """Every request and connection the pod's application logged so far."""
        fd = self.apps[pod.name].stdout.fileno()
        out = b""
        while select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        self.app_lines[pod.name] += [json.loads(l) for l in out.decode().splitlines() if l]
        return self.app_lines[pod.name]

    def assert_only_kubelet_reached(self, pod):
        for entry in self.seen(pod):
            what = entry.get("path") if entry["kind"] == "http" else entry.get("data")
            self.assertIn("from=kubelet", what, f"plaintext reached {pod.name}: {entry}")
            self.assertIn(entry["client"], (self.node_ip4, self.node_ip6), entry)

    def access_log(self):
        return [l.split(" access: ", 1)[1] for l in self.agent.logs().splitlines()
                if " access: " in l]

    # ---- tests ----

    def test_kubelet_probes_pass_strict_and_deny_all_and_nothing_else_does(self):
        for ip in (self.a.ip4, self.a.ip6):
            self.assert_http(self.kubelet(self.curl(url(ip, HTTP_PORT, "/healthz?from=kubelet"))),
                             True, f"kubelet HTTP probe of STRICT pod a at {ip}")
            self.assert_tcp(self.kubelet(self.tcp(ip, "from=kubelet")), True,
                            f"kubelet TCP probe of STRICT pod a at {ip}")
        # Authorization is not asked either: pod d denies every connection.
        for ip in (self.d.ip4, self.d.ip6):
            self.assert_http(self.kubelet(self.curl(url(ip, HTTP_PORT, "/ready?from=kubelet"))),
                             True, f"kubelet HTTP probe of deny-all pod d at {ip}")
            self.assert_tcp(self.kubelet(self.tcp(ip, "from=kubelet")), True,
                            f"kubelet TCP probe of deny-all pod d at {ip}")
        for pod in (self.a, self.d):
            kinds = sorted(e["kind"] for e in self.seen(pod))
            self.assertEqual(kinds, ["http", "http", "tcp", "tcp"], self.seen(pod))
            self.assertEqual({e["client"] for e in self.seen(pod)},
                             {self.node_ip4, self.node_ip6}, "the probe's true source")

        # The same requests from elsewhere are refused.
        for pod in (self.a, self.d):
            for ip in (pod.ip4, pod.ip6):
                # Another pod, in plaintext, from inside and from outside the attach cgroup:
                # another network namespace is not the node's.
                for in_cgroup in (True, False):
                    what = f"pod c (in attach cgroup: {in_cgroup}) to {pod.name} at {ip}"
                    r = self.c.run(self.curl(url(ip, HTTP_PORT, "/?from=pod-c")),
                                   in_cgroup=in_cgroup)
                    self.assert_http(r, False, what)
                    self.assert_tcp(self.c.run(self.tcp(ip, "from=pod-c"), in_cgroup=in_cgroup),
                                    False, what)
                # The node's namespace, but a process outside the attach cgroup: the programs
                # never see its sockets, nothing is recorded.
                what = f"wire namespace outside the attach cgroup to {pod.name} at {ip}"
                self.assert_http(self.in_wire(self.curl(url(ip, HTTP_PORT, "/?from=outside"))),
                                 False, what)
                self.assert_tcp(self.in_wire(self.tcp(ip, "from=outside")), False, what)
        for pod in (self.a, self.d):
            self.assert_only_kubelet_reached(pod)
        refused = self.agent.logs().count("plaintext refused: PeerAuthentication")
        self.assertGreaterEqual(refused, 24, "every refused connection was refused by STRICT")

        # A probe is still delivered after all that: nothing was left open or closed for good.
        self.assert_http(self.kubelet(self.curl(url(self.a.ip4, HTTP_PORT, "/?from=kubelet"))),
                         True, "kubelet probe after the refusals")

        # Access log and metrics name probes as such.
        deadline = time.time() + 10
        while True:
            probes = [l for l in self.access_log() if 'mode="kubelet probe"' in l]
            if len(probes) >= 9 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(probes), 9, self.access_log())
        for line in probes:
            self.assertIn('policy="kubelet probe"', line)
            self.assertIn("decision=allow", line)
            self.assertIn("security=none", line)
            self.assertRegex(line, f"src=(?:{re.escape(self.node_ip4)}|\\[{self.node_ip6}\\]):")
        samples = parse_metrics(self.agent.metrics())
        self.assertEqual(total(samples, "ambit_kubelet_probes_total"), 9)
        self.assertEqual(total(samples, "istio_tcp_connections_opened_total",
                               reporter="destination", source_workload="kubelet probe"), 9)
        self.assertEqual(total(samples, "istio_tcp_connections_opened_total",
                               reporter="destination", source_workload="kubelet probe",
                               destination_workload="d"), 4)
        # The deny-all policy counted no decision for them.
        self.assertEqual(total(samples, "ambit_policy_decisions_total", result="allow"), 0)

    def test_a_pod_spoofing_the_nodes_address_is_refused(self):
        # Pod s takes the node's addresses, and pod a's neighbour entries for them point at s:
        # s completes handshakes from the node's address, as an attacker on the path would.
        s = self.topo.add_pod("s", namespace="default")
        mac = json.loads(run("ip", "-n", s.netns, "-j", "link", "show", "eth0").stdout)[0]["address"]
        run("ip", "-n", s.netns, "addr", "add", f"{self.node_ip4}/32", "dev", "eth0")
        run("ip", "-n", s.netns, "-6", "addr", "add", f"{self.node_ip6}/128", "dev", "eth0",
            "nodad")
        for ip in (self.node_ip4, self.node_ip6):
            run("ip", "-n", self.a.netns, "neigh", "replace", ip, "lladdr", mac, "dev", "eth0",
                "nud", "permanent")
        for ip, source in ((self.a.ip4, self.node_ip4), (self.a.ip6, self.node_ip6)):
            for in_cgroup in (True, False):
                what = f"pod s spoofing {source} (in attach cgroup: {in_cgroup}) at {ip}"
                r = s.run(self.curl(url(ip, HTTP_PORT, "/?from=spoofer"), source=source),
                          in_cgroup=in_cgroup)
                self.assert_http(r, False, what)
        # Each reached the pod's tunnel from the node's address (the handshake completed with
        # s) and was refused there by STRICT; curl sees the reset before or after its request.
        for source in (f"src={self.node_ip4}:", f"src=[{self.node_ip6}]:"):
            deadline = time.time() + 5
            while True:
                refused = [l for l in self.agent.logs().splitlines()
                           if f"inbound pod=backend/a {source}" in l and
                           "plaintext refused: PeerAuthentication backend/strict" in l]
                if len(refused) >= 2 or time.time() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(len(refused), 2, self.agent.logs()[-3000:])
        self.assert_only_kubelet_reached(self.a)
        self.assertEqual(self.seen(self.a), [])
        samples = parse_metrics(self.agent.metrics())
        self.assertEqual(total(samples, "ambit_kubelet_probes_total"), 0)

    def test_without_node_netns_the_wire_is_not_the_node(self):
        # Restarted with the default (ambitd's own namespace, the host's): the wire's kubelet
        # is then no node process, and STRICT refuses it like any plaintext.
        self.agent.stop()
        self.agent.start(wait_pods=[self.a, self.d])
        self.agent.wait_log("kubelet probes: connections from network namespace /proc/self/ns/net")
        self.assert_http(self.kubelet(self.curl(url(self.a.ip4, HTTP_PORT, "/?from=kubelet"))),
                         False, "kubelet probe with ambitd's own namespace as the node's")
        self.assertEqual(self.seen(self.a), [])

    def test_a_node_netns_that_cannot_be_opened_stops_ambitd(self):
        self.agent.stop()
        proc = self.agent.start("--node-netns", f"/var/run/netns/{self.topo.prefix}-nothing")
        self.assertNotEqual(proc.wait(timeout=30), 0)
        self.assertIn("--node-netns: ", self.agent.logs())
        self.assertIn(f"{self.topo.prefix}-nothing", self.agent.logs())


if __name__ == "__main__":
    unittest.main()
