"""End to end: a pod's life cycle on a node (removed from the configuration, written back).

- ReenrollTest: pod b (node2) serves a peer on node1 that connects every 100 ms over HBONE. b
  is removed from node2's configuration: the data plane lets go of everything it held for b (its
  descriptor count returns to what it was before b was enrolled; nothing listens on b's 15001,
  15006 or 15008 any more). b is written back: it is enrolled again within a few seconds (log and
  `ambitctl workloads`), the peer's traffic reaches it again, and no bind ever failed with
  "Address already in use". Without the data plane's pod_removed answer, the inbound HBONE
  connection of the peer kept b's listeners open for as long as the peer kept sending.
- ReenrollTest.test_replaced_pod_waits_for_release: b is replaced in one write by b2 with the
  same network namespace (and address): b2 waits for the data plane's pod_removed of b instead
  of racing it for the ports, and is enrolled within a second.
- ReenrollTest.test_sender_pod_removed_closes_its_pooled_connections: a (node1), the sending
  side, is removed: its pooled HBONE connection closes at once (not after the 30 s idle
  timeout), nothing listens in it any more, and written back it sends through the mesh again.
"""

import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, fd_count, run, wait_listening  # noqa: E402
from apps import MULTI_SERVER  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
PORT = 7300

# Connects to argv[1]:argv[2] every 100 ms, sends a line, expects it echoed; prints "ok" or
# "fail <why>" per attempt. Each attempt is bounded by a 1 s timeout.
SENDER = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
while True:
    start = time.time()
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.settimeout(1)
        s.sendall(b"ping\n")
        data = s.recv(100)
        s.close()
        print("ok" if data == b"ping\n" else "fail short", flush=True)
    except OSError as e:
        print("fail", type(e).__name__, flush=True)
    time.sleep(max(0.0, 0.1 - (time.time() - start)))
"""


class Sender:
    """The SENDER program in a pod; collects (time, ok) per attempt."""

    def __init__(self, pod, dst_ip, port):
        self.proc = pod.popen(["/usr/bin/python3", "-c", SENDER, dst_ip, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.results = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.results.append((time.time(), line.strip() == "ok"))

    def oks_since(self, since):
        with self.lock:
            return sum(1 for t, ok in self.results if ok and t >= since)

    def attempts_since(self, since):
        with self.lock:
            return sum(1 for t, _ in self.results if t >= since)

    def wait_oks(self, since, count, timeout):
        deadline = time.time() + timeout
        while self.oks_since(since) < count:
            if time.time() > deadline:
                with self.lock:
                    tail = self.results[-10:]
                raise AssertionError(f"fewer than {count} successful attempts within {timeout}s "
                                     f"(last: {tail})")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(predicate, what, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ReenrollTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("lc")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
            t.write_pods(cls.n1, [cls.a, cls.b])
            # node2 starts without b: its data plane's descriptor count then is the count
            # without the pod, which a removal must return to.
            t.write_pods(cls.n2, [cls.a])
            cls.n1.start(wait_pods=[cls.a])
            cls.n2.start()
            cls.n1.wait_log(f"certificate {WEB} valid")
            wait_for(lambda: cls.n2.tunnel_pid() is not None, "node2's data plane", 15)
            cls.n2.wait_log("data plane started")
        except Exception:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def workload_b(self, name="b"):
        r = run(AMBITCTL, "workloads", "-o", "json", "--admin-socket", self.n2.admin_socket,
                check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        for w in json.loads(r.stdout)["workloads"]:
            if w["namespace"] == "backend" and w["name"] == name:
                return w
        return None

    def listening_ports_in_b(self):
        r = self.b.run(["ss", "-Hltn"], in_cgroup=False)
        ports = set()
        for line in r.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                ports.add(int(fields[3].rsplit(":", 1)[1]))
        return ports

    def settled_fd_count(self, pid, want=None, timeout=5):
        """The descriptor count once it stops changing (or equals `want`)."""
        deadline = time.time() + timeout
        last = fd_count(pid)
        while time.time() < deadline:
            time.sleep(0.2)
            now = fd_count(pid)
            if now == want or (want is None and now == last):
                return now
            last = now
        return last

    def ensure_b_enrolled(self):
        """Puts b back on node2 if an earlier test left it out."""
        if (self.workload_b() or {}).get("role") != "enrolled":
            self.topo.write_pods(self.n2, [self.a, self.b])
            wait_for(lambda: (self.workload_b() or {}).get("role") == "enrolled",
                     "b enrolled", 10)

    def serve_b(self):
        """Once b holds its certificate: an echo server in b, and a Sender in a sending to it."""
        self.n2.wait_log(f"certificate {API} valid")
        server = self.b.popen(["/usr/bin/python3", "-c", MULTI_SERVER, str(PORT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(server)
        sender = Sender(self.a, self.b.ip4, PORT)
        return server, sender

    @staticmethod
    def stop_serving(server, sender):
        sender.stop()
        server.kill()
        server.wait(timeout=10)

    def test_removed_pod_with_inbound_traffic_enrolls_again(self):
        # Runs first (unittest's order is by name): node2 has never enrolled b yet.
        self.assertIsNone(self.workload_b(), "b is in node2's configuration already")
        tunnel = self.n2.tunnel_pid()
        baseline = self.settled_fd_count(tunnel)

        self.topo.write_pods(self.n2, [self.a, self.b])
        self.n2.wait_log("enrolled pod backend/b ")
        server, sender = self.serve_b()
        try:
            start = time.time()
            sender.wait_oks(start, 10, timeout=20)
            self.assertGreater(fd_count(tunnel), baseline, "b's listeners are not in the "
                               "data plane")
            self.assertTrue({15001, 15006, 15008} <= self.listening_ports_in_b())

            # Removed while the peer keeps its HBONE connection to b busy.
            self.topo.write_pods(self.n2, [self.a])
            self.n2.wait_log("removed pod backend/b")
            removed_at = time.time()
            self.assertEqual(self.settled_fd_count(tunnel, want=baseline), baseline,
                             "the data plane still holds descriptors of the removed pod")
            self.assertEqual(self.listening_ports_in_b() & {15001, 15006, 15008}, set(),
                             "something still listens in the removed pod")
            self.assertEqual(self.n2.tunnel_pid(), tunnel, "the data plane restarted")

            # Written back: enrolled again at once, and the peer's traffic flows again.
            time.sleep(0.5)
            self.topo.write_pods(self.n2, [self.a, self.b])
            rewritten = time.time()
            self.n2.wait_log("enrolled pod backend/b ", count=2, timeout=5)
            enrolled_in = time.time() - rewritten
            wait_for(lambda: (self.workload_b() or {}).get("role") == "enrolled",
                     "ambitctl workloads to show b enrolled", 5)
            sender.wait_oks(rewritten, 10, timeout=10)
            flowing_in = time.time() - rewritten
            print(f"\nre-enrolled {enrolled_in:.2f}s after the write; 10 successful attempts "
                  f"{flowing_in:.2f}s after it; {sender.attempts_since(removed_at)} attempts "
                  f"since the removal; data plane descriptors {baseline} without b",
                  file=sys.stderr)
            logs = self.n2.logs()
            self.assertNotIn("Address already in use", logs)
            self.assertNotIn("enroll pod backend/b (", logs)  # never failed, never retried
        finally:
            self.stop_serving(server, sender)

    def test_replaced_pod_waits_for_release(self):
        self.ensure_b_enrolled()
        server, sender = self.serve_b()
        try:
            sender.wait_oks(time.time(), 10, timeout=20)
            b2 = self.b.yaml().replace("  name: b\n", "  name: b2\n")
            self.assertIn("name: b2", b2)
            self.n2.write_config("pods.yaml", "---\n".join([self.a.yaml(), b2]))
            rewritten = time.time()
            self.n2.wait_log("enrolled pod backend/b2 ", timeout=5)
            enrolled_in = time.time() - rewritten
            self.assertLess(enrolled_in, 1.5, "b2 waited for the retry timer, not pod_removed")
            wait_for(lambda: (self.workload_b("b2") or {}).get("role") == "enrolled",
                     "ambitctl workloads to show b2 enrolled", 5)
            sender.wait_oks(rewritten, 10, timeout=10)
            print(f"\nb2 enrolled {enrolled_in:.2f}s after the write", file=sys.stderr)
            logs = self.n2.logs()
            self.assertIn("has not yet released the listeners of pod backend/b", logs)
            self.assertNotIn("Address already in use", logs)
        finally:
            self.stop_serving(server, sender)
            self.topo.write_pods(self.n2, [self.a, self.b])

    def hbone_connections_from_a(self):
        r = self.a.run(["ss", "-Htn", "state", "established", "( dport = :15008 )"],
                       in_cgroup=False)
        return len([line for line in r.stdout.splitlines() if line.strip()])

    def test_sender_pod_removed_closes_its_pooled_connections(self):
        self.ensure_b_enrolled()
        server, sender = self.serve_b()
        try:
            sender.wait_oks(time.time(), 10, timeout=20)
            self.assertEqual(self.hbone_connections_from_a(), 1)
            enrolled = self.n1.logs().count("enrolled pod default/a ")
            self.topo.write_pods(self.n1, [self.b])
            self.n1.wait_log("removed pod default/a")
            wait_for(lambda: self.hbone_connections_from_a() == 0,
                     "a's pooled HBONE connection to close", 3)
            ports = set()
            for line in self.a.run(["ss", "-Hltn"], in_cgroup=False).stdout.splitlines():
                ports.add(int(line.split()[3].rsplit(":", 1)[1]))
            self.assertEqual(ports & {15001, 15006, 15008}, set())

            time.sleep(0.5)
            self.topo.write_pods(self.n1, [self.a, self.b])
            rewritten = time.time()
            self.n1.wait_log("enrolled pod default/a ", count=enrolled + 1, timeout=5)
            sender.wait_oks(rewritten, 10, timeout=10)
            wait_for(lambda: self.hbone_connections_from_a() == 1,
                     "a's traffic in HBONE again", 5)
            self.assertNotIn("Address already in use", self.n1.logs())
        finally:
            self.stop_serving(server, sender)
            self.topo.write_pods(self.n1, [self.a, self.b])


if __name__ == "__main__":
    unittest.main()
