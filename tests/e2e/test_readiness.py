"""End to end: readiness tells the truth. A stalled data plane (SIGSTOP), a pod that cannot be
enrolled, and capture programs detached or unpinned underneath ambitd each turn /healthz/ready to
503 with a reason, and back to 200 once the cause is gone.

Two simulated nodes on one bridge (tests/e2e/topology.py via test_faults.TwoNodes), real ambitd +
ambit-tunnel, real BPF, real mTLS. Every wait is bounded; everything is torn down on failure too.
"""

import ctypes
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import run  # noqa: E402
from test_faults import TwoNodes  # noqa: E402

# Short enough to keep the test quick, long enough that a loaded CI machine does not trip it.
DEADLINE_S = 2
AGENT_ARGS = ("--dataplane-heartbeat-interval", "500ms",
              "--dataplane-heartbeat-deadline", f"{DEADLINE_S}s")


def metric(agent, name):
    for line in agent.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def thread_state(pid, tid):
    """The scheduler state letter of one thread (R, S, t for stopped by a tracer, ...)."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_ready(agent, want_status, needle=None, timeout=15):
    """Polls /healthz/ready until it answers want_status (and its body holds needle); returns
    (seconds waited, body)."""
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        try:
            last = agent.ready()
        except OSError as e:
            last = (None, str(e))
        if last[0] == want_status and (needle is None or needle in last[1]):
            return time.time() - t0, last[1]
        time.sleep(0.1)
    raise AssertionError(f"readiness of {agent.node} not {want_status} with {needle!r} within "
                         f"{timeout}s; last answer: {last}\n{agent.logs()[-2000:]}")


class ReadinessTest(unittest.TestCase):

    def setUp(self):
        self.nodes = TwoNodes("r", agent_args=AGENT_ARGS)
        self.addCleanup(self.nodes.close)
        wait_ready(self.nodes.n1, 200, timeout=20)
        wait_ready(self.nodes.n2, 200, timeout=20)

    def test_stalled_data_plane_is_not_ready_until_it_answers(self):
        n = self.nodes
        port = 7900
        n.echo_server(port)
        self.assertTrue(n.probe(port)["ok"])
        tunnel = n.n2.tunnel_pid()
        self.assertIsNotNone(tunnel)
        self.assertEqual(metric(n.n2, "ambit_dataplane_responsive"), 1)
        os.kill(tunnel, signal.SIGSTOP)
        try:
            # Ready stays true until the deadline; then 503 naming the heartbeat, well before
            # the 8 s pause ends.
            waited, body = wait_ready(n.n2, 503, "has not answered a heartbeat", timeout=8)
            print(f"\nreadiness 503 {waited:.2f}s after SIGSTOP: {body.strip()}")
            self.assertLess(waited, DEADLINE_S + 2.0, body)
            self.assertIn(f"(deadline {DEADLINE_S}s)", body)
            self.assertEqual(metric(n.n2, "ambit_dataplane_responsive"), 0)
            self.assertEqual(metric(n.n2, "ambit_ready"), 0)
            n.n2.wait_log("has not answered a heartbeat for", 5)
            # The other node's data plane is not the one stalled.
            self.assertEqual(n.n1.ready()[0], 200, n.n1.ready())
            time.sleep(max(0.0, 8.0 - waited))
        finally:
            os.kill(tunnel, signal.SIGCONT)
        waited, _ = wait_ready(n.n2, 200, timeout=10)
        print(f"readiness 200 again {waited:.2f}s after SIGCONT")
        self.assertLess(waited, 3.0)
        n.n2.wait_log("answers heartbeats again after", 5)
        self.assertEqual(metric(n.n2, "ambit_dataplane_responsive"), 1)
        # Reported, never restarted: the same process serves, and traffic works.
        self.assertEqual(n.n2.tunnel_pid(), tunnel)
        self.assertNotIn("restart #", n.n2.logs())
        self.assertTrue(n.probe(port)["ok"])

    def test_one_hung_worker_makes_the_heartbeat_late(self):
        n = self.nodes
        port = 7904
        n.echo_server(port)
        tunnel = n.n2.tunnel_pid()
        tids = [int(t) for t in os.listdir(f"/proc/{tunnel}/task")
                if open(f"/proc/{tunnel}/task/{t}/comm").read().strip() == "worker-1"]
        self.assertEqual(len(tids), 1, "no data-plane thread named worker-1")
        tid = tids[0]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        # Only that thread stops (PTRACE_INTERRUPT of a seized thread): the data plane's control
        # thread and its other worker run on, as with a worker stuck in a long computation.
        PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
        self.assertEqual(libc.ptrace(PTRACE_SEIZE, tid, None, None), 0, ctypes.get_errno())
        try:
            self.assertEqual(libc.ptrace(PTRACE_INTERRUPT, tid, None, None), 0)
            os.waitpid(tid, 0x40000000)  # __WALL: until it is stopped
            self.assertEqual(thread_state(tunnel, tid), "t", "worker-1 is not stopped")
            waited, body = wait_ready(n.n2, 503, "has not answered a heartbeat", timeout=8)
            print(f"\nreadiness 503 {waited:.2f}s after worker-1 stopped: {body.strip()}")
            self.assertLess(waited, DEADLINE_S + 2.0, body)
            # Only the worker is stopped: the control thread (the main thread) still runs.
            self.assertIn(thread_state(tunnel, tunnel), ("S", "R"))
        finally:
            libc.ptrace(PTRACE_DETACH, tid, None, None)
        waited, _ = wait_ready(n.n2, 200, timeout=10)
        print(f"readiness 200 again {waited:.2f}s after worker-1 resumed")
        self.assertEqual(n.n2.tunnel_pid(), tunnel)
        self.assertTrue(n.probe(port)["ok"])

    def test_pod_that_cannot_be_enrolled_is_named(self):
        n = self.nodes
        t = n.topo
        # A pod whose network namespace is gone before ambitd could enroll it.
        c = t.add_pod("c", namespace="default", service_account="web", node="node1")
        run("ip", "netns", "del", c.netns)
        t.write_pods(n.n1, [n.a, n.b, c])
        n.n1.wait_log("enroll pod default/c", 10)
        # Within the grace it is only retried; past it, readiness names the pod and the reason.
        waited, body = wait_ready(n.n1, 503, "pod default/c cannot be enrolled", timeout=15)
        print(f"\n503 {waited:.2f}s after the pod appeared: {body.strip()}")
        self.assertIn(c.netns_path, body)
        self.assertEqual(n.n2.ready()[0], 200)
        # The namespace appears: the retry enrolls it and readiness is true again.
        run("ip", "netns", "add", c.netns)
        run("ip", "-n", c.netns, "link", "set", "lo", "up")
        n.n1.wait_log("enrolled pod default/c ", 10)
        wait_ready(n.n1, 200, timeout=15)

    def pin_root(self, agent):
        return agent.pin_root

    def test_unpinned_sk_lookup_link_is_not_ready(self):
        n = self.nodes
        port = 7901
        n.echo_server(port)
        pods = os.path.join(self.pin_root(n.n2), "pods")
        pins = os.listdir(pods)
        self.assertEqual(len(pins), 1, pins)
        # The pin is the only holder of the pod's sk_lookup link: removing it detaches it.
        os.unlink(os.path.join(pods, pins[0]))
        waited, body = wait_ready(n.n2, 503, "pod backend/b: sk_lookup link pin", timeout=5)
        print(f"\n503 {waited:.2f}s after the unpin: {body.strip()}")
        self.assertIn("inbound is not captured", body)
        n.n2.wait_log("capture check: pod backend/b", 5)
        # A restarted ambitd attaches the link again, and readiness says so.
        n.n2.stop()
        n.n2.start(*AGENT_ARGS, wait_pods=[n.b])
        wait_ready(n.n2, 200, timeout=20)
        self.assertEqual(len(os.listdir(pods)), 1)
        self.assertTrue(n.probe(port)["ok"])

    def test_detached_sk_lookup_link_is_not_ready(self):
        n = self.nodes
        port = 7903
        n.echo_server(port)
        pods = os.path.join(self.pin_root(n.n2), "pods")
        pin = os.path.join(pods, os.listdir(pods)[0])
        link = json.loads(run("bpftool", "-j", "link", "show", "pinned", pin).stdout)
        run("bpftool", "link", "detach", "id", str(link["id"]))
        waited, body = wait_ready(n.n2, 503, "is no longer attached to the pod's network namespace",
                                  timeout=5)
        print(f"\n503 {waited:.2f}s after the detach: {body.strip()}")
        self.assertIn("pod backend/b: sk_lookup link id", body)
        # A restarted ambitd attaches the pod's link again in place of the dead one.
        n.n2.stop()
        n.n2.start(*AGENT_ARGS, wait_pods=[n.b])
        n.n2.wait_log(f"pinned link {pin} was detached from the pod's netns; attaching again", 10)
        wait_ready(n.n2, 200, timeout=20)
        self.assertTrue(n.probe(port)["ok"])

    def test_detached_cgroup_program_is_not_ready(self):
        n = self.nodes
        pin = os.path.join(self.pin_root(n.n1), "links", "connect4")
        link = json.loads(run("bpftool", "-j", "link", "show", "pinned", pin).stdout)
        run("bpftool", "link", "detach", "id", str(link["id"]))
        waited, body = wait_ready(n.n1, 503, "cgroup program connect4 is no longer attached",
                                  timeout=5)
        print(f"\n503 {waited:.2f}s after the detach: {body.strip()}")
        self.assertIn(n.n1.cgroup, body)
        n.n1.wait_log("capture check: cgroup program connect4", 5)
        self.assertEqual(n.n2.ready()[0], 200)
        # A restarted ambitd finds the dead link pinned and attaches the program again instead
        # of failing to start; capture and readiness are back.
        port = 7902
        n.echo_server(port)
        n.n1.stop()
        n.n1.start(*AGENT_ARGS, wait_pods=[n.a])
        n.n1.wait_log(f"pinned link {pin} was detached from its cgroup; attaching again", 10)
        wait_ready(n.n1, 200, timeout=20)
        progs = json.loads(run("bpftool", "-j", "cgroup", "show", n.n1.cgroup).stdout)
        self.assertEqual(sorted(p["name"] for p in progs).count("ambit_connect4"), 1, progs)
        self.assertEqual(len(progs), 5, progs)
        self.assertTrue(n.probe(port)["ok"])

    def test_destroyed_listener_is_not_ready(self):
        n = self.nodes
        # The kernel ends the pod's plaintext-inbound listeners (sock_destroy, as `ss -K` does):
        # the data plane still holds their descriptors, but they take no connection any more.
        r = run("ip", "netns", "exec", n.b.netns, "ss", "-K", "-t", "state", "listening",
                "sport", "=", ":15006", check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        waited, body = wait_ready(n.n2, 503, "pod backend/b: only 4 of its 6 listeners", timeout=5)
        print(f"\n503 {waited:.2f}s after the listeners were destroyed: {body.strip()}")
        self.assertEqual(n.n1.ready()[0], 200)

    def test_missing_link_pin_is_not_ready(self):
        n = self.nodes
        pin = os.path.join(self.pin_root(n.n1), "links", "sockops")
        # ambitd still holds the link, so capture goes on, but the next start would not find it.
        os.unlink(pin)
        _, body = wait_ready(n.n1, 503, f"pin {pin} is gone", timeout=5)
        self.assertIn("the next ambitd start would not find this capture", body)


if __name__ == "__main__":
    unittest.main()
