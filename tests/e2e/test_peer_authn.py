"""End to end: PeerAuthentication decides what happens to plaintext that reaches a pod.

STRICT resets it before the application sees anything, PERMISSIVE (Istio's default) and DISABLE
deliver it, portLevelMtls overrides per port, and a policy change closes live plaintext
connections the new policy forbids.
"""

import json
import os
import select
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import HOLD, MULTI_SERVER  # noqa: E402
from topology import Topology  # noqa: E402


PROBE = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
try:
    s.sendall(b"ping\n")
    data = s.recv(100)
    print(json.dumps({"ok": data == b"ping\n", "data": data.decode()}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__}))
"""



def peer_authn(name, namespace, mode, selector=None, ports=None, version="v1"):
    lines = [f"apiVersion: security.istio.io/{version}", "kind: PeerAuthentication",
             "metadata:", f"  name: {name}", f"  namespace: {namespace}", "spec:"]
    if selector:
        lines += ["  selector:", "    matchLabels:"] + [f"      {k}: {v}" for k, v in selector.items()]
    lines += ["  mtls:", f"    mode: {mode}"]
    if ports:
        lines += ["  portLevelMtls:"] + [f"    {p}:\n      mode: {m}" for p, m in ports.items()]
    return "\n".join(lines) + "\n"


class PeerAuthenticationTest(unittest.TestCase):
    def setUp(self):
        self.topo = Topology("p")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        self.b = self.topo.add_pod("b", namespace="backend", service_account="api")
        self.c = self.topo.add_pod("c", namespace="default")  # not enrolled: sends plaintext
        self.agent = self.topo.add_agent()
        self.topo.write_pods(self.agent, [self.b])
        self.agent.start(wait_pods=[self.b])
        self.server = self.b.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, "9000", "9001",
                                    "9002"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   bufsize=0)
        line = os.read(self.server.stdout.fileno(), 100)
        self.assertIn(b"listening", line)

    def probe(self, port):
        r = self.c.python(PROBE, self.b.ip4, port, in_cgroup=False)
        if r.returncode != 0:
            return {"ok": False, "error": r.stderr.strip().splitlines()[-1]}
        return json.loads(r.stdout)

    def wait_probe(self, port, ok, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = self.probe(port)
            if result["ok"] == ok:
                return result
            time.sleep(0.2)
        raise AssertionError(f"port {port} never became {'open' if ok else 'refused'}")

    def accepted(self):
        """Ports the application accepted connections on, so far."""
        fd = self.server.stdout.fileno()
        out = b""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        self._accepted = getattr(self, "_accepted", []) + [
            int(l.split()[1]) for l in out.decode().splitlines() if l.startswith("accepted")]
        return self._accepted

    def test_default_is_permissive(self):
        self.assertTrue(self.probe(9000)["ok"])
        self.agent.wait_log("mode=plaintext mtls=PERMISSIVE policy=default")

    def test_strict_namespace_refuses_plaintext_before_the_app_sees_it(self):
        self.assertTrue(self.probe(9000)["ok"])
        before = len(self.accepted())
        self.agent.write_config("pa.yaml", peer_authn("strict", "backend", "STRICT"))
        self.wait_probe(9000, ok=False)
        self.agent.wait_log("plaintext refused: PeerAuthentication backend/strict requires mTLS")
        time.sleep(0.3)
        self.assertEqual(len(self.accepted()), before, "the application saw refused plaintext")
        # Back to PERMISSIVE: plaintext is delivered again.
        self.agent.write_config("pa.yaml", peer_authn("strict", "backend", "PERMISSIVE",
                                                      version="v1beta1"))
        self.wait_probe(9000, ok=True)

    def test_mesh_wide_strict_with_port_level_exception(self):
        self.agent.write_config("pa.yaml", peer_authn("default", "istio-system", "STRICT") +
                                "---\n" + peer_authn("b", "backend", "UNSET",
                                                     selector={"app": "b"},
                                                     ports={9001: "PERMISSIVE"}))
        self.wait_probe(9000, ok=False)
        self.assertTrue(self.probe(9001)["ok"])
        self.agent.wait_log("mtls=PERMISSIVE policy=backend/b")
        # DISABLE delivers plaintext too.
        self.agent.write_config("pa.yaml", peer_authn("default", "istio-system", "DISABLE"))
        self.wait_probe(9000, ok=True)

    def test_policy_change_closes_live_plaintext_connection(self):
        hold = self.c.popen(["/usr/bin/python3", "-c", HOLD, self.b.ip4, "9002"],
                            in_cgroup=False, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
        self.assertEqual(hold.stdout.readline().strip(), "connected")
        hold.stdin.write("one\n")
        hold.stdin.flush()
        self.assertEqual(hold.stdout.readline().strip(), "echo")
        self.agent.write_config("pa.yaml", peer_authn("strict", "backend", "STRICT"))
        self.agent.wait_log("closed after a policy change")
        hold.stdin.write("two\n")
        hold.stdin.flush()
        self.assertIn(hold.stdout.readline().strip(),
                      ("closed", "ConnectionResetError", "BrokenPipeError"))

    def test_bad_policy_keeps_last_good(self):
        self.agent.write_config("pa.yaml", peer_authn("strict", "backend", "STRICT"))
        self.wait_probe(9000, ok=False)
        self.agent.write_config("pa.yaml", peer_authn("strict", "backend", "STRICTEST"))
        self.agent.wait_log("STRICTEST")
        self.assertRegex(self.agent.logs(), r"pa\.yaml.*PeerAuthentication backend/strict.*mtls\.mode")
        time.sleep(0.5)
        self.assertFalse(self.probe(9000)["ok"])  # still STRICT


if __name__ == "__main__":
    unittest.main(verbosity=2)
