"""The capability sets the DaemonSet grants (deploy/base), tried on the real kernel: a process
holding exactly a container's set (as root, the bounding set cut to it with setpriv, as the
container runtime does) must be able to do what that container's process does with them, and
losing the capability the test is about must make it fail.

- ambitd opens `--node-netns=/host/proc/1/ns/net`: the host's init holds every capability, so
  the kernel's ptrace access check asks for CAP_SYS_PTRACE (root alone is not enough). A `sleep`
  with every capability, started here, stands in for the host's PID 1.
- ambit-tunnel and ambit-waypoint enter a pod's network namespace through a descriptor ambitd
  passed (setns: CAP_SYS_ADMIN) and set IP_TRANSPARENT on delivery sockets there (CAP_NET_ADMIN).
  A namespace of this test's own (`unshare --net`, no address, no traffic) stands in for the pod.

Needs root; fails (never skips) without it. Run: /usr/bin/python3 tests/deploy/test_capabilities.py
"""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import check_posture  # noqa: E402
import manifests  # noqa: E402

# Runs in the process with the reduced set: opens a namespace file, or enters the namespace
# whose descriptor it inherited and sets IP_TRANSPARENT on a socket there. Exit 0 on success.
PROBE = r"""
import ctypes, os, socket, sys
what, arg = sys.argv[1], sys.argv[2]
try:
    if what == "open":
        os.close(os.open(arg, os.O_RDONLY))
    else:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(int(arg), 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
        s.close()
except OSError as e:
    print(f"{what} failed: {e}")
    sys.exit(1)
print(f"{what} ok")
"""


def container_caps(kustomization, name):
    objects, _ = manifests.render(manifests.system_kubectl(), kustomization)
    ds = check_posture._find(objects, "DaemonSet", "ambit")
    for c in ds["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            caps = c["securityContext"]["capabilities"]
            assert caps["drop"] == ["ALL"], caps
            return sorted(caps.get("add") or [])
    raise AssertionError(f"no container {name}")


def run_with_caps(caps, what, arg, pass_fds=()):
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    proc = subprocess.run(
        ["setpriv", "--bounding-set", spec, "--inh-caps", "-all", "--", sys.executable, "-c",
         PROBE, what, str(arg)],
        capture_output=True, text=True, timeout=30, pass_fds=pass_fds)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


class CapabilitiesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise RuntimeError("tests/deploy/test_capabilities.py needs root")
        cls.procs = []

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            p.kill()
            p.wait(timeout=10)

    def start(self, argv):
        p = subprocess.Popen(argv)
        self.procs.append(p)
        return p

    def test_ambitd_opens_the_node_network_namespace(self):
        caps = container_caps("base", "ambitd")
        init = self.start(["sleep", "120"])  # every capability, like the host's init
        path = f"/proc/{init.pid}/ns/net"
        for _ in range(100):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        code, out = run_with_caps(caps, "open", path)
        self.assertEqual(code, 0, f"ambitd's {caps}: {out}")
        without = [c for c in caps if c != "SYS_PTRACE"]
        code, out = run_with_caps(without, "open", path)
        self.assertNotEqual(code, 0, f"{without} opened {path}: the test proves nothing")
        self.assertIn("Permission denied", out)

    def test_data_plane_enters_pod_namespaces_and_delivers_transparently(self):
        pod = self.start(["unshare", "--net", "sleep", "120"])
        path = f"/proc/{pod.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:
            self.assertLess(time.monotonic(), deadline, "unshare --net did not start")
            time.sleep(0.05)
        fd = os.open(path, os.O_RDONLY)  # as ambitd passes it over the control socket
        try:
            for name in ("ambit-tunnel", "ambit-waypoint"):
                caps = container_caps("base", name)
                code, out = run_with_caps(caps, "setns", fd, pass_fds=(fd,))
                self.assertEqual(code, 0, f"{name}'s {caps}: {out}")
                for missing in ("SYS_ADMIN", "NET_ADMIN"):
                    fewer = [c for c in caps if c != missing]
                    code, out = run_with_caps(fewer, "setns", fd, pass_fds=(fd,))
                    self.assertNotEqual(code, 0, f"{name} without {missing} succeeded: {out}")
        finally:
            os.close(fd)


if __name__ == "__main__":
    unittest.main(verbosity=2)
