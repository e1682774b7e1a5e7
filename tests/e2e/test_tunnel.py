"""End to end: the mTLS tunnel (HBONE) between pods on two simulated nodes.

Two agents share one kernel (separate instances, pins and cgroups) and one bridge; the bridge is
"the wire between the nodes", and tcpdump watches it. Peers we did not write (Python ssl + h2,
openssl s_client) check interoperability.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, run, wait_listening  # noqa: E402
import svid  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# Reads everything (hashing it), then answers with its own stream of `reply_size` bytes, then
# FIN. Prints the hash of what it got. Serves `count` connections.
SINK = r"""
import hashlib, json, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
for _ in range(int(sys.argv[3])):
    c, peer = s.accept()
    c.settimeout(120)
    size = int(c.recv(20).decode().strip())  # header: reply size, padded to 20 bytes
    h, n = hashlib.sha256(), 0
    while True:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk); n += len(chunk)
    out = hashlib.sha256()
    block = hashlib.sha256(b"reply").digest() * 32768  # 1 MiB
    left = size
    while left > 0:
        piece = block[:min(left, len(block))]
        c.sendall(piece); out.update(piece); left -= len(piece)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
    print(json.dumps({"peer": peer[0], "got": n, "sha": h.hexdigest(), "sent_sha": out.hexdigest()}), flush=True)
"""

SOURCE = r"""
import hashlib, json, socket, sys, time
host, port, size, reply = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
marker = sys.argv[5].encode() if len(sys.argv) > 5 else b""
s = socket.create_connection((host, port), timeout=120)
s.sendall(str(reply).encode().ljust(20))
h = hashlib.sha256()
block = (marker + hashlib.sha256(b"data").digest() * 32768)[:1 << 20]
left, t0 = size, time.time()
while left > 0:
    piece = block[:min(left, len(block))]
    s.sendall(piece); h.update(piece); left -= len(piece)
s.shutdown(socket.SHUT_WR)  # half-close: the reply must still arrive
got = hashlib.sha256(); n = 0
while True:
    chunk = s.recv(1 << 20)
    if not chunk:
        break
    got.update(chunk); n += len(chunk)
print(json.dumps({"sha": h.hexdigest(), "got": n, "got_sha": got.hexdigest(), "seconds": time.time() - t0}), flush=True)
"""


class TunnelTest(unittest.TestCase):
    """a (node1) and b (node2) are enrolled; c (node1) is not; x lives on node3, which runs no
    ambit agent of ours but is in the mesh (a Python HBONE server plays its node)."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("t")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.c = t.add_pod("c", namespace="default", service_account="plain", node="node1")
        cls.x = t.add_pod("x", namespace="remote", service_account="far", node="node3")
        # d talks to b only in the wire test, so that capture holds a fresh TLS handshake.
        cls.d = t.add_pod("d", namespace="default", service_account="wire", node="node1")
        tokens = os.path.join(t.workdir, "tokens")
        with open(tokens, "w") as f:
            f.write("t1 node1\nt2 node2\nt3 node3\n")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        pods = [cls.a, cls.b, cls.x, cls.d]
        plain = cls.c.yaml().replace(f"    ambit.dev/netns: {cls.c.netns_path}\n", "")
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", "---\n".join(p.yaml() for p in pods) + "---\n" + plain)
        cls.n1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens,
                     wait_pods=[cls.a, cls.d])
        cls.n2.start(wait_pods=[cls.b])
        for agent, ident in ((cls.n1, "ns/default/sa/web"), (cls.n1, "ns/default/sa/wire"),
                             (cls.n2, "ns/backend/sa/api")):
            agent.wait_log(f"certificate spiffe://cluster.local/{ident} valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def transfer(self, src, dst_ip, port, size, reply, marker=""):
        srv = src.topo.pods["b"].popen(
            ["/usr/bin/python3", "-c", SINK, "::" if ":" in dst_ip else "0.0.0.0", str(port), "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        r = src.run(["/usr/bin/python3", "-c", SOURCE, dst_ip, str(port), str(size), str(reply),
                     marker], in_cgroup=(src.name != "c"), timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        mine = json.loads(r.stdout)
        out, err = srv.communicate(timeout=60)
        theirs = json.loads(out.splitlines()[-1])
        self.assertEqual(theirs["got"], size)
        self.assertEqual(theirs["sha"], mine["sha"], "bytes changed on the way out")
        self.assertEqual(mine["got"], reply)
        self.assertEqual(mine["got_sha"], theirs["sent_sha"], "bytes changed on the way back")
        return mine, theirs

    def test_transfers_arrive_intact_both_ways_with_half_close(self):
        for size, reply in ((1, 1), (1 << 20, 1 << 20), (1 << 30, 1)):
            mine, theirs = self.transfer(self.a, self.b.ip4, 7000 + size % 97, size, reply)
            # The application on b sees a's real address, delivered through the tunnel.
            self.assertEqual(theirs["peer"].replace("::ffff:", ""), self.a.ip4)
            if size == 1 << 30:
                print(f"\n1 GiB through the tunnel in {mine['seconds']:.1f}s "
                      f"({size / mine['seconds'] / 1e6:.0f} MB/s)")
        self.n1.wait_log(f"orig_dst={self.b.ip4}:")
        self.assertIn("mode=hbone dst_identity=spiffe://cluster.local/ns/backend/sa/api",
                      self.n1.logs())
        self.assertIn("mode=mtls peer=spiffe://cluster.local/ns/default/sa/web", self.n2.logs())

    def test_ipv6_transfer(self):
        mine, theirs = self.transfer(self.a, self.b.ip6, 7100, 1 << 20, 4096)
        self.assertEqual(theirs["peer"], self.a.ip6)

    def capture(self, src, marker):
        pcap = os.path.join(self.topo.workdir, f"wire-{src.name}.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap,
                                 f"host {src.ip4} and host {self.b.ip4}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)
        self.transfer(src, self.b.ip4, 7200, 64 * 1024, 16, marker=marker)
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        ports = run("tcpdump", "-n", "-r", pcap, "-q", check=False)
        self.assertEqual(ports.returncode, 0, ports.stderr + dump.stderr.read().decode())
        ports = ports.stdout
        with open(pcap, "rb") as f:
            raw = f.read()
        return ports, raw

    def test_wire_carries_only_tls_on_15008(self):
        marker = "AMBIT-MARKER-7f3c9e"
        ports, raw = self.capture(self.d, marker)
        lines = [l for l in ports.splitlines() if " IP " in l]
        self.assertTrue(lines, "nothing captured: " + ports[-500:])
        for line in lines:
            self.assertRegex(line, r"\.15008[ :]", f"non-HBONE packet on the wire: {line}")
        self.assertNotIn(marker.encode(), raw)
        self.assertIn(b"\x16\x03\x01", raw)  # a TLS ClientHello: the capture holds a handshake
        self.assertIn(b"\x00\x10\x00\x05\x00\x03\x02h2", raw)  # ALPN extension offering h2
        self.assertIn(b"\x00\x2b\x00\x02\x03\x04", raw)  # ServerHello: supported_versions TLS 1.3
        # The control: c is not enrolled, so its bytes cross in plaintext and the marker shows.
        ports, raw = self.capture(self.c, marker)
        self.assertIn(marker.encode(), raw, "the capture could not have seen the marker")

    def test_openssl_s_client_sees_tls13_h2_and_spiffe_identity(self):
        certdir = svid.issue(self.n1, "spiffe://cluster.local/ns/default/sa/plain", "t1",
                             tempfile.mkdtemp(dir=self.topo.workdir))
        r = self.c.run(["openssl", "s_client", "-connect", f"{self.b.ip4}:15008", "-alpn", "h2",
                        "-tls1_3", "-cert", f"{certdir}/cert.pem", "-key", f"{certdir}/key.pem",
                        "-CAfile", f"{certdir}/root.pem", "-showcerts"],
                       in_cgroup=False, input="", timeout=20)
        out = r.stdout + r.stderr
        self.assertIn("TLSv1.3", out)
        self.assertIn("ALPN protocol: h2", out)
        self.assertRegex(out, r"Verify return code: 0 \(ok\)")
        leaf = out.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        text = run("openssl", "x509", "-noout", "-text",
                   input=f"-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n").stdout
        self.assertIn("URI:spiffe://cluster.local/ns/backend/sa/api", text)

    def test_python_h2_client_reaches_pod_through_15008(self):
        certdir = svid.issue(self.n1, "spiffe://cluster.local/ns/default/sa/plain", "t1",
                             tempfile.mkdtemp(dir=self.topo.workdir))
        echo = self.b.popen(["/usr/bin/python3", "-c", SINK, "0.0.0.0", "7300", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(echo)
        payload = str(5).ljust(20) + "hello from h2"
        r = self.c.run(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "client",
                        certdir, self.b.ip4, f"{self.b.ip4}:7300", payload], in_cgroup=False)
        out = json.loads(r.stdout)
        self.assertEqual(out["status"], 200, r.stderr)
        self.assertEqual(out["tls"], "TLSv1.3")
        self.assertEqual(out["alpn"], "h2")
        self.assertEqual(out["server"], ["spiffe://cluster.local/ns/backend/sa/api"])
        self.assertEqual(len(out["reply"]), 5)
        seen = json.loads(echo.communicate(timeout=10)[0].splitlines()[-1])
        self.assertEqual(seen["got"], len("hello from h2"))
        self.assertEqual(seen["peer"], self.c.ip4)  # the real client address
        # An authority that is not this pod: 400.
        r = self.c.run(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "client",
                        certdir, self.b.ip4, f"{self.a.ip4}:7300", "x"], in_cgroup=False)
        self.assertEqual(json.loads(r.stdout)["status"], 400)

    def _python_server(self, identity, token="t3"):
        certdir = svid.issue(self.n1, identity, token, tempfile.mkdtemp(dir=self.topo.workdir))
        srv = self.x.popen(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "server",
                            certdir, self.x.ip4], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, in_cgroup=False)
        wait_listening(srv)
        return srv

    def test_python_h2_server_accepts_our_outbound_tunnel(self):
        srv = self._python_server("spiffe://cluster.local/ns/remote/sa/far")
        r = self.a.python(r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 7400), timeout=10)
s.sendall(b"over hbone"); s.shutdown(socket.SHUT_WR)
data = b""
while True:
    c = s.recv(100)
    if not c: break
    data += c
print(data.decode())
""", self.x.ip4)
        if r.stdout.strip() != "over hbone":
            srv.kill()
            self.fail(f"{r.stderr}\n{self.n1.logs()[-800:]}\n{srv.communicate(timeout=5)}")
        srv.kill()
        seen = json.loads(srv.communicate(timeout=5)[0].splitlines()[-1])
        self.assertEqual(seen["method"], "CONNECT")
        self.assertEqual(seen["authority"], f"{self.x.ip4}:7400")
        self.assertRegex(seen["forwarded"], rf'for="{self.a.ip4}:\d+"')
        self.assertIn("k8s.namespace.name=default", seen["baggage"])
        self.assertRegex(seen["traceparent"], r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        self.assertEqual(seen["client"], ["spiffe://cluster.local/ns/default/sa/web"])

    def test_server_with_wrong_identity_is_refused(self):
        # A genuine certificate of the mesh, for an identity other than the pod's: node2's
        # backend/api, presented by whoever answers at x's address.
        srv = self._python_server("spiffe://cluster.local/ns/backend/sa/api", token="t2")
        r = self.a.python(r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 7401), timeout=10)
    s.sendall(b"secret")
    print(repr(s.recv(100)))
except OSError as e:
    print(type(e).__name__)
""", self.x.ip4)
        self.assertIn(r.stdout.strip(), ("ConnectionResetError", "b''"), r.stderr)
        self.n1.wait_log("expected spiffe://cluster.local/ns/remote/sa/far")
        log = [l for l in self.n1.logs().splitlines()
               if "expected spiffe://cluster.local/ns/remote/sa/far" in l][-1]
        self.assertIn("spiffe://cluster.local/ns/backend/sa/api", log)  # both identities named
        srv.kill()

    def test_streams_share_one_connection(self):
        srv = self.b.popen(["/usr/bin/python3", "-c", SINK, "0.0.0.0", "7500", "5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        clients = [self.a.popen(["/usr/bin/python3", "-c", SOURCE, self.b.ip4, "7500", "1000",
                                 "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(5)]
        for c in clients:
            c.communicate(timeout=30)
            self.assertEqual(c.returncode, 0)
        srv.communicate(timeout=30)
        ss = run("ip", "netns", "exec", self.a.netns, "ss", "-tn", "state", "established",
                 f"dst {self.b.ip4}:15008").stdout
        conns = [l for l in ss.splitlines() if ":15008" in l]
        self.assertLessEqual(len(conns), 2, ss)  # at most one per worker, not one per stream


if __name__ == "__main__":
    unittest.main(verbosity=2)
