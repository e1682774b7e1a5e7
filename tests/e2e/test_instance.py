"""End to end: one agent per instance, and failure paths that leave nothing behind.

Everything an instance owns in the kernel (pins under /sys/fs/bpf/ambit/<instance>, the cgroup
links, the pods' sk_lookup links) is shared by every ambitd started with that --instance, whatever
its --run-dir. A second agent must be refused before it touches any of it, naming the PID of the
agent that holds the instance; `--cleanup` must not pull the capture from under a running agent
unless forced; a start that fails must not leave pins or a run directory that no agent manages;
and `--cleanup` reports only what it actually found.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import MULTI_SERVER  # noqa: E402
from topology import (ABI_VERSION, Topology, free_port, run,  # noqa: E402
                      strict_peer_authentication)

# Plaintext from a pod outside the mesh: ok when the echo came back, else the error seen.
PROBE = r"""
import json, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(b"ping\n")
    data = s.recv(100)
    print(json.dumps({"ok": data == b"ping\n", "data": data.decode()}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__}))
"""

PORT = 9000


def pin_root(instance):
    return f"/sys/fs/bpf/ambit/{instance}"


def pins(instance):
    """Every pinned object of the instance, as paths relative to its pin root."""
    root = pin_root(instance)
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def with_flag(argv, flag, value):
    """argv with flag's value replaced (or flag appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def ambitd(argv, timeout=30):
    """Runs ambitd to its end; (returncode, stdout + stderr)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def tunnel_pids(run_dir):
    out = run("pgrep", "-f", "--", f"--control-socket {run_dir}/dataplane.sock",
              check=False).stdout.split()
    return [int(p) for p in out]


class InstanceLockTest(unittest.TestCase):
    """A running agent in STRICT mode, and what may and may not happen to its instance."""

    def setUp(self):
        self.topo = Topology("i")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        self.b = self.topo.add_pod("b", namespace="backend", service_account="api")
        self.c = self.topo.add_pod("c", namespace="default")  # not enrolled: sends plaintext
        self.agent = self.topo.add_agent()
        self.topo.write_pods(self.agent, [self.b])
        self.agent.start(wait_pods=[self.b])
        self.server = self.b.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, str(PORT)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.assertIn(b"listening", os.read(self.server.stdout.fileno(), 100))
        # PERMISSIVE first: the probe can succeed, so its failure under STRICT means something.
        self.wait_probe(True)
        self.agent.write_config("strict.yaml", strict_peer_authentication("backend"))
        self.wait_probe(False)
        self.pins_before = pins(self.agent.instance)
        self.assertIn(f"v{ABI_VERSION}/links/connect4", self.pins_before)
        self.assertTrue(any(p.startswith(f"v{ABI_VERSION}/pods/") for p in self.pins_before),
                        self.pins_before)

    def probe(self):
        r = self.c.python(PROBE, self.b.ip4, PORT, in_cgroup=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def wait_probe(self, ok, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.probe()["ok"] == ok:
                return
            time.sleep(0.2)
        raise AssertionError(f"plaintext to port {PORT} never became "
                             f"{'delivered' if ok else 'refused'}:\n{self.agent.logs()[-3000:]}")

    def assert_strict_still_enforced(self):
        # Several probes over a few seconds: a removed capture shows at once, and stays.
        for _ in range(5):
            result = self.probe()
            self.assertFalse(result["ok"], f"plaintext from a non-mesh pod reached the STRICT "
                                           f"pod: {result}\n{self.agent.logs()[-3000:]}")
            time.sleep(0.3)
        self.assertIsNone(self.agent.proc.poll(), "the first agent exited")
        self.assertEqual(self.agent.ready()[0], 200, self.agent.ready())
        self.assertEqual(pins(self.agent.instance), self.pins_before)
        self.assertNotIn("removed stale enrollment", self.agent.logs())

    def second_agent_argv(self, run_dir):
        config_dir = os.path.join(self.topo.workdir, "config-second")  # knows no pods
        os.makedirs(config_dir, exist_ok=True)
        argv = self.agent.argv()
        argv = with_flag(argv, "--config-dir", config_dir)
        argv = with_flag(argv, "--run-dir", run_dir)
        argv = with_flag(argv, "--metrics-address", f"127.0.0.1:{free_port()}")
        return with_flag(argv, "--readiness-address", f"127.0.0.1:{free_port()}")

    def test_second_agent_with_other_run_dir_is_refused(self):
        run_dir = os.path.join(self.topo.workdir, "run-second")
        rc, out = ambitd(self.second_agent_argv(run_dir))
        self.assertNotEqual(rc, 0, out)
        self.assertIn(f"in use by pid {self.agent.proc.pid}", out)
        # Refused before it touched anything: no run directory, no data plane, no enrollment.
        self.assertFalse(os.path.exists(run_dir), os.listdir(run_dir) if os.path.exists(run_dir)
                         else "")
        self.assertEqual(tunnel_pids(run_dir), [])
        self.assertNotIn("removed stale enrollment", out)
        self.assertNotIn("attached redirect programs", out)
        self.assert_strict_still_enforced()

    def test_second_agent_with_same_run_dir_is_refused(self):
        tunnel = self.agent.tunnel_pid()
        self.assertIsNotNone(tunnel)
        rc, out = ambitd(self.second_agent_argv(self.agent.run_dir))
        self.assertNotEqual(rc, 0, out)
        self.assertIn(f"in use by pid {self.agent.proc.pid}", out)
        self.assertEqual(self.agent.tunnel_pid(), tunnel, "the data plane was taken over")
        self.assertTrue(os.path.exists(self.agent.admin_socket))
        self.assert_strict_still_enforced()

    def test_cleanup_refused_while_running_unless_forced(self):
        rc, out = ambitd(self.agent.argv("--cleanup"))
        self.assertNotEqual(rc, 0, out)
        self.assertIn(f"in use by pid {self.agent.proc.pid}", out)
        self.assertIn("--force", out)
        self.assertTrue(os.path.exists(self.agent.run_dir))
        self.assert_strict_still_enforced()

        tunnel = self.agent.tunnel_pid()
        rc, out = ambitd(self.agent.argv("--cleanup", "--force"))
        self.assertEqual(rc, 0, out)
        self.assertIn(f"stopped data plane pid={tunnel}", out)
        self.assertIn(f"removed {len(self.pins_before)} BPF pins under "
                      f"{pin_root(self.agent.instance)}", out)
        self.assertFalse(os.path.exists(pin_root(self.agent.instance)))
        # The running agent still holds the instance: its lock file stays.
        self.assertTrue(os.path.exists(f"/run/lock/ambit/{self.agent.instance}.lock"))

    def test_lock_released_when_agent_stops(self):
        pid = self.agent.proc.pid
        self.agent.stop()
        # The data plane and the pins stay for the next agent, which may now start.
        self.agent.start(wait_pods=[self.b])
        self.agent.wait_log("re-opened pinned redirect programs")
        self.assertNotEqual(self.agent.proc.pid, pid)
        self.wait_probe(False)
        self.assert_strict_still_enforced()


class FailedStartTest(unittest.TestCase):
    """Starts that fail, and cleanups of instances with nothing in place."""

    def setUp(self):
        self.topo = Topology("f")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        self.agent = self.topo.add_agent()
        self.assertFalse(os.path.exists(pin_root(self.agent.instance)))
        self.assertFalse(os.path.exists(self.agent.run_dir))

    def assert_nothing_left(self, out):
        self.assertFalse(os.path.exists(pin_root(self.agent.instance)),
                         f"pins left behind: {pins(self.agent.instance)}\n{out}")
        self.assertFalse(os.path.exists(self.agent.run_dir), f"run directory left behind\n{out}")
        self.assertEqual(tunnel_pids(self.agent.run_dir), [], f"data plane left running\n{out}")

    def test_bad_cgroup_leaves_no_pins_or_run_dir(self):
        missing = os.path.join(self.topo.cgroup_root, "no-such-cgroup")
        rc, out = ambitd(with_flag(self.agent.argv(), "--cgroup", missing))
        self.assertNotEqual(rc, 0, out)
        self.assertIn(f"open cgroup {missing}", out)
        self.assert_nothing_left(out)
        # And the instance is free again: a good start works.
        self.agent.start()
        self.agent.wait_log("attached redirect programs")

    def test_failure_after_data_plane_start_removes_it_all(self):
        # The metrics endpoint comes last in a start: the programs are attached, the pins and
        # the run directory made, the data plane running when it fails.
        import socket
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        rc, out = ambitd(with_flag(self.agent.argv(), "--metrics-address", f"127.0.0.1:{port}"))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("attached redirect programs", out)
        self.assertIn("failed start: removed what it had created", out)
        self.assert_nothing_left(out)

    def test_failed_restart_keeps_the_running_capture(self):
        # An instance with a capture in place (an earlier agent's, its data plane still running)
        # keeps it when a new agent fails to start.
        self.agent.start()
        self.agent.wait_log("started data plane")
        tunnel = self.agent.tunnel_pid()
        self.assertIsNotNone(tunnel)
        self.agent.stop()
        before = pins(self.agent.instance)
        missing = os.path.join(self.topo.cgroup_root, "no-such-cgroup")
        rc, out = ambitd(with_flag(self.agent.argv(), "--cgroup", missing))
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(pins(self.agent.instance), before)
        self.assertEqual(self.agent.tunnel_pid(), tunnel)
        self.assertTrue(os.path.exists(self.agent.run_dir))

    def test_cleanup_of_clean_instance_says_nothing_was_there(self):
        rc, out = ambitd(self.agent.argv("--cleanup"))
        self.assertEqual(rc, 0, out)
        self.assertIn(f"nothing to clean up for instance {self.agent.instance}", out)
        self.assertNotIn("removed", out)
        self.assertNotIn("stopped", out)
        self.assertFalse(os.path.exists(pin_root(self.agent.instance)))

    def test_cleanup_reports_what_it_removed(self):
        self.agent.start()
        self.agent.wait_log("started data plane")
        tunnel = self.agent.tunnel_pid()
        self.agent.stop()
        count = len(pins(self.agent.instance))
        self.assertGreater(count, 0)
        rc, out = ambitd(self.agent.argv("--cleanup"))
        self.assertEqual(rc, 0, out)
        self.assertIn(f"stopped data plane pid={tunnel}", out)
        self.assertIn(f"removed {count} BPF pins under {pin_root(self.agent.instance)}", out)
        self.assertIn(f"removed {self.agent.run_dir}", out)
        self.assertFalse(os.path.exists(f"/run/lock/ambit/{self.agent.instance}.lock"))
        # A second cleanup finds nothing.
        rc, out = ambitd(self.agent.argv("--cleanup"))
        self.assertEqual(rc, 0, out)
        self.assertIn("nothing to clean up", out)


if __name__ == "__main__":
    unittest.main()
