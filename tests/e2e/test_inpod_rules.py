"""End to end: ambit under istio-cni's in-pod rules.

An istio-cni node agent driving ambit installs its in-pod iptables rules, ip rule and routes in
every ambient pod. Here tests/inpod/istio_cni_rules.py applies them, exactly as istio-cni 1.32
would, to pods that ambit already captured (the order istio-cni follows: rules, then the node
proxy is told). Two nodes; a (node1) and the servers b and s (node2) carry the rules; c (node1)
is a pod outside the mesh with no rules. Checked, IPv4 and IPv6 (docs/ARCHITECTURE.md,
"istio-cni's in-pod rules"):
- mesh traffic a -> b goes through both tunnels, only TLS on 15008 on the wire (tcpdump), an
  AuthorizationPolicy decides, and b's application sees a's real address;
- plaintext c -> b:8080 is REDIRECTed by b's rules to 15006, and ambit delivers it to 8080 by
  SO_ORIGINAL_DST (the log line and ambit_nat_original_destination_total say so); plaintext to
  15006 itself is still refused; STRICT s refuses plaintext;
- a connection from a's netns that no BPF program redirected (a process outside the attach
  cgroup) is REDIRECTed by a's rules to 15001 and still reaches b over HBONE, by
  SO_ORIGINAL_DST; one whose original destination is port 15001 is refused (no loop);
- delivery into a pod's TCP port 53 is not taken by istio-cni's DNS REDIRECT (the delivery
  mark keeps 0x539 in its low 12 bits);
- kubelet probes SNATed on the node to istio-cni's probe address reach STRICT s with
  --kubelet-probe-source and are refused without it;
- after every case the tunnels' descriptors return to where they were and their RSS stays put:
  nothing loops.

istio-cni's probe SNAT address is its HOST_PROBE_SNAT_ADDRESS setting (default 169.254.7.127);
these tests set it to an address from the test range, as an operator can, so that no packet
carries an address outside 198.18.0.0/15 and 2001:2::/48.

Run as root: python3 run.py test_inpod_rules.InpodRulesTest
"""

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "inpod"))
import istio_cni_rules  # noqa: E402
from topology import Topology, deny_port_policy, fd_count, rss_kib, run  # noqa: E402
from topology import strict_peer_authentication  # noqa: E402
from test_telemetry import parse_metrics, total  # noqa: E402

APP_PORT = 8080
DENIED_PORT = 9090
DNS_PORT = 53
PORTS = (APP_PORT, DENIED_PORT, DNS_PORT)

# A TCP server on each port of argv[1:] (dual-stack): reads one message and answers with JSON
# naming the port and the client's address. Prints one JSON line per connection it serves.
APP = r"""
import json, socket, sys, threading
def serve(c, peer, port):
    c.settimeout(5)
    try:
        data = c.recv(200)
        seen = {"port": port, "client": peer[0].removeprefix("::ffff:"),
                "data": data.decode(errors="replace")}
        c.sendall(json.dumps(seen).encode())
        print(json.dumps(seen), flush=True)
    except OSError:
        pass
    finally:
        c.close()
def listen(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer, port), daemon=True).start()
for port in sys.argv[1:]:
    threading.Thread(target=listen, args=(int(port),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""

# Connects to argv[1]:argv[2], sends argv[3], prints {"ok": true, "answer": ...} or the error.
CLIENT = r"""
import json, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(sys.argv[3].encode())
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(json.dumps({"ok": bool(data), "answer": json.loads(data) if data else None}))
except OSError as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""


class InpodRulesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("i")
        cls.topo.__enter__()
        try:
            cls._set_up()
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def _set_up(cls):
        t = cls.topo
        # The node's own addresses, on the bridge in the wire namespace (where "kubelet" runs),
        # and istio-cni's probe SNAT addresses (HOST_PROBE_SNAT_ADDRESS, _V6_), from the test
        # range and outside the pods' subnets, reached like any off-subnet address: via the node.
        cls.node_ip4 = f"198.18.{t.subnet}.250"
        cls.node_ip6 = f"2001:2:0:{t.subnet:x}::fa"
        cls.probe4 = "198.19.7.127"
        cls.probe6 = "2001:2:0:ffff::7f"
        run("ip", "-n", t.wire, "addr", "add", f"{cls.node_ip4}/24", "dev", "br0")
        run("ip", "-n", t.wire, "-6", "addr", "add", f"{cls.node_ip6}/64", "dev", "br0", "nodad")
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.c = t.add_pod("c", namespace="default", service_account="plain", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.s = t.add_pod("s", namespace="secure", service_account="vault", node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        plain = cls.c.yaml().replace(f"    ambit.dev/netns: {cls.c.netns_path}\n", "")
        config = "---\n".join(p.yaml() for p in (cls.a, cls.b, cls.s)) + "---\n" + plain
        policy = (strict_peer_authentication("secure") + "---\n" +
                  deny_port_policy("backend", "deny-9090", DENIED_PORT))
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", config)
            agent.write_config("policy.yaml", policy)
        # One worker and pooled HBONE connections that outlive the test: the descriptors a tunnel
        # holds between cases are then the same, and any growth is a leak or a loop.
        steady = ("--tunnel-workers", "1", "--hbone-idle-timeout", "30m")
        cls.n1.start(*steady, wait_pods=[cls.a])
        cls.n2.start(*steady, "--kubelet-probe-source", f"{cls.probe4},{cls.probe6}",
                     wait_pods=[cls.b, cls.s])
        for agent, ident in ((cls.n1, "ns/default/sa/web"), (cls.n2, "ns/backend/sa/api"),
                             (cls.n2, "ns/secure/sa/vault")):
            agent.wait_log(f"certificate spiffe://cluster.local/{ident} valid")
        # istio-cni's rules, after ambit captured the pods, with DNS capture on (its default).
        for pod in (cls.a, cls.b, cls.s):
            istio_cni_rules.apply(pod.netns, probe_v4=cls.probe4, probe_v6=cls.probe6)
            installed = istio_cni_rules.installed(pod.netns)
            assert "-j REDIRECT --to-ports 15006" in installed, installed
        cls.apps = {}
        for pod in (cls.b, cls.s):
            app = pod.popen(["/usr/bin/python3", "-u", "-c", APP] + [str(p) for p in PORTS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
            line = os.read(app.stdout.fileno(), 100)
            assert b"listening" in line, line
            cls.apps[pod.name] = app
            # The pod's way to the node's probe address, as a pod's default route is via its node.
            run("ip", "-n", pod.netns, "route", "add", f"{cls.probe4}/32", "via", cls.node_ip4)
            run("ip", "-n", pod.netns, "-6", "route", "add", f"{cls.probe6}/128", "via",
                cls.node_ip6)
        # The pooled HBONE connections a -> b, one per family, before any case counts descriptors.
        for ip in (cls.b.ip4, cls.b.ip6):
            r = cls.a.run(["/usr/bin/python3", "-c", CLIENT, ip, str(APP_PORT), "warm-up"])
            assert json.loads(r.stdout)["ok"], r.stdout

    @classmethod
    def tearDownClass(cls):
        for pod in (cls.a, cls.b, cls.s):
            istio_cni_rules.remove(pod.netns)
        cls.topo.close()

    # ---- helpers ----

    def connect(self, pod, ip, port, payload, in_cgroup=True):
        r = pod.run(["/usr/bin/python3", "-c", CLIENT, ip, str(port), payload],
                    in_cgroup=in_cgroup)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def assert_reaches(self, pod, ip, port, client_ip, in_cgroup=True, what=""):
        answer = self.connect(pod, ip, port, f"from-{pod.name}", in_cgroup=in_cgroup)
        self.assertTrue(answer["ok"], f"{what}: {answer}\n{self.logs()}")
        self.assertEqual(answer["answer"]["port"], port, answer)
        self.assertEqual(answer["answer"]["client"], client_ip, f"{what}: the client's address")

    def assert_refused(self, pod, ip, port, in_cgroup=True, what=""):
        answer = self.connect(pod, ip, port, f"from-{pod.name}", in_cgroup=in_cgroup)
        self.assertFalse(answer["ok"], f"{what} got through: {answer}")

    def logs(self):
        return (f"--- node1\n{self.n1.logs()[-2500:]}\n--- node2\n{self.n2.logs()[-2500:]}")

    def wait_log(self, agent, pattern, count=1, timeout=10):
        deadline = time.time() + timeout
        while True:
            found = re.findall(pattern, agent.logs())
            if len(found) >= count or time.time() > deadline:
                return found
            time.sleep(0.1)

    def nat_count(self, agent, direction):
        return total(parse_metrics(agent.metrics()), "ambit_nat_original_destination_total",
                     direction=direction)

    def setUp(self):
        # Nothing may loop: what each tunnel holds before a case, it holds again after it.
        self.before = {}
        for agent in (self.n1, self.n2):
            pid = agent.tunnel_pid()
            self.assertIsNotNone(pid, "tunnel not running")
            self.before[agent.node] = (pid, fd_count(pid), rss_kib(pid))

    def tearDown(self):
        for agent in (self.n1, self.n2):
            pid, fds, rss = self.before[agent.node]
            self.assertEqual(agent.tunnel_pid(), pid, f"{agent.node}: the tunnel restarted")
            deadline = time.time() + 10
            while fd_count(pid) > fds and time.time() < deadline:
                time.sleep(0.1)
            self.assertLessEqual(fd_count(pid), fds, f"{agent.node}: tunnel descriptors grew")
            # A loop would take connections and buffers without end; a few pages may come and go.
            self.assertLess(rss_kib(pid) - rss, 8 * 1024, f"{agent.node}: tunnel RSS grew")

    # ---- tests ----

    def test_mesh_traffic_is_encrypted_authorized_and_keeps_the_client_address(self):
        pcap = os.path.join(self.topo.workdir, "inpod.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap,
                                 f"host {self.a.ip4} or host {self.a.ip6}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)
        for ip, src in ((self.b.ip4, self.a.ip4), (self.b.ip6, self.a.ip6)):
            self.assert_reaches(self.a, ip, APP_PORT, src, what=f"a -> b {ip}:{APP_PORT}")
            # The policy decides: b denies port 9090.
            self.assert_refused(self.a, ip, DENIED_PORT, what=f"a -> b {ip}:{DENIED_PORT}")
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        text = run("tcpdump", "-n", "-r", pcap, "-q", check=False).stdout
        lines = [l for l in text.splitlines() if " IP" in l and " tcp " in l]
        self.assertTrue(lines, text[-500:])
        for line in lines:
            self.assertRegex(line, r"[.:]15008[ :,]", f"not HBONE on the wire: {line}")
        with open(pcap, "rb") as f:
            self.assertNotIn(b"from-a", f.read(), "plaintext on the wire")
        self.assertGreaterEqual(len(self.wait_log(self.n2, r"deny-9090", 2)), 2, self.logs())

    def test_plaintext_redirected_to_15006_is_delivered_by_original_destination(self):
        before = self.nat_count(self.n2, "inbound")
        for ip, src in ((self.b.ip4, self.c.ip4), (self.b.ip6, self.c.ip6)):
            self.assert_reaches(self.c, ip, APP_PORT, src, in_cgroup=False,
                                what=f"plaintext c -> b {ip}:{APP_PORT} (PERMISSIVE)")
        self.assertEqual(self.nat_count(self.n2, "inbound") - before, 2)
        for ip in (self.b.ip4, re.escape(f"[{self.b.ip6}]")):
            self.assertTrue(self.wait_log(
                self.n2, rf"inbound pod=backend/b src=\S+ dst={ip}:{APP_PORT} \(SO_ORIGINAL_DST\)"
                r" mode=plaintext"), self.logs())
        # STRICT still refuses it, after the same REDIRECT.
        for ip in (self.s.ip4, self.s.ip6):
            self.assert_refused(self.c, ip, APP_PORT, in_cgroup=False, what=f"plaintext c -> s {ip}")
        self.assertGreaterEqual(len(self.wait_log(
            self.n2, r"inbound pod=secure/s .*\(SO_ORIGINAL_DST\) mode=plaintext .*"
            r"plaintext refused: PeerAuthentication", 2)), 2, self.logs())
        self.assertNotIn(self.c.ip4, [json.loads(l)["client"] for l in self.app_lines("s")])
        self.assertNotIn(self.c.ip6, [json.loads(l)["client"] for l in self.app_lines("s")])

    def test_plaintext_to_15006_itself_is_refused(self):
        before = self.nat_count(self.n2, "inbound")
        for ip in (self.b.ip4, self.b.ip6):
            self.assert_refused(self.c, ip, 15006, in_cgroup=False, what=f"c -> b {ip}:15006")
        self.assertEqual(len(self.wait_log(
            self.n2, r"inbound pod=backend/b src=\S+ dst=\S+:15006 mode=plaintext: refused: port "
            r"15006 is one of ambit's own listeners, never a delivery target \(its NAT original "
            r"destination \S+ is that port too", 2)), 2, self.logs())
        self.assertEqual(self.nat_count(self.n2, "inbound"), before)

    def test_outbound_redirected_to_15001_without_bpf_record(self):
        # A process of a's netns outside the attach cgroup: no BPF program sees its connect, so
        # no ambit_orig_dst entry; istio-cni's OUTPUT rule REDIRECTs it to 15001.
        before = self.nat_count(self.n1, "outbound")
        for ip, src in ((self.b.ip4, self.a.ip4), (self.b.ip6, self.a.ip6)):
            self.assert_reaches(self.a, ip, APP_PORT, src, in_cgroup=False,
                                what=f"uncaptured socket in a -> b {ip}:{APP_PORT}")
        self.assertEqual(self.nat_count(self.n1, "outbound") - before, 2)
        for ip in (self.b.ip4, re.escape(f"[{self.b.ip6}]")):
            self.assertTrue(self.wait_log(
                self.n1, rf"outbound pod=default/a src=\S+ orig_dst={ip}:{APP_PORT} "
                r"\(SO_ORIGINAL_DST\) mode=hbone"), self.logs())
        # Authorized like any mesh connection.
        self.assert_refused(self.a, self.b.ip4, DENIED_PORT, in_cgroup=False,
                            what="uncaptured socket to the denied port")
        # One whose original destination is the outbound port is never sent on.
        self.assert_refused(self.a, self.b.ip4, 15001, in_cgroup=False, what="a -> b:15001")
        self.assertTrue(self.wait_log(
            self.n1, r"outbound pod=default/a src=\S+: no original destination recorded .*; "
            r"refused: NAT original destination \S+:15001 is the outbound listener itself"),
            self.logs())

    def test_delivery_to_a_dns_port_is_not_redirected_to_15053(self):
        # istio-cni's OUTPUT rule REDIRECTs TCP to port 53 without mark 0x539/0xfff to its DNS
        # proxy's 15053 (nothing listens there for ambit); the delivery socket must pass.
        for ip, src in ((self.b.ip4, self.a.ip4), (self.b.ip6, self.a.ip6)):
            self.assert_reaches(self.a, ip, DNS_PORT, src, what=f"a -> b {ip}:53")
        for ip, src in ((self.b.ip4, self.c.ip4), (self.b.ip6, self.c.ip6)):
            self.assert_reaches(self.c, ip, DNS_PORT, src, in_cgroup=False,
                                what=f"plaintext c -> b {ip}:53")

    def kubelet(self, ip, port):
        """A TCP probe from the node's namespace (outside any attach cgroup), through istio-cni's
        host SNAT."""
        r = subprocess.run(["ip", "netns", "exec", self.topo.wire, "/usr/bin/python3", "-c",
                            CLIENT, ip, str(port), "from-kubelet"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def app_lines(self, name):
        fd = self.apps[name].stdout.fileno()
        out = b""
        while select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        lines = getattr(self, "_lines", {})
        lines.setdefault(name, [])
        lines[name] += [l for l in out.decode().splitlines() if l]
        self._lines = lines
        return lines[name]

    def test_kubelet_probes_from_the_snat_address(self):
        istio_cni_rules.host_probe_snat(self.topo.wire, [self.s.ip4, self.s.ip6],
                                        snat_v4=self.probe4, snat_v6=self.probe6)
        try:
            # s is STRICT; node2 runs with --kubelet-probe-source.
            for ip, src in ((self.s.ip4, self.probe4), (self.s.ip6, self.probe6)):
                answer = self.kubelet(ip, APP_PORT)
                self.assertTrue(answer["ok"], f"probe of {ip}: {answer}\n{self.logs()}")
                self.assertEqual(answer["answer"]["client"], src, answer)
            self.assertEqual(len(self.wait_log(
                self.n2, r"inbound pod=secure/s src=\S+ dst=\S+ mode=kubelet-probe by=probe source",
                2)), 2, self.logs())
            # From the same address, plaintext that is no probe: a connection from inside s
            # itself (it holds the address) is decided as any plaintext.
            run("ip", "-n", self.s.netns, "addr", "add", f"{self.probe4}/32", "dev", "lo")
            try:
                r = self.s.run(["/usr/bin/python3", "-c", CLIENT.replace(
                    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)",
                    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5, "
                    f"source_address=('{self.probe4}', 0))"), self.s.ip4, str(APP_PORT), "x"],
                    in_cgroup=False)
                self.assertFalse(json.loads(r.stdout)["ok"], r.stdout)
            finally:
                run("ip", "-n", self.s.netns, "addr", "del", f"{self.probe4}/32", "dev", "lo")
            # Node1 runs without the flag: the same probe of a STRICT pod there is refused.
            self.n1.write_config("strict-default.yaml", strict_peer_authentication("default"))
            istio_cni_rules.host_probe_snat(self.topo.wire, [self.a.ip4], snat_v4=self.probe4)
            run("ip", "-n", self.a.netns, "route", "add", f"{self.probe4}/32", "via", self.node_ip4)
            deadline = time.time() + 10
            while True:
                answer = self.kubelet(self.a.ip4, APP_PORT)
                refused = self.wait_log(self.n1, r"inbound pod=default/a src=" +
                                        re.escape(self.probe4) + r":\d+ .*plaintext refused: "
                                        r"PeerAuthentication", timeout=0)
                if refused or time.time() > deadline:
                    break
                time.sleep(0.3)
            self.assertFalse(answer["ok"], answer)
            self.assertTrue(refused, self.logs())
        finally:
            self.n1.write_config("strict-default.yaml", "")
            for netns in (self.topo.wire,):
                for tool in ("iptables", "ip6tables"):
                    run("ip", "netns", "exec", netns, tool, "-t", "nat", "-F", "ISTIO_POSTRT",
                        check=False)

    def test_flags_that_would_trust_too_much_or_mark_nothing_stop_ambitd(self):
        for flags, message in (
                (("--kubelet-probe-source", "127.0.0.1"), "--kubelet-probe-source: 127.0.0.1"),
                (("--kubelet-probe-source", "198.19.7.127,198.19.7.128"), "more than one IPv4"),
                (("--kubelet-probe-source", "nonsense"), "'nonsense' is not an IP address"),
                (("--socket-mark", "0"), "--socket-mark must be neither 0 nor 0x1000"),
                (("--socket-mark", "4096"), "--socket-mark must be neither 0 nor 0x1000")):
            r = subprocess.run(self.n1.argv(*flags), capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, f"{flags}: {r.stdout}{r.stderr}")
            self.assertIn(message, r.stderr, flags)


if __name__ == "__main__":
    unittest.main()
