"""End to end: configuration that is valid but probably not meant is said, once, naming file and
object; what a load applied is logged; a fixed file says its error is gone.

One agent (node1) with pod web (correct), pod bare (in the mesh, no status.podIPs), pod typo
(its netns annotation misspelled `ambit.dev/netsn`, so it is quietly outside), a policy in a
namespace nothing lives in and one whose source names an identity no pod has. The real ambitd and
ambitctl; the warnings must show in the log (exactly once across reloads), in `ambitctl
workloads` and `ambitctl policies`.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, run  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: stray
  namespace: bakend
spec:
  action: ALLOW
  rules:
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: callers
  namespace: default
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/web", "cluster.local/ns/default/sa/wbe"]
"""


class ConfigWarningsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("cw")
        cls.topo.__enter__()
        t = cls.topo
        cls.web = t.add_pod("web", service_account="web")
        cls.bare = t.add_pod("bare")
        cls.typo = t.add_pod("typo")
        cls.agent = t.add_agent("node1")
        bare = "\n".join(l for l in cls.bare.yaml().splitlines()
                         if not l.startswith(("status:", "  podIP", "    - ip:")))
        typo = cls.typo.yaml().replace("ambit.dev/netns:", "ambit.dev/netsn:")
        cls.agent.write_config("pods.yaml", cls.web.yaml() + "---\n" + bare + "\n---\n" + typo)
        cls.agent.write_config("policies.yaml", POLICIES)
        cls.agent.start(wait_pods=[cls.web])
        cls.agent.wait_log("configuration applied")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def ctl(self, *args):
        r = run(AMBITCTL, "--admin-socket", self.agent.admin_socket, *args, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def warning_lines(self):
        return [l for l in self.agent.logs().splitlines() if " warn config: " in l]

    def test_warnings_once_then_applied_and_cleared(self):
        expected = [
            "pods.yaml:", "Pod default/bare: field status.podIPs: has no address",
            "Pod default/typo: field metadata.annotations[ambit.dev/netsn]: not a key ambit "
            "reads; did you mean ambit.dev/netns?",
            "policies.yaml:", "AuthorizationPolicy bakend/stray: field metadata.namespace: "
            "namespace bakend has no Namespace object, pod or service",
            "AuthorizationPolicy default/callers: field "
            "spec.rules[0].from[0].source.principals[1]: 'cluster.local/ns/default/sa/wbe': no "
            "known workload has this identity",
        ]
        log = "\n".join(self.warning_lines())
        for text in expected:
            self.assertIn(text, log)
        self.assertIn("configuration applied as generation", self.agent.logs())

        # ambitctl workloads: a count in STATUS, the text below the table, and JSON fields.
        table = self.ctl("workloads")
        self.assertIn("Warnings:", table)
        self.assertIn("default/bare: field status.podIPs: has no address", table)
        self.assertRegex(table, r"default\s+typo\s.*outside.*ok \(1 warning\)")
        pods = {w["name"]: w for w in json.loads(self.ctl("workloads", "-o", "json"))["workloads"]}
        self.assertEqual(pods["web"]["warnings"], [])
        self.assertEqual(len(pods["typo"]["warnings"]), 1, pods["typo"])
        self.assertEqual(pods["typo"]["role"], "outside")

        # ambitctl policies: each policy's warnings.
        policies = {p["name"]: p for p in
                    json.loads(self.ctl("policies", "-o", "json"))["policies"]}
        self.assertTrue(any("namespace bakend has no Namespace object" in w
                            for w in policies["stray"]["warnings"]), policies["stray"])
        self.assertTrue(any("sa/wbe': no known workload" in w
                            for w in policies["callers"]["warnings"]), policies["callers"])

        # A reload of something else logs what it applied, not the same warnings again.
        applied = self.agent.logs().count("configuration applied")
        before = len(self.warning_lines())
        self.agent.write_config("ns.yaml", "apiVersion: v1\nkind: Namespace\n"
                                "metadata:\n  name: default\n")
        self.agent.wait_log("configuration applied", count=applied + 1)
        self.assertIn("added 1: Namespace default", self.agent.logs())
        self.assertEqual(len(self.warning_lines()), before, self.warning_lines()[before:])

        # A broken file, then fixed: the error, then the line saying it is gone, then what the
        # fix applied (the pod the broken file held is back as it was: no change).
        applied = self.agent.logs().count("configuration applied")
        self.agent.write_config("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: [\n")
        self.agent.wait_log("configuration applied", count=applied + 1)
        last = [l for l in self.agent.logs().splitlines() if "configuration applied" in l][-1]
        self.assertIn("no object changed; 1 error above", last)
        self.agent.write_config("ns.yaml", "apiVersion: v1\nkind: Namespace\n"
                                "metadata:\n  name: default\n  labels:\n    team: a\n")
        self.agent.wait_log("ns.yaml: no error now (the last one reported is resolved)")
        self.agent.wait_log("changed 1: Namespace default")
        logs = self.agent.logs()
        self.assertLess(logs.rindex("error config: ns.yaml"), logs.rindex("ns.yaml: no error now"))
        # Four loads later, each warning was still said once.
        log = "\n".join(self.warning_lines())
        for text in expected[1:3] + expected[4:]:
            self.assertEqual(log.count(text), 1, text)


if __name__ == "__main__":
    unittest.main()
