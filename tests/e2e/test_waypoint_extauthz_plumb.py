"""ext_authz providers from mesh.yaml to the running waypoint: a (node1) calls b (node2), which uses
the waypoint backend/waypoint (its pod wp on node3, served by ambit-waypoint). A CUSTOM
AuthorizationPolicy on the waypoint names MeshConfig extensionProviders; ambitd resolves each
provider's service and sends the providers in the snapshot; the waypoint asks the authorizer
(tests/authorizers/http_authz.py) from its own pod:
- in the mesh (pod authz on node2, Service authz/ext-authz): over HBONE with the waypoint's
  certificate, delivered by node2's tunnel;
- outside it (pod plain, not captured, Service authz/ext-authz-plain): a plain TCP connect from
  the waypoint pod's network namespace;
- a provider whose service names no Service: every request its policy covers is denied, and the
  logs say why.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (ECHO_HTTP_APP, WAYPOINT_GATEWAY, Topology, with_labels)  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HTTP_AUTHZ = os.path.join(REPO, "tests/authorizers/http_authz.py")
WAYPOINT_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"
DENY_BODY = 'denied by ext_authz for not found header "x-ext-authz: allow" in the request'

MESH = """\
extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.authz.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["X-Ext-Authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-upstream"]
    headersToDownstreamOnDeny: ["x-ext-authz-check-result"]
- name: plain-ext-authz-http
  envoyExtAuthzHttp:
    service: authz/ext-authz-plain
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
- name: nowhere-ext-authz
  envoyExtAuthzHttp:
    service: nowhere.authz.svc.cluster.local
    port: 8000
    failOpen: true
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
  - name: http-web
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: ext-authz
  namespace: authz
spec:
  clusterIP: {authz_vip}
  selector:
    app: authz
  ports:
  - name: http
    port: 8000
    targetPort: 8000
---
apiVersion: v1
kind: Service
metadata:
  name: ext-authz-plain
  namespace: authz
spec:
  clusterIP: {plain_vip}
  selector:
    app: plain
  ports:
  - name: http
    port: 8000
    targetPort: 8000
"""


def custom(name, provider, prefix):
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: CUSTOM
  provider:
    name: {provider}
  rules:
  - to:
    - operation:
        paths: ["{prefix}*"]
"""


POLICIES = "---\n".join([custom("ext", "sample-ext-authz-http", "/ext/"),
                         custom("plain", "plain-ext-authz-http", "/plain/"),
                         custom("nowhere", "nowhere-ext-authz", "/nowhere/")])


def outside_mesh(pod):
    """The pod's YAML without the netns annotation: not captured by ambit anywhere."""
    return "\n".join(line for line in pod.yaml().splitlines()
                     if "annotations:" not in line and "ambit.dev/netns" not in line) + "\n"


class WaypointExtAuthzPlumbTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("xap")
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
        cls.authz = t.add_pod("authz", namespace="authz", service_account="authz", node="node2")
        cls.plain = t.add_pod("plain", namespace="authz", service_account="plain", node="node2")
        cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node3")
        cls.api_vip = f"198.18.{t.subnet}.200"
        cls.authz_vip = f"198.18.{t.subnet}.201"
        cls.plain_vip = f"198.18.{t.subnet}.202"
        view = "---\n".join([
            cls.a.yaml(), with_labels(cls.b, {"istio.io/use-waypoint": "waypoint"}),
            cls.authz.yaml(), outside_mesh(cls.plain),
            with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
            WAYPOINT_GATEWAY, POLICIES,
            SERVICES.format(api_vip=cls.api_vip, authz_vip=cls.authz_vip,
                            plain_vip=cls.plain_vip)])
        cls.n1, cls.n2, cls.n3 = t.add_agent("node1"), t.add_agent("node2"), t.add_agent("node3")
        for n in (cls.n1, cls.n2, cls.n3):
            n.write_config("pods.yaml", view)
            n.write_config("mesh.yaml", MESH)
        cls.n1.start(wait_pods=[cls.a])
        cls.n2.start(wait_pods=[cls.b, cls.authz])
        cls.n3.start(wait_pods=[cls.wp])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
        cls.n2.wait_log("certificate spiffe://cluster.local/ns/authz/sa/authz valid")
        cls.n3.wait_log(f"certificate {WAYPOINT_ID} valid")
        cls.app = cls.b.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"],
                              stdout=subprocess.PIPE, text=True)
        cls.app.stdout.readline()
        cls.check_log = os.path.join(t.workdir, "checks.jsonl")
        cls.plain_log = os.path.join(t.workdir, "plain-checks.jsonl")
        cls.authorizer = cls._authorizer(cls.authz, cls.check_log, in_cgroup=True)
        cls.plain_authorizer = cls._authorizer(cls.plain, cls.plain_log, in_cgroup=False)

    @classmethod
    def _authorizer(cls, pod, log, in_cgroup):
        proc = pod.popen(["/usr/bin/python3", HTTP_AUTHZ, "--listen", "0.0.0.0:8000", "--log", log],
                         in_cgroup=in_cgroup, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("listening"), f"authorizer in {pod.name} did not start: {line!r}"
        return proc

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def curl(self, *args):
        r = self.a.run(["curl", "-sS", "-m", "10", "-D", "/dev/stderr", "-o", "/dev/stdout",
                        "-w", "\n%{http_code}", *args])
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body, r.stderr

    @staticmethod
    def checks(path):
        try:
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def test_in_mesh_authorizer_allows_and_denies_over_hbone(self):
        before = len(self.checks(self.check_log))
        code, body, err = self.curl("-H", "x-ext-authz: allow",
                                    f"http://{self.api_vip}/ext/allowed")
        self.assertEqual(code, 200, err)
        seen = json.loads(body)
        self.assertEqual(seen["path"], "/ext/allowed")
        code, body, headers = self.curl(f"http://{self.api_vip}/ext/denied")
        self.assertEqual((code, body), (403, DENY_BODY))
        self.assertIn("x-ext-authz-check-result: denied", headers.lower())
        checks = self.checks(self.check_log)[before:]
        self.assertEqual([c["path"] for c in checks], ["/ext/allowed", "/ext/denied"])
        self.assertEqual(checks[0]["headers"].get("x-ext-authz"), "allow")
        # Over HBONE with the waypoint's certificate: node2's tunnel took the CONNECT from the
        # waypoint's identity and delivered the check from the waypoint pod's address.
        self.assertTrue(checks[0]["peer"].startswith(self.wp.ip4), checks[0]["peer"])
        self.n2.wait_log(f"inbound pod=authz/authz src={self.wp.ip4} dst={self.authz.ip4}:8000 "
                         f"mode=mtls peer={WAYPOINT_ID}")
        # A path no CUSTOM policy covers never reaches the authorizer.
        code, body, err = self.curl(f"http://{self.api_vip}/open")
        self.assertEqual(code, 200, err)
        self.assertEqual(len(self.checks(self.check_log)), before + 2)
        self.n3.wait_log("sample-ext-authz-http")

    def test_keep_alive_to_the_authorizer(self):
        before = len(self.checks(self.check_log))
        for i in range(3):
            code, _, err = self.curl("-H", "x-ext-authz: allow",
                                     f"http://{self.api_vip}/ext/reuse{i}")
            self.assertEqual(code, 200, err)
        checks = self.checks(self.check_log)[before:]
        self.assertEqual(len(checks), 3)
        # The waypoint keeps its clients across requests: fewer connections than checks (each
        # worker has its own).
        self.assertLess(len({c["peer"] for c in checks}), 3, checks)

    def test_outside_mesh_authorizer_is_dialled_from_the_waypoint_pod(self):
        before = len(self.checks(self.plain_log))
        code, _, err = self.curl("-H", "x-ext-authz: allow", f"http://{self.api_vip}/plain/x")
        self.assertEqual(code, 200, err)
        code, body, _ = self.curl(f"http://{self.api_vip}/plain/y")
        self.assertEqual((code, body), (403, DENY_BODY))
        checks = self.checks(self.plain_log)[before:]
        self.assertEqual([c["path"] for c in checks], ["/plain/x", "/plain/y"])
        # Plain TCP from the waypoint pod's own address (its network namespace), not the host's;
        # no tunnel took part (the authorizer's pod is captured by no node).
        self.assertTrue(checks[0]["peer"].startswith(self.wp.ip4), checks[0]["peer"])
        self.assertNotIn(f"dst={self.plain.ip4}:8000", self.n2.logs())

    def test_provider_naming_a_missing_service_denies_and_says_why(self):
        # failOpen does not apply: the configuration is wrong, not the authorizer down.
        code, body, _ = self.curl("-H", "x-ext-authz: allow", f"http://{self.api_vip}/nowhere/x")
        self.assertEqual(code, 403, body)
        why = "names no Service (looked up authz/nowhere)"
        self.n3.wait_log(f"extensionProviders nowhere-ext-authz: service: "
                         f"'nowhere.authz.svc.cluster.local' {why}")
        self.n3.wait_log(f'ext_authz provider "nowhere-ext-authz" is unresolved')
        # Logged once per change, not per snapshot.
        self.assertEqual(self.n3.logs().count("extensionProviders nowhere-ext-authz:"), 1)

    def test_zz_ambitd_restart_keeps_ext_authz_working(self):
        self.n3.stop()
        self.n3.start()
        self.n3.wait_log(f"certificate {WAYPOINT_ID} valid", count=2, timeout=30)
        deadline = time.time() + 20
        code = 0
        while time.time() < deadline:
            code, body, err = self.curl("-H", "x-ext-authz: allow",
                                        f"http://{self.api_vip}/ext/after-restart")
            if code == 200:
                break
            time.sleep(0.5)
        self.assertEqual(code, 200)
        code, body, _ = self.curl(f"http://{self.api_vip}/ext/after-restart")
        self.assertEqual((code, body), (403, DENY_BODY))


if __name__ == "__main__":
    unittest.main()
