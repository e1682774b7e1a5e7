"""End to end: operating ambit (issue 6): `ambitctl connections`, Prometheus metrics, readiness,
access-log lines.

Two agents (node1: pod a, default/web; node2: pod b, backend/api, STRICT, port 9001 denied by a
DENY policy). A client in a holds a connection to b open while the test reads both agents'
connection lists; then the bytes it moved must show in both agents' Istio TCP counters and access
logs, exactly. A connection to b:9001 must show as denied, with the denying policy.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (Topology, build_dir, deny_port_policy, run,  # noqa: E402
                      strict_peer_authentication, wait_listening)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"

POLICIES = (strict_peer_authentication("backend") + "---\n" +
            deny_port_policy("backend", "no-9001", 9001))

# Serves `count` connections: reads exactly N bytes (N from an 8-byte header), answers with M
# bytes, then waits for the client to close.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
for _ in range(int(sys.argv[2])):
    c, _ = s.accept()
    c.settimeout(60)
    hdr = b""
    while len(hdr) < 16:
        hdr += c.recv(16 - len(hdr))
    n, m = int(hdr[:8]), int(hdr[8:])
    got = 0
    while got < n:
        got += len(c.recv(min(65536, n - got)))
    c.sendall(b"r" * m)
    while c.recv(65536):
        pass
    c.close()
"""

# Sends a 16-byte header and N bytes, reads M bytes, says "done", and holds the connection open
# until a line arrives on stdin.
CLIENT = r"""
import socket, sys
host, port, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=60)
s.sendall(b"%08d%08d" % (n, m) + b"x" * n)
got = 0
while got < m:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += len(chunk)
print("done", got, flush=True)
sys.stdin.readline()
s.close()
"""

def open_exchange(client_pod, server_pod, port):
    """A server in server_pod and a client in client_pod that sends and reads 10 bytes, then
    holds its connection open. Returns (server, client); close_exchange ends both."""
    srv = server_pod.popen(["/usr/bin/python3", "-c", SERVER, str(port), "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_listening(srv)
    cli = client_pod.popen(["/usr/bin/python3", "-c", CLIENT, server_pod.ip4, str(port), "10",
                            "10"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = cli.stdout.readline()
    if line.split() != ["done", "10"]:
        raise AssertionError(f"client on port {port}: {line!r}")
    return srv, cli


def close_exchange(srv, cli):
    cli.communicate("close\n", timeout=30)
    srv.wait(timeout=30)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, {labels}, value)] of a Prometheus text page; checks every line parses."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def total(samples, name, **want):
    """Sum of the samples of `name` whose labels include `want`."""
    return sum(v for n, l, v in samples
               if n == name and all(l.get(k) == w for k, w in want.items()))


class TelemetryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("m")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (cls.n1, cls.n2):
            t.write_pods(agent, [cls.a, cls.b])
            agent.write_config("policies.yaml", POLICIES)
        cls.n1.start(wait_pods=[cls.a])
        cls.n2.start("--access-log-format", "json", wait_pods=[cls.b])
        cls.n1.wait_log(f"certificate {WEB} valid")
        cls.n2.wait_log(f"certificate {API} valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def ctl(self, agent, *args):
        r = run(AMBITCTL, "--admin-socket", agent.admin_socket, *args, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def wait_ready(self, agent):
        deadline = time.time() + 15
        while True:
            status, body = agent.ready()
            if status == 200 or time.time() > deadline:
                return status, body
            time.sleep(0.1)

    def test_readiness(self):
        for agent in (self.n1, self.n2):
            status, body = self.wait_ready(agent)
            self.assertEqual(status, 200, body)
            self.assertEqual(body, "ready\n")
        status, _ = self.n1.http_get(self.n1.readiness_port, "/nope")
        self.assertEqual(status, 404)

    def test_live_connection_then_counters(self):
        n, m = 123457, 54321
        before1 = parse_metrics(self.n1.metrics())
        before2 = parse_metrics(self.n2.metrics())
        srv = self.b.popen(["/usr/bin/python3", "-c", SERVER, "7000", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            cli = self.a.popen(["/usr/bin/python3", "-c", CLIENT, self.b.ip4, "7000", str(n),
                                str(m)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
            line = cli.stdout.readline()
            self.assertEqual(line.split(), ["done", str(m)], cli.stderr.read() if not line else "")

            # While it is open: both agents list it, with identities proven by mTLS.
            out = json.loads(self.ctl(self.n1, "connections", "-o", "json"))["connections"]
            mine = [c for c in out if c["destination"]["address"] == f"{self.b.ip4}:7000"]
            self.assertEqual(len(mine), 1, out)
            c = mine[0]
            self.assertEqual(c["pod"], "default/a")
            self.assertEqual(c["direction"], "outbound")
            self.assertEqual(c["mode"], "hbone")
            self.assertEqual(c["security"], "mutual_tls")
            self.assertEqual(c["source"]["workload"], "default/a")
            self.assertEqual(c["source"]["identity"], WEB)
            self.assertEqual(c["destination"]["workload"], "backend/b")
            self.assertEqual(c["destination"]["identity"], API)
            self.assertEqual(c["bytesReceived"], n + 16)
            self.assertEqual(c["bytesSent"], m)
            self.assertGreaterEqual(c["ageMs"], 0)

            out = json.loads(self.ctl(self.n2, "connections", "--pod", "backend/b",
                                      "-o", "json"))["connections"]
            inbound = [c for c in out if c["direction"] == "inbound"]
            self.assertEqual(len(inbound), 1, out)
            c = inbound[0]
            self.assertEqual(c["pod"], "backend/b")
            self.assertEqual(c["source"]["identity"], WEB)
            self.assertEqual(c["source"]["workload"], "default/a")
            self.assertEqual(c["destination"]["address"], f"{self.b.ip4}:7000")
            self.assertEqual(c["policy"], "default")
            self.assertEqual(c["bytesReceived"], n + 16)
            self.assertEqual(c["bytesSent"], m)
            # A pod with no connections: an empty list, not an error.
            none = json.loads(self.ctl(self.n2, "connections", "--pod", "default/a", "-o",
                                       "json"))
            self.assertEqual(none["connections"], [])

            table = self.ctl(self.n1, "connections")
            header = table.splitlines()[0]
            for col in ("POD", "DIRECTION", "SOURCE", "DESTINATION", "PEER IDENTITY",
                        "SECURITY", "POLICY", "SENT", "RECEIVED", "AGE"):
                self.assertIn(col, header)
            self.assertIn("mTLS", table)
            self.assertIn(API, table)

            cli.stdin.write("close\n")
            cli.stdin.flush()
            self.assertEqual(cli.wait(timeout=30), 0)
        finally:
            if srv.poll() is None:
                srv.kill()
            srv.wait()

        # Closed: gone from the list, and its bytes are in Istio's counters, exactly.
        deadline = time.time() + 10
        while True:
            out = json.loads(self.ctl(self.n1, "connections", "-o", "json"))["connections"]
            if not [c for c in out if c["destination"]["address"] == f"{self.b.ip4}:7000"]:
                break
            self.assertLess(time.time(), deadline, out)
            time.sleep(0.1)
        src = dict(reporter="source", source_workload="a", source_workload_namespace="default",
                   source_principal=WEB, destination_workload="b",
                   destination_workload_namespace="backend", destination_principal=API,
                   connection_security_policy="mutual_tls", request_protocol="tcp")
        dst = dict(src, reporter="destination")
        for agent, before, labels in ((self.n1, before1, src), (self.n2, before2, dst)):
            deadline = time.time() + 10
            while True:
                after = parse_metrics(agent.metrics())
                delta = {name: total(after, name, **labels) - total(before, name, **labels)
                         for name in ("istio_tcp_connections_opened_total",
                                      "istio_tcp_connections_closed_total",
                                      "istio_tcp_received_bytes_total",
                                      "istio_tcp_sent_bytes_total")}
                if delta["istio_tcp_connections_closed_total"] >= 1 or time.time() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(delta, {"istio_tcp_connections_opened_total": 1,
                                     "istio_tcp_connections_closed_total": 1,
                                     "istio_tcp_received_bytes_total": n + 16,
                                     "istio_tcp_sent_bytes_total": m}, labels)
            self.assertEqual(total(after, "istio_tcp_connections_closed_total",
                                   response_flags="-", **labels),
                             total(before, "istio_tcp_connections_closed_total",
                                   response_flags="-", **labels) + 1)

        # The access log: one line per connection at close, JSON on node2 as configured.
        deadline = time.time() + 10
        while True:
            lines = [json.loads(l.split(" access: ", 1)[1]) for l in self.n2.logs().splitlines()
                     if " access: " in l]
            mine = [l for l in lines if l.get("dst") == f"{self.b.ip4}:7000"]
            if mine or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(mine), 1, lines)
        entry = mine[0]
        self.assertEqual(entry["direction"], "inbound")
        self.assertEqual(entry["src_identity"], WEB)
        self.assertEqual(entry["src_workload"], "default/a")
        self.assertEqual(entry["dst_workload"], "backend/b")
        self.assertEqual(entry["security"], "mutual_tls")
        self.assertEqual(entry["decision"], "allow")
        self.assertEqual(entry["policy"], "default")
        # The same definition as the counters above: received is what the client sent.
        self.assertEqual(entry["bytes_received"], n + 16)
        self.assertEqual(entry["bytes_sent"], m)
        self.assertGreaterEqual(entry["duration_ms"], 0)
        self.assertNotIn("PRIVATE KEY", self.n1.logs() + self.n2.logs())

    def test_denied_connection(self):
        before = parse_metrics(self.n2.metrics())
        r = self.a.run(["/usr/bin/python3", "-c", f"""
import socket
try:
    s = socket.create_connection(("{self.b.ip4}", 9001), timeout=10)
    s.sendall(b"hello")
    print("read", len(s.recv(10)))
except OSError as e:
    print("error", e)
"""])
        # The tunnel accepts the pod's connect locally, then resets it on the 401: the client
        # sees a reset (or an empty read), never data.
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(("read 0", "error")), r.stdout)
        deadline = time.time() + 10
        while True:
            after = parse_metrics(self.n2.metrics())
            denied = (total(after, "istio_tcp_connections_closed_total", reporter="destination",
                            response_flags="DENY", source_principal=WEB)
                      - total(before, "istio_tcp_connections_closed_total",
                              reporter="destination", response_flags="DENY",
                              source_principal=WEB))
            if denied >= 1 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(denied, 1)
        self.assertGreater(total(after, "ambit_policy_decisions_total", result="deny"),
                           total(before, "ambit_policy_decisions_total", result="deny"))
        lines = [json.loads(l.split(" access: ", 1)[1]) for l in self.n2.logs().splitlines()
                 if " access: " in l]
        mine = [l for l in lines if l.get("dst") == f"{self.b.ip4}:9001"]
        self.assertTrue(mine, lines)
        self.assertEqual(mine[-1]["decision"], "deny")
        self.assertEqual(mine[-1]["policy"], "backend/no-9001")
        self.assertEqual(mine[-1]["flags"], "DENY")
        self.assertIn("no-9001", mine[-1]["error"])
        # node1 logs text lines: the client side saw the 401.
        text = [l for l in self.n1.logs().splitlines()
                if " access: " in l and f"dst={self.b.ip4}:9001" in l]
        self.assertTrue(text, self.n1.logs()[-2000:])
        self.assertIn("decision=deny", text[-1])
        self.assertIn("flags=DENY", text[-1])

    def test_log_level_reaches_the_data_plane(self):
        """`ambitctl log` changes the data plane's levels too: access=warn silences node1's
        access log while node2 keeps writing it."""
        self.ctl(self.n1, "log", "--component", "access", "--level", "warn")
        try:
            self.n1.wait_log("log level of access set to warn")
            before1 = self.n1.logs().count(" access: ")
            before2 = self.n2.logs().count(" access: ")
            close_exchange(*open_exchange(self.a, self.b, 7001))
            self.n2.wait_log(" access: ", count=before2 + 1)
            time.sleep(0.3)
            self.assertEqual(self.n1.logs().count(" access: "), before1)
            # A data plane that restarts gets the level again from ambitd.
            started = self.n1.logs().count("started data plane")
            applied = self.n1.logs().count("log level of access set to warn")
            os.kill(self.n1.tunnel_pid(), signal.SIGKILL)
            self.n1.wait_log("started data plane", count=started + 1)
            self.n1.wait_log("log level of access set to warn", count=applied + 1)
            before1 = self.n1.logs().count(" access: ")
            close_exchange(*open_exchange(self.a, self.b, 7002))
            self.n2.wait_log(" access: ", count=before2 + 2)
            time.sleep(0.3)
            self.assertEqual(self.n1.logs().count(" access: "), before1)
        finally:
            self.ctl(self.n1, "log", "--component", "access", "--level", "info")

    def test_metrics_page(self):
        text = self.n1.metrics()
        samples = parse_metrics(text)
        names = {n for n, _, _ in samples}
        for name in ("ambit_dataplane_up", "ambit_dataplane_restarts_total",
                     "ambit_enrolled_pods", "ambit_certificate_expiry_seconds",
                     "ambit_bpf_map_entries", "ambit_bpf_map_max_entries",
                     "ambit_hbone_handshakes_total", "ambit_hbone_handshake_failures_total",
                     "ambit_policy_decisions_total", "ambit_ready"):
            self.assertIn(name, names)
        self.assertIn("# TYPE istio_tcp_connections_opened_total counter", text)
        self.assertEqual(total(samples, "ambit_dataplane_up"), 1)
        self.assertEqual(total(samples, "ambit_enrolled_pods"), 1)
        expiry = total(samples, "ambit_certificate_expiry_seconds", identity=WEB)
        self.assertGreater(expiry, 3600)
        self.assertLessEqual(expiry, 24 * 3600)
        self.assertEqual(total(samples, "ambit_bpf_map_entries", map="ambit_pods"), 1)
        # Every family is declared once, before its samples.
        types = re.findall(r"^# TYPE (\S+) ", text, re.M)
        self.assertEqual(len(types), len(set(types)))
        status, _ = self.n1.http_get(self.n1.metrics_port, "/other")
        self.assertEqual(status, 404)


if __name__ == "__main__":
    unittest.main()


class PoolIdleTest(unittest.TestCase):
    """A pooled HBONE connection closes --hbone-idle-timeout after its last stream ended, never
    while a stream is open, and connection churn does not keep it alive past that."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("pi")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (cls.n1, cls.n2):
            t.write_pods(agent, [cls.a, cls.b])
        cls.n1.start("--hbone-idle-timeout", "1s", wait_pods=[cls.a])
        cls.n2.start(wait_pods=[cls.b])
        cls.n1.wait_log(f"certificate {WEB} valid")
        cls.n2.wait_log(f"certificate {API} valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def hbone_connections(self):
        r = self.a.run(["ss", "-Htn", "state", "established", "( dport = :15008 )"],
                       in_cgroup=False)
        return len([l for l in r.stdout.splitlines() if l.strip()])

    def test_idle_timeout(self):
        held = open_exchange(self.a, self.b, 7200)
        time.sleep(2.5)  # busy for longer than the idle timeout
        self.assertEqual(self.hbone_connections(), 1)
        close_exchange(*held)
        for i in range(5):  # churn: short streams on the same pooled connection
            close_exchange(*open_exchange(self.a, self.b, 7201 + i))
            self.assertEqual(self.hbone_connections(), 1)
        deadline = time.time() + 10
        while self.hbone_connections() != 0:
            self.assertLess(time.time(), deadline, "the idle pooled connection stayed open")
            time.sleep(0.1)
