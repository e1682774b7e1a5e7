"""End to end: what a client probing the data plane can make it do, and what it cannot.

- No connection is ever delivered to one of ambit's own listeners (15001, 15006, 15008, the
  agent's metrics and readiness ports), plaintext or HBONE, IPv4 or IPv6: it is refused before
  any upstream socket exists, and the inbound listeners are bound to loopback, so the data
  plane's own delivery could not reach them anyway. One client connection costs at most one
  upstream attempt; the tunnel's memory and descriptors do not grow.
- A pod that dials its own address still gets through (HBONE to itself over lo).
- A CONNECT (or plaintext) to a port nothing listens on fails at once, not after SYN retries.
- Rapid reset (open a stream, RST_STREAM it, again) is stopped with GOAWAY(ENHANCE_YOUR_CALM)
  after a bounded number of upstream connects.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import H2_CLIENT  # noqa: E402
from topology import Topology, run, wait_listening  # noqa: E402
import svid  # noqa: E402

IDENTITY_C = "spiffe://cluster.local/ns/default/sa/plain"
BURST, RATE = 50, 10  # the agent's --hbone-failed-stream-burst / -rate

# Connects, sends a line, reports how the connection ended and how long that took.
PROBE = r"""
import json, socket, sys, time
t0 = time.time()
out = {}
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.sendall(b"ping\n")
    data = s.recv(100)
    out["result"] = "data" if data else "eof"
except ConnectionResetError:
    out["result"] = "reset"
except ConnectionRefusedError:
    out["result"] = "refused"
except (socket.timeout, TimeoutError):
    out["result"] = "timeout"
out["seconds"] = time.time() - t0
print(json.dumps(out), flush=True)
"""

# Echo server on one port, dual-stack; prints one line per accepted connection.
ECHO = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
print("listening", flush=True)
def serve(c):
    c.settimeout(10)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    c.close()
while True:
    c, peer = s.accept()
    print("accepted", peer[0], flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Client of a pod's own address: sends a line, expects it back.
SELF_CLIENT = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"hello self\n")
got = b""
while not got.endswith(b"\n"):
    d = s.recv(100)
    if not d:
        break
    got += d
print(json.dumps({"reply": got.decode()}), flush=True)
"""

# One CONNECT with a real HTTP/2 client (Python ssl + h2) holding an SVID; prints the status and
# the "ambit-error" header of the answer.
ONE_CONNECT = r"""
import json, os, socket, ssl, sys
import h2.config, h2.connection, h2.events
certdir, host, authority = sys.argv[1], sys.argv[2], sys.argv[3]
""" + H2_CLIENT + r"""sid = conn.get_next_available_stream_id()
conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
tls.sendall(conn.data_to_send())
out = {}
while "status" not in out:
    data = tls.recv(65536)
    if not data:
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.ResponseReceived):
            headers = {k.decode(): v.decode() for k, v in ev.headers}
            out["status"] = int(headers[":status"])
            out["error"] = headers.get("ambit-error", "")
    tls.sendall(conn.data_to_send())
print(json.dumps(out), flush=True)
"""

# Rapid reset with a real HTTP/2 client (Python ssl + h2) holding an SVID: opens CONNECT streams
# and resets each at once, in batches, until the server ends the connection. Prints the GOAWAY's
# error code and how many streams went out.
RAPID_RESET = r"""
import json, os, socket, ssl, sys, time
import h2.config, h2.connection, h2.events, h2.errors
certdir, host, authority, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
""" + H2_CLIENT + r"""tls.sendall(conn.data_to_send())
out = {"sent": 0, "goaway": None, "closed": False}
def pump(timeout):
    tls.settimeout(timeout)
    try:
        data = tls.recv(65536)
    except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
        return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        out["closed"] = True
        return False
    if not data:
        out["closed"] = True
        return False
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.ConnectionTerminated):
            out["goaway"] = int(ev.error_code)
    try:
        tls.sendall(conn.data_to_send())
    except OSError:
        pass  # the server may have closed its side already: what it sent is still to be read
    return out["goaway"] is None
pump(2)  # the server's SETTINGS, acknowledged
deadline = time.time() + 20
while out["sent"] < total and out["goaway"] is None and not out["closed"] and time.time() < deadline:
    for _ in range(20):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        out["sent"] += 1
    try:
        tls.sendall(conn.data_to_send())
    except OSError:
        # Writing failed because the server ended the connection; its GOAWAY, sent before it
        # closed, is still in the receive queue: the loop below reads it.
        break
    if not pump(0.001):
        break
while out["goaway"] is None and not out["closed"] and time.time() < deadline:
    if not pump(1):
        break
print(json.dumps(out), flush=True)
"""


def tunnel_usage(pid):
    """(resident KiB, open descriptors) of the data plane."""
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def bracket(ip):
    return f"[{ip}]" if ":" in ip else ip


class AbuseTest(unittest.TestCase):
    """b is enrolled (PERMISSIVE, Istio's default); c is not enrolled and plays the attacker,
    in plaintext or over HBONE with an SVID of its own."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("x")
        cls.topo.__enter__()
        t = cls.topo
        cls.b = t.add_pod("b", namespace="backend", service_account="api")
        cls.c = t.add_pod("c", namespace="default", service_account="plain")
        tokens = os.path.join(t.workdir, "tokens")
        with open(tokens, "w") as f:
            f.write("t1 node1\n")
        cls.n1 = t.add_agent("node1")
        plain = cls.c.yaml().replace(f"    ambit.dev/netns: {cls.c.netns_path}\n", "")
        cls.n1.write_config("pods.yaml", cls.b.yaml() + "---\n" + plain)
        # A smaller rapid-reset budget than the default (200, then 100/s), so the test also shows
        # the flags reach the data plane.
        cls.n1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens,
                     "--hbone-failed-stream-burst", str(BURST),
                     "--hbone-failed-stream-rate", str(RATE), wait_pods=[cls.b])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")
        cls.certdir = svid.issue(cls.n1, IDENTITY_C, "t1", tempfile.mkdtemp(dir=t.workdir))
        cls.echo = cls.b.popen(["/usr/bin/python3", "-u", "-c", ECHO, "::", "7000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(cls.echo)

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def metric(self, name):
        """The value of one sample of the agent's /metrics (0 when absent)."""
        for line in self.n1.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0

    def own_ports(self):
        return [15001, 15006, 15008, self.n1.metrics_port, self.n1.readiness_port]

    def probe(self, ip, port, timeout=5):
        r = self.c.python(PROBE, ip, port, timeout, in_cgroup=False, timeout=timeout + 10)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def hbone(self, ip, authority):
        t0 = time.time()
        r = self.c.python(ONE_CONNECT, self.certdir, ip, authority, in_cgroup=False, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        out["seconds"] = time.time() - t0
        return out

    def assert_tunnel_unchanged(self, before, what):
        # Descriptors come back to where they were (a delivery in flight may take a moment to
        # close); memory does not run away (a self-loop grew it by more than a gigabyte).
        deadline = time.time() + 5
        while True:
            rss, fds = tunnel_usage(self.n1.tunnel_pid())
            if fds <= before[1] or time.time() > deadline:
                break
            time.sleep(0.1)
        print(f"{what}: data plane RSS {before[0]} -> {rss} KiB, descriptors {before[1]} -> "
              f"{fds}", file=sys.stderr)
        self.assertLessEqual(fds, before[1], f"{what}: data-plane descriptors grew")
        self.assertLess(rss - before[0], 8 * 1024, f"{what}: data-plane RSS grew by "
                        f"{rss - before[0]} KiB")

    def test_inbound_listeners_are_bound_to_loopback_only(self):
        listening = run("ip", "netns", "exec", self.b.netns, "ss", "-Hltn").stdout
        local = {line.split()[3] for line in listening.splitlines() if line.strip()}
        for port in (15006, 15008):
            self.assertIn(f"127.0.0.1:{port}", local)
            self.assertIn(f"[::1]:{port}", local)
            for wildcard in (f"*:{port}", f"0.0.0.0:{port}", f"[::]:{port}"):
                self.assertNotIn(wildcard, local, listening)
        # So an ordinary connect to the pod address finds nothing there; only sk_lookup does.

    def test_plaintext_to_own_ports_is_refused_without_upstream(self):
        pid = self.n1.tunnel_pid()
        before = tunnel_usage(pid)
        for ip in (self.b.ip4, self.b.ip6):
            for port in self.own_ports():
                if port == 15008:
                    continue  # plaintext to 15008 is a failed TLS handshake, tested below
                needle = f"dst={bracket(ip)}:{port} mode=plaintext"
                seen = self.n1.logs().count(needle)
                r = self.probe(ip, port)
                self.assertIn(r["result"], ("reset", "eof"), f"{ip}:{port}: {r}")
                self.assertLess(r["seconds"], 2, f"{ip}:{port}: {r}")
                self.n1.wait_log(f"{needle}: refused: port {port} is one of ambit's own "
                                 "listeners", timeout=5)
                time.sleep(0.3)
                # One client connection, one line: no delivery came back in as a new one.
                self.assertEqual(self.n1.logs().count(needle) - seen, 1,
                                 f"{ip}:{port}: more than one inbound connection")
        self.assertEqual(self.n1.tunnel_pid(), pid, "the data plane restarted")
        self.assert_tunnel_unchanged(before, "plaintext to own ports")

    def test_hbone_connect_to_own_ports_is_503_without_upstream(self):
        pid = self.n1.tunnel_pid()
        before = tunnel_usage(pid)
        for ip in (self.b.ip4, self.b.ip6):
            for port in self.own_ports():
                authority = f"{bracket(ip)}:{port}"
                # The tunnel's own lines ("dst=... mode=..."; the access log's differ).
                seen = self.n1.logs().count(f"dst={authority} mode=")
                out = self.hbone(ip, authority)
                self.assertEqual(out.get("status"), 503, f"CONNECT {authority}: {out}")
                self.assertEqual(out["error"], f"refused: port {port} is one of ambit's own "
                                 "listeners, never a delivery target")
                self.assertLess(out["seconds"], 5, f"CONNECT {authority}: {out}")
                self.n1.wait_log(f"dst={authority} mode=mtls peer={IDENTITY_C}: refused: port "
                                 f"{port} is one of ambit's own listeners, never a delivery "
                                 "target; answered 503", timeout=5)
                time.sleep(0.3)
                # Only the refusal: no plaintext or HBONE connection came back from a delivery.
                self.assertEqual(self.n1.logs().count(f"dst={authority} mode=") - seen, 1,
                                 f"CONNECT {authority}: more than one connection")
        self.assertEqual(self.n1.tunnel_pid(), pid, "the data plane restarted")
        self.assert_tunnel_unchanged(before, "HBONE CONNECT to own ports")

    def test_pod_dialling_its_own_address_gets_through(self):
        for ip in (self.b.ip4, self.b.ip6):
            r = self.b.python(SELF_CLIENT, ip, 7000, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr + self.n1.logs()[-3000:])
            self.assertEqual(json.loads(r.stdout)["reply"], "hello self\n")
            # Through the tunnel: outbound redirect, then HBONE to its own 15008 and delivery.
            self.n1.wait_log(f"outbound pod=backend/b src=")
            self.n1.wait_log(f"dst={bracket(ip)}:7000 mode=mtls "
                             f"peer=spiffe://cluster.local/ns/backend/sa/api allowed_by=")

    def test_connect_to_port_without_listener_fails_at_once(self):
        # 7001: nothing listens; 7002: an application bound to loopback only.
        local_only = self.b.popen(["/usr/bin/python3", "-u", "-c", ECHO, "::1", "7002"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(local_only)
        for ip in (self.b.ip4, self.b.ip6):
            for port in (7001, 7002):
                out = self.hbone(ip, f"{bracket(ip)}:{port}")
                self.assertEqual(out.get("status"), 503, f"CONNECT {ip}:{port}: {out}")
                self.assertEqual(out["error"], "application connect failed: Connection refused")
                self.assertLess(out["seconds"], 2, f"CONNECT {ip}:{port} took too long")
                r = self.probe(ip, port, timeout=10)
                self.assertIn(r["result"], ("reset", "eof"), f"plaintext {ip}:{port}: {r}")
                self.assertLess(r["seconds"], 2, f"plaintext {ip}:{port}: {r}")
        local_only.kill()

    def test_rapid_reset_gets_enhance_your_calm(self):
        sink = self.b.popen(["/usr/bin/python3", "-u", "-c", ECHO, "::", "7003"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(sink)
        authority = f"{self.b.ip4}:7003"
        attempt = re.compile(rf"dst={re.escape(authority)} mode=mtls peer={IDENTITY_C} "
                             r"allowed_by=")
        before = len(attempt.findall(self.n1.logs()))
        opened_before = self.metric("ambit_hbone_streams_opened_total")
        limited_before = self.metric('ambit_hbone_errors_total{reason="stream_rate_limited"}')
        t0 = time.time()
        r = self.c.python(RAPID_RESET, self.certdir, self.b.ip4, authority, 5000,
                          in_cgroup=False, timeout=60)
        elapsed = time.time() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["goaway"], 0xb, f"expected GOAWAY(ENHANCE_YOUR_CALM): {out}")
        self.n1.wait_log(f"sent GOAWAY(ENHANCE_YOUR_CALM): more than {BURST} CONNECT streams")
        time.sleep(0.5)
        attempts = len(attempt.findall(self.n1.logs())) - before
        # BURST failing streams, plus RATE per second of the attack; without a limit it was
        # about 1 000 per TLS connection.
        bound = BURST + int(RATE * elapsed) + 1
        self.assertGreater(attempts, 0, "the attack never reached the tunnel")
        self.assertLessEqual(attempts, bound, f"{attempts} upstream connects in {elapsed:.1f}s")
        self.assertLess(out["sent"], 5000, out)
        # The data plane's own count of CONNECTs handed on towards an upstream connect.
        opened = self.metric("ambit_hbone_streams_opened_total") - opened_before
        self.assertLessEqual(opened, bound, f"{opened} streams opened in {elapsed:.1f}s")
        self.assertEqual(
            self.metric('ambit_hbone_errors_total{reason="stream_rate_limited"}') - limited_before,
            1)
        sink.kill()
        accepted = sink.communicate(timeout=10)[0].count("accepted")
        self.assertLessEqual(accepted, attempts)
        print(f"rapid reset: {out['sent']} streams sent in {elapsed:.2f}s, {attempts} upstream "
              f"connects, {accepted} accepted by the application", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
