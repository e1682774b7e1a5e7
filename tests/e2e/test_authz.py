"""End to end: Istio AuthorizationPolicy enforced by the node tunnel (L4).

frontend/web and frontend/other (node1) call backend/api (node2) over mTLS; default/outsider
(node1, not enrolled) calls it in plaintext. Policies in node2's config directory decide.
"""

import json
import os
import select
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import HOLD, MULTI_SERVER, PROBE  # noqa: E402
from topology import Topology  # noqa: E402




def policy(name, action, rules_yaml, namespace="backend", selector=None):
    lines = ["apiVersion: security.istio.io/v1", "kind: AuthorizationPolicy", "metadata:",
             f"  name: {name}", f"  namespace: {namespace}", "spec:"]
    if selector:
        lines += ["  selector:", "    matchLabels:"] + [f"      {k}: {v}" for k, v in selector.items()]
    lines += [f"  action: {action}", "  rules:"] + ["  " + l for l in rules_yaml.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


ONLY_WEB = policy("only-web", "ALLOW", """
- from:
  - source:
      principals: ["cluster.local/ns/frontend/sa/web"]
""")

DENY_9001 = policy("no-9001", "DENY", """
- to:
  - operation:
      ports: ["9001"]
""")

ONLY_OTHER = policy("only-web", "ALLOW", """
- from:
  - source:
      principals: ["cluster.local/ns/frontend/sa/other"]
""")


class AuthorizationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("z")
        cls.topo.__enter__()
        t = cls.topo
        cls.web = t.add_pod("web", namespace="frontend", service_account="web", node="node1")
        cls.other = t.add_pod("other", namespace="frontend", service_account="other", node="node1")
        cls.outsider = t.add_pod("outsider", namespace="default", node="node1")
        cls.api = t.add_pod("api", namespace="backend", service_account="api", node="node2")
        # Same node as api, same identity as `other`: the local path must decide the same way.
        cls.neighbor = t.add_pod("neighbor", namespace="frontend", service_account="other",
                                 node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        plain = cls.outsider.yaml().replace(f"    ambit.dev/netns: {cls.outsider.netns_path}\n", "")
        pods = "---\n".join(p.yaml() for p in (cls.web, cls.other, cls.api, cls.neighbor))
        pods += "---\n" + plain
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", pods)
        cls.n1.start(wait_pods=[cls.web, cls.other])
        cls.n2.start(wait_pods=[cls.api, cls.neighbor])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/frontend/sa/other valid")
        cls.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")
        cls.server = cls.api.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, "9000", "9001",
                                    "9002"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   bufsize=0)
        assert b"listening" in os.read(cls.server.stdout.fileno(), 100)

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def setUp(self):
        self.n2.write_config("authz.yaml", "")
        self.wait_probe(self.other, 9000, True)

    def accepted(self):
        fd = self.server.stdout.fileno()
        out = b""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        return [l.split()[1:] for l in out.decode().splitlines() if l.startswith("accepted")]

    def probe(self, pod, port):
        enrolled = pod is not self.outsider
        r = pod.python(PROBE, self.api.ip4, port, in_cgroup=enrolled)
        return json.loads(r.stdout)["ok"]

    def wait_probe(self, pod, port, ok, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.probe(pod, port) == ok:
                return
            time.sleep(0.2)
        raise AssertionError(f"{pod.name} -> api:{port} never became {'allowed' if ok else 'denied'}"
                             f"\n{self.n2.logs()[-2000:]}")

    def test_allow_admits_only_the_named_identity(self):
        self.n2.write_config("authz.yaml", ONLY_WEB)
        self.wait_probe(self.other, 9000, False)
        self.accepted()
        self.assertFalse(self.probe(self.other, 9000))
        self.assertTrue(self.probe(self.web, 9000))
        seen = self.accepted()
        # The denied client never reached the application; the allowed one did.
        self.assertEqual([p for p, ip in seen if ip.endswith(self.other.ip4)], [])
        self.assertTrue([p for p, ip in seen if ip.endswith(self.web.ip4)])
        self.n2.wait_log("peer=spiffe://cluster.local/ns/frontend/sa/other denied")
        line = [l for l in self.n2.logs().splitlines() if "sa/other denied" in l][-1]
        self.assertIn("answered 401", line)
        self.n2.wait_log("allowed_by=backend/only-web")

    def test_same_node_and_cross_node_decide_alike(self):
        self.n2.write_config("authz.yaml", ONLY_OTHER)
        self.wait_probe(self.web, 9000, False)
        self.assertTrue(self.probe(self.other, 9000))     # other node, allowed identity
        self.assertTrue(self.probe(self.neighbor, 9000))  # same node, same identity
        self.n2.write_config("authz.yaml", ONLY_WEB)
        self.wait_probe(self.other, 9000, False)
        self.assertFalse(self.probe(self.neighbor, 9000))
        # Both paths produced the same kind of record: mTLS, the client identity, the decision.
        logs = self.n2.logs()
        self.assertIn(f"src={self.neighbor.ip4} dst={self.api.ip4}:9000 mode=mtls "
                      f"peer=spiffe://cluster.local/ns/frontend/sa/other", logs)
        self.assertIn(f"src={self.other.ip4} dst={self.api.ip4}:9000 mode=mtls "
                      f"peer=spiffe://cluster.local/ns/frontend/sa/other", logs)

    def test_deny_on_a_port(self):
        self.n2.write_config("authz.yaml", DENY_9001)
        self.wait_probe(self.web, 9001, False)
        self.assertTrue(self.probe(self.web, 9000))
        self.n2.wait_log("backend/no-9001")

    def test_policy_change_closes_live_connection(self):
        hold = self.web.popen(["/usr/bin/python3", "-c", HOLD, self.api.ip4, "9002"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.assertEqual(hold.stdout.readline().strip(), "connected")
        hold.stdin.write("one\n")
        hold.stdin.flush()
        self.assertEqual(hold.stdout.readline().strip(), "echo")
        self.n2.write_config("authz.yaml", ONLY_OTHER)
        self.n2.wait_log("closed after a policy change")
        hold.stdin.write("two\n")
        hold.stdin.flush()
        self.assertIn(hold.stdout.readline().strip(),
                      ("closed", "ConnectionResetError", "BrokenPipeError"))
        hold.kill()

    def test_plaintext_client_refused_by_allow_on_principals(self):
        self.assertTrue(self.probe(self.outsider, 9000))  # PERMISSIVE, no policy: delivered
        self.n2.write_config("authz.yaml", ONLY_WEB)
        self.wait_probe(self.outsider, 9000, False)
        self.accepted()
        self.assertFalse(self.probe(self.outsider, 9000))
        self.assertEqual(self.accepted(), [])
        self.n2.wait_log("mode=plaintext mtls=PERMISSIVE policy=default denied")


if __name__ == "__main__":
    unittest.main(verbosity=2)
