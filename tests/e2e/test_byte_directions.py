"""End to end: sent and received mean the same thing everywhere ambit counts bytes.

Istio's definition, for both reporters: received is what came from the client (the request
direction), sent what went back to it. A client in pod a (node1) sends a known number of bytes
to a server in pod b (node2), which answers with a different known number. For the source
reporter (node1, text access log) and the destination reporter (node2, JSON access log), the
access log's bytes_received / bytes_sent, `ambitctl connections`' bytesReceived / bytesSent and
the deltas of istio_tcp_received_bytes_total / istio_tcp_sent_bytes_total must be exactly those
numbers. Before they disagreed: the access log counted from the client's side, the metrics from
the server's.
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, run, wait_listening  # noqa: E402
from test_telemetry import CLIENT, SERVER, parse_metrics, total  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
PORT = 7100
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


class ByteDirectionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("bd")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (cls.n1, cls.n2):
            t.write_pods(agent, [cls.a, cls.b])
        cls.n1.start("--access-log-format", "text", wait_pods=[cls.a])
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

    def access_line(self, agent, parse):
        """The one access-log line of the test's connection, as a dict."""
        deadline = time.time() + 10
        while True:
            lines = [parse(l.split(" access: ", 1)[1]) for l in agent.logs().splitlines()
                     if " access: " in l]
            mine = [l for l in lines if l.get("dst") == f"{self.b.ip4}:{PORT}"]
            if mine or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(mine), 1, lines)
        return mine[0]

    def test_access_log_connections_and_metrics_agree_for_both_reporters(self):
        n, m = 70001, 3333  # request payload and answer: different, so a swap cannot pass
        request = n + 16  # the client's 16-byte header
        before = {a: parse_metrics(a.metrics()) for a in (self.n1, self.n2)}
        srv = self.b.popen(["/usr/bin/python3", "-c", SERVER, str(PORT), "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            cli = self.a.popen(["/usr/bin/python3", "-c", CLIENT, self.b.ip4, str(PORT), str(n),
                                str(m)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
            line = cli.stdout.readline()
            self.assertEqual(line.split(), ["done", str(m)], cli.stderr.read() if not line else "")
            # While open: each node's connection list, from its own side.
            for agent, direction in ((self.n1, "outbound"), (self.n2, "inbound")):
                conns = json.loads(self.ctl(agent, "connections", "-o", "json"))["connections"]
                mine = [c for c in conns
                        if c["destination"]["address"] == f"{self.b.ip4}:{PORT}"
                        and c["direction"] == direction]
                self.assertEqual(len(mine), 1, conns)
                self.assertEqual((mine[0]["bytesReceived"], mine[0]["bytesSent"]), (request, m),
                                 f"{direction}: {mine[0]}")
            cli.communicate("close\n", timeout=30)
            self.assertEqual(cli.returncode, 0)
            srv.wait(timeout=30)
        finally:
            for p in (srv,):
                if p.poll() is None:
                    p.kill()
                    p.wait()

        def text_fields(s):
            return {k: v.strip('"') for k, v in FIELD.findall(s)}

        for agent, reporter, parse in ((self.n1, "source", text_fields),
                                       (self.n2, "destination", json.loads)):
            labels = dict(reporter=reporter, source_principal=WEB, destination_principal=API)
            deadline = time.time() + 10
            while True:
                after = parse_metrics(agent.metrics())
                delta = {k: total(after, f"istio_tcp_{k}_bytes_total", **labels)
                         - total(before[agent], f"istio_tcp_{k}_bytes_total", **labels)
                         for k in ("received", "sent")}
                if delta["sent"] >= m or time.time() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(delta, {"received": request, "sent": m}, reporter)
            entry = self.access_line(agent, parse)
            self.assertEqual((int(entry["bytes_received"]), int(entry["bytes_sent"])),
                             (delta["received"], delta["sent"]),
                             f"{reporter} reporter: the access log disagrees with the metrics: "
                             f"{entry}")


if __name__ == "__main__":
    unittest.main()
