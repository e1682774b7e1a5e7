"""`ambitctl check` and a CUSTOM policy at the waypoint, against the running waypoint: node3 runs
ambitd, the waypoint's pod wp (so its ambit-waypoint) and the authorizer pod ext, which runs
tests/authorizers/http_authz.py behind Service backend/ext-authz. mesh.yaml names it as the
envoyExtAuthzHttp provider sample-ext-authz-http (statusOnError 503) and a CUSTOM policy on Service
backend/api (bound to the waypoint) hands every request to it. `ambitctl check default/a
backend/api:80` on node3 makes ambitd ask ambit-waypoint over its stats socket, and
ambit-waypoint asks the authorizer from wp with the client its requests use; the authorizer's log
shows each real check. a and b are only configuration here: the check evaluates, it sends nothing
to them.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (WAYPOINT_GATEWAY, Topology, build_dir, run,  # noqa: E402
                      with_labels)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
AUTHZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "authorizers",
                     "http_authz.py")
PROVIDER = "sample-ext-authz-http"
DENY_BODY = 'denied by ext_authz for not found header "x-ext-authz: allow" in the request'

MESH = f"""\
extensionProviders:
- name: {PROVIDER}
  envoyExtAuthzHttp:
    service: ext-authz.backend.svc.cluster.local
    port: 8000
    timeout: 2s
    statusOnError: "503"
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-check-result", "x-ext-authz-upstream"]
    headersToDownstreamOnDeny: ["x-ext-authz-check-result", "content-type"]
"""

SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: backend
  labels:
    istio.io/use-waypoint: waypoint
spec:
  clusterIP: {api_vip}
  selector:
    app: b
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: ext-authz
  namespace: backend
spec:
  clusterIP: {ext_vip}
  selector:
    app: ext
  ports:
  - name: http
    port: 8000
    targetPort: 8000
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: backend
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: api
  action: CUSTOM
  provider:
    name: sample-ext-authz-http
  rules:
  - to:
    - operation:
        paths: ["/*"]
"""


class ExtAuthzCheckTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("xc")
        cls.topo.__enter__()
        try:
            cls._set_up()
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def _set_up(cls):
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node3")
        cls.ext = t.add_pod("ext", namespace="backend", service_account="ext-authz",
                            node="node3")
        view = "---\n".join([
            cls.a.yaml(), cls.b.yaml(), cls.ext.yaml(),
            with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
            WAYPOINT_GATEWAY,
            SERVICES.format(api_vip=f"198.18.{t.subnet}.200", ext_vip=f"198.18.{t.subnet}.201")])
        cls.n3 = t.add_agent("node3")
        cls.n3.write_config("pods.yaml", view)
        cls.n3.write_config("mesh.yaml", MESH)
        cls.n3.start(wait_pods=[cls.wp, cls.ext])
        cls.n3.wait_log("certificate spiffe://cluster.local/ns/backend/sa/waypoint valid")
        cls.log = os.path.join(t.workdir, "checks.jsonl")
        cls.authz = cls.ext.popen(["/usr/bin/python3", AUTHZ, "--listen", "0.0.0.0:8000",
                                   "--log", cls.log], stdout=subprocess.PIPE, text=True)
        line = cls.authz.stdout.readline()
        assert line.startswith("listening"), line

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def check(self, *args, json_out=True):
        argv = [AMBITCTL, "check", "default/a", "backend/api:80", *args, "--admin-socket",
                self.n3.admin_socket]
        if json_out:
            argv += ["-o", "json"]
        r = run(*argv, check=False)
        self.assertEqual(r.returncode, 0, f"ambitctl check {' '.join(args)}: {r.stderr}")
        return json.loads(r.stdout) if json_out else r.stdout

    def checks_seen(self):
        try:
            with open(self.log) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def test_1_allow_header_is_allowed_by_the_provider(self):
        before = len(self.checks_seen())
        doc = self.check("--path", "/allowed?x=1", "--header", "x-ext-authz: allow")
        e = doc["extAuthz"]
        self.assertEqual(e["provider"], PROVIDER, doc)
        self.assertTrue(e["asked"], doc)
        self.assertEqual(e["answer"], "allow", doc)
        self.assertEqual(e["result"], "forward")
        self.assertEqual(e["policy"], "backend/ext-authz")
        self.assertEqual(e["waypointPod"], "backend/wp")
        self.assertEqual(e["kind"], "http")
        self.assertGreater(e["latencyMs"], 0)
        self.assertIn({"op": "set", "name": "x-ext-authz-upstream", "value": "added"},
                      e["upstreamEdits"])
        self.assertEqual(doc["decision"], "allow")
        self.assertEqual(doc["httpStatus"], 200)
        # The authorizer got a real check of the request being checked.
        seen = self.checks_seen()[before:]
        self.assertEqual(len(seen), 1, seen)
        self.assertEqual(seen[0]["path"], "/allowed?x=1")
        self.assertEqual(seen[0]["headers"].get("x-ext-authz"), "allow")

    def test_2_without_the_header_the_provider_denies_403(self):
        doc = self.check("--path", "/private")
        e = doc["extAuthz"]
        self.assertEqual(e["answer"], "deny", doc)
        self.assertEqual(e["status"], 403)
        self.assertIn({"name": "x-ext-authz-check-result", "value": "denied"}, e["headers"])
        self.assertEqual(e["body"], DENY_BODY)
        self.assertEqual(e["result"], "deny")
        self.assertEqual(doc["decision"], "deny")
        self.assertEqual(doc["httpStatus"], 403)
        self.assertEqual(doc["hops"][1]["decision"], "not_reached")
        text = self.check("--path", "/private", json_out=False)
        self.assertRegex(text, r'ext_authz: provider "sample-ext-authz-http" answered deny 403 '
                               r'in \d+\.\d ms \(headers: [^)]*x-ext-authz-check-result: denied')
        self.assertIn("decision: deny (HTTP 403 at waypoint backend/waypoint)", text)

    def test_3_418_from_the_provider_reaches_the_answer(self):
        doc = self.check("--path", "/tea", "--header", "x-ext-authz: deny-418")
        self.assertEqual(doc["extAuthz"]["status"], 418, doc)
        self.assertEqual(doc["httpStatus"], 418)
        self.assertEqual(doc["extAuthz"]["body"], "short and stout")

    def test_4_no_ext_authz_leaves_the_decision_undetermined(self):
        before = len(self.checks_seen())
        doc = self.check("--path", "/allowed", "--header", "x-ext-authz: allow", "--no-ext-authz")
        self.assertEqual(doc["decision"], "undetermined", doc)
        self.assertIsNone(doc["httpStatus"])
        e = doc["extAuthz"]
        self.assertFalse(e["asked"])
        self.assertEqual(e["notAsked"], "--no-ext-authz")
        self.assertEqual(e["result"], "undetermined")
        self.assertIsNone(e["answer"])
        self.assertEqual(len(self.checks_seen()), before, "the authorizer was called")
        text = self.check("--path", "/allowed", "--no-ext-authz", json_out=False)
        self.assertTrue(text.startswith("decision: undetermined"), text)
        self.assertIn('ext_authz: provider "sample-ext-authz-http" not asked: --no-ext-authz',
                      text)

    def test_5_help_documents_no_ext_authz(self):
        r = run(AMBITCTL, "check", "--help", check=False)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--no-ext-authz", r.stdout)
        self.assertIn("side effects", r.stdout)

    def test_9_authorizer_stopped_is_an_error_with_status_on_error(self):
        # Last (tests run by name): the authorizer goes away for good.
        self.authz.terminate()
        self.authz.wait(timeout=10)
        start = time.monotonic()
        doc = self.check("--path", "/allowed", "--header", "x-ext-authz: allow")
        took = time.monotonic() - start
        e = doc["extAuthz"]
        self.assertTrue(e["asked"], doc)
        self.assertEqual(e["answer"], "error", doc)
        self.assertTrue(e["detail"], doc)
        self.assertEqual(e["statusOnError"], 503)
        self.assertEqual(e["result"], "deny")
        self.assertEqual(doc["decision"], "deny")
        self.assertEqual(doc["httpStatus"], 503)
        self.assertLess(took, 10)  # the provider's 2 s timeout, not more than the probe's bound


class ExtAuthzCheckNoWaypointTest(unittest.TestCase):
    """The waypoint's pod is on another node: this node runs no ambit-waypoint to ask, so the
    decision is undetermined and the answer says why (never allow)."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("xn")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint",
                               node="node2")
            view = "---\n".join([
                cls.a.yaml(), cls.b.yaml(),
                with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
                WAYPOINT_GATEWAY,
                SERVICES.format(api_vip=f"198.18.{t.subnet}.200",
                                ext_vip=f"198.18.{t.subnet}.201")])
            cls.n1 = t.add_agent("node1")
            cls.n1.write_config("pods.yaml", view)
            cls.n1.write_config("mesh.yaml", MESH)
            cls.n1.start(wait_pods=[cls.a])
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_undetermined_without_a_waypoint_process(self):
        r = run(AMBITCTL, "check", "default/a", "backend/api:80", "--path", "/x", "--header",
                "x-ext-authz: allow", "-o", "json", "--admin-socket", self.n1.admin_socket,
                check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["decision"], "undetermined", doc)
        self.assertNotEqual(doc["decision"], "allow")
        e = doc["extAuthz"]
        self.assertFalse(e["asked"])
        self.assertIn("no waypoint data plane (ambit-waypoint) runs on this node", e["notAsked"])
        self.assertEqual(doc["hops"][0]["decision"], "undetermined")


if __name__ == "__main__":
    unittest.main()
