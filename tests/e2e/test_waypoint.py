"""End to end: waypoints declared the Istio way (a Gateway of class istio-waypoint, the
istio.io/use-waypoint label) and used by the node tunnels: traffic to a bound pod goes over HBONE
to the waypoint, and the bound pod's tunnel accepts only the waypoint (bypass closed), unless the
pod opts out with ambit.dev/allow-waypoint-bypass.

ambit-waypoint does not exist yet. The waypoint's pod `wp` lives on node3, which runs no agent of
ours; a Python HBONE server (hbone_peer.py, Python ssl + h2) holding a certificate for the
waypoint's identity (spiffe://cluster.local/ns/backend/sa/waypoint) stands in for the waypoint
process there: it shows where node1's tunnel sends the traffic and what it asks for, and, as a
client, what the waypoint's forward to the destination looks like to node2's tunnel.

The two agents are given different views on purpose: node1's configuration does not label b
(a node that has not caught up, or a tunnel that skips the waypoint), so node1 sends a's traffic
for b straight to b's node; node2 knows b is bound and must refuse it.
"""

import json
import os
import subprocess
import sys
import re
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (CLIENT, SERVER, WAYPOINT_GATEWAY, Topology, build_dir, run,  # noqa: E402
                      wait_listening, with_labels)
import svid  # noqa: E402
from jwt_issuer import Issuer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WAYPOINT_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"

GATEWAY = WAYPOINT_GATEWAY

# JWT rules for the waypoint, every field of a rule used, in two namespaces; with them an
# AuthorizationPolicy that selects no pod, which `ambitctl policies` lists: the agent has loaded
# the file once it shows. The inline key is an HMAC secret (any JWKS the agent can parse will do).
REQUEST_AUTHENTICATIONS = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: backend
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  jwtRules:
  - issuer: https://issuer.example
    audiences: [api, web]
    jwks: '{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}'
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    timeout: 2.5s
    spaceDelimitedClaims: [roles]
  - issuer: issuer-b
    jwksUri: https://issuer.example/jwks
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt
  namespace: default
spec:
  selector:
    matchLabels:
      app: a
  jwtRules:
  - issuer: issuer-c
    jwksUri: https://issuer.example/jwks
    timeout: 0.25s
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: authn-loaded
  namespace: backend
spec:
  selector:
    matchLabels:
      app: no-such-pod
  action: ALLOW
  rules: [{}]
"""




class WaypointTest(unittest.TestCase):
    """a (node1), b and o (node2, both labelled to use backend/waypoint; o opts out of the bypass
    check), s (node2, labelled in both views: the steering target), wp (node3: the waypoint's
    pod, served by the stand-in), c (node1, not enrolled: a client outside the tunnels)."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("w")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.c = t.add_pod("c", namespace="default", service_account="plain", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.o = t.add_pod("o", namespace="backend", service_account="open", node="node2")
        cls.s = t.add_pod("s", namespace="backend", service_account="steer", node="node2")
        cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node3")
        tokens = os.path.join(t.workdir, "tokens")
        with open(tokens, "w") as f:
            f.write("t1 node1\nt2 node2\nt3 node3\n")
        use = {"istio.io/use-waypoint": "waypoint"}
        common = [cls.a.yaml(), cls.c.yaml().replace(
            f"    ambit.dev/netns: {cls.c.netns_path}\n", ""),
            with_labels(cls.s, use),
            with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}), GATEWAY]
        node1_view = common + [cls.b.yaml(), cls.o.yaml()]
        node2_view = common + [with_labels(cls.b, use),
                               with_labels(cls.o, use, {"ambit.dev/allow-waypoint-bypass": "true"})]
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        cls.n1.write_config("pods.yaml", "---\n".join(node1_view))
        cls.n2.write_config("pods.yaml", "---\n".join(node2_view))
        cls.n1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens, wait_pods=[cls.a])
        cls.n2.start(wait_pods=[cls.b, cls.o, cls.s])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
        for ident in ("backend/sa/api", "backend/sa/open"):
            cls.n2.wait_log(f"certificate spiffe://cluster.local/ns/{ident} valid")
        cls.certs = svid.issue(cls.n1, WAYPOINT_ID, "t3", tempfile.mkdtemp(dir=t.workdir))

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def ctl(self, agent, *args):
        r = run(AMBITCTL, *args, "--admin-socket", agent.admin_socket, check=False)
        self.assertEqual(r.returncode, 0, f"ambitctl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def server(self, pod, port):
        srv = pod.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", str(port), "1"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        return srv

    def connect(self, src, dst_ip, port, payload="hello"):
        r = src.python(CLIENT, dst_ip, port, payload)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def access_log(self, agent, needle):
        agent.wait_log(needle)
        return [l for l in agent.logs().splitlines() if needle in l and "decision=" in l][-1]

    def test_cli_shows_the_waypoint_of_each_workload(self):
        doc = json.loads(self.ctl(self.n2, "workloads", "-o", "json"))
        by_name = {(w["namespace"], w["name"]): w for w in doc["workloads"]}
        self.assertEqual(by_name[("backend", "b")]["waypoint"], "backend/waypoint")
        self.assertFalse(by_name[("backend", "b")]["waypointBypassAllowed"])
        self.assertTrue(by_name[("backend", "o")]["waypointBypassAllowed"])
        self.assertEqual(by_name[("backend", "wp")]["waypointInstanceOf"], "backend/waypoint")
        self.assertIsNone(by_name[("backend", "wp")]["waypoint"])
        self.assertIsNone(by_name[("default", "a")]["waypoint"])
        table = self.ctl(self.n2, "workloads")
        row = [l for l in table.splitlines() if " b " in f" {l} " and "backend" in l][0]
        self.assertIn("backend/waypoint", row)

    def test_outbound_tunnel_dials_the_waypoint(self):
        # The stand-in for ambit-waypoint on wp's 15008, with the waypoint's certificate.
        srv = self.wp.popen(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "server",
                             self.certs, self.wp.ip4], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, in_cgroup=False)
        wait_listening(srv)
        try:
            out = self.connect(self.a, self.s.ip4, 7700, "to the waypoint")
        finally:
            srv.kill()
        seen = json.loads(srv.communicate(timeout=10)[0].splitlines()[-1])
        self.assertIsNotNone(out, self.n1.logs()[-1500:])
        self.assertEqual(out["reply"], "to the waypoint")  # the stand-in echoes the stream
        self.assertEqual(seen["method"], "CONNECT")
        # The CONNECT target stays the destination dialled, as ztunnel sends it.
        self.assertEqual(seen["authority"], f"{self.s.ip4}:7700")
        self.assertEqual(seen["client"], ["spiffe://cluster.local/ns/default/sa/web"])
        line = self.access_log(self.n1, f"dst={self.s.ip4}:7700")
        self.assertIn("decision=allow", line)
        self.n1.wait_log(f"waypoint=backend/waypoint via={self.wp.ip4}")

    def test_bypass_from_another_tunnel_is_refused(self):
        srv = self.server(self.b, 7710)
        try:
            out = self.connect(self.a, self.b.ip4, 7710, "bypass")
        finally:
            srv.kill()
        self.assertTrue(out is None or out["reply"] == "", out)
        self.assertEqual(srv.communicate(timeout=10)[0].strip(), "",
                         "the pod behind the waypoint received a connection")
        line = self.access_log(self.n2, f"dst={self.b.ip4}:7710")
        self.assertIn("decision=deny", line)
        self.assertIn("backend/waypoint", line)
        self.assertIn("only its identity may connect, not spiffe://cluster.local/ns/default/sa/web",
                      line)
        deadline = time.time() + 15
        while not re.search(r'ambit_policy_decisions_total\{result="deny"\} [1-9]',
                            self.n2.metrics()):
            self.assertLess(time.time(), deadline, "the denial is not counted")
            time.sleep(0.5)

    def test_plaintext_bypass_is_refused(self):
        srv = self.server(self.b, 7711)
        try:
            r = self.c.python(CLIENT, self.b.ip4, 7711, "plain", in_cgroup=False)
        finally:
            srv.kill()
        self.assertFalse(r.returncode == 0 and "echo:plain" in r.stdout, r.stdout)
        line = self.access_log(self.n2, f"dst={self.b.ip4}:7711")
        self.assertIn("decision=deny", line)
        self.assertIn("not a plaintext client", line)

    def test_opt_out_lets_the_bypass_through(self):
        srv = self.server(self.o, 7720)
        out = self.connect(self.a, self.o.ip4, 7720, "opted out")
        seen = json.loads(srv.communicate(timeout=10)[0].splitlines()[-1])
        self.assertIsNotNone(out, self.n2.logs()[-1500:])
        self.assertEqual(out["reply"], "echo:opted out")
        self.assertEqual(seen["peer"], self.a.ip4)

    def wait_generation(self, agent, pred, timeout=30):
        """`ambitctl policies -o json` once pred(it) holds."""
        deadline = time.time() + timeout
        while True:
            doc = json.loads(self.ctl(agent, "policies", "-o", "json"))
            if pred(doc):
                return doc
            self.assertLess(time.time(), deadline,
                            f"{doc['generation']}\n{agent.logs()[-2000:]}")
            time.sleep(0.2)

    def test_request_authentications_reach_the_data_plane(self):
        # RequestAuthentications travel in every generation for the waypoint: the node tunnel
        # must accept (ack) one carrying them, not refuse it and fail closed.
        def loaded(doc):
            g = doc["generation"]
            names = {(p["namespace"], p["name"]) for p in doc["policies"]}
            return ("backend", "authn-loaded") in names and g["desired"] == g["applied"]

        self.n2.write_config("authn.yaml", REQUEST_AUTHENTICATIONS)
        try:
            doc = self.wait_generation(self.n2, loaded)
            g = doc["generation"]
            self.assertFalse(g["failClosed"], g)
            self.assertFalse([r for r in doc["rejected"] if r["file"] == "authn.yaml"],
                             doc["rejected"])
            self.assertIn(f"Configuration generation {g['applied']}, enforced by the data plane",
                          self.ctl(self.n2, "policies"))
            logs = self.n2.logs()
            self.assertNotIn("could not apply configuration generation", logs)
            self.assertNotIn("could not be sent to the data plane", logs)
        finally:
            os.unlink(os.path.join(self.n2.config_dir, "authn.yaml"))
        self.wait_generation(self.n2, lambda doc: not loaded(doc) and
                             doc["generation"]["desired"] == doc["generation"]["applied"])

    def test_waypoint_identity_is_accepted(self):
        # What the waypoint's forward looks like to b's tunnel: HBONE from wp with its identity.
        srv = self.server(self.b, 7730)
        r = self.wp.run(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "client",
                         self.certs, self.b.ip4, f"{self.b.ip4}:7730", "via waypoint"],
                        in_cgroup=False)
        out = json.loads(r.stdout)
        self.assertEqual(out["status"], 200, r.stderr)
        seen = json.loads(srv.communicate(timeout=10)[0].splitlines()[-1])
        self.assertEqual(seen["peer"], self.wp.ip4)
        self.assertEqual(seen["bytes"], len("via waypoint"))
        # Another identity of the mesh on the same path: 401, as ztunnel answers a denial.
        other = svid.issue(self.n1, "spiffe://cluster.local/ns/default/sa/plain", "t1",
                           tempfile.mkdtemp(dir=self.topo.workdir))
        r = self.c.run(["/usr/bin/python3", os.path.join(HERE, "hbone_peer.py"), "client",
                        other, self.b.ip4, f"{self.b.ip4}:7731", "x"], in_cgroup=False)
        self.assertEqual(json.loads(r.stdout)["status"], 401, r.stderr)


ISSUER = "https://issuer.test"
NOW = 1800000000
SERVICE_IP = "198.19.250.10"



class LiveCheckL7Test(unittest.TestCase):
    """`ambitctl check` asks the running agent about a request through a waypoint: hop 1 at the
    waypoint (RequestAuthentication with an inline jwks, then AuthorizationPolicy attached by
    targetRefs to the Gateway or the Service), hop 2 at the destination's tunnel (the waypoint's
    identity only, then L4 policy). a (node1, enrolled: the agent asked), and on node2 (no agent)
    wp (the waypoint's pod) and b (behind Service backend/api, which uses the waypoint). Tokens are
    signed here with python3-jwt (RS256)."""

    @classmethod
    def setUpClass(cls):
        cls.issuer = Issuer(ISSUER, sub="user-1")
        jwks = cls.issuer.jwks
        cls.topo = Topology("lc")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node2")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        gateway_ref = {"kind": "Gateway", "group": "gateway.networking.k8s.io",
                       "name": "waypoint"}
        docs = [
            cls.a.yaml(), cls.b.yaml(), GATEWAY,
            with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
            json.dumps({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "api", "namespace": "backend",
                                     "labels": {"istio.io/use-waypoint": "waypoint"}},
                        "spec": {"clusterIP": SERVICE_IP, "selector": {"app": "b"},
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            json.dumps({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "allow-api", "namespace": "backend"},
                        "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "api"}],
                                 "action": "ALLOW",
                                 "rules": [
                                     {"to": [{"operation": {"paths": ["/get", "/public*"]}}]},
                                     {"from": [{"source": {
                                         "requestPrincipals": [f"{ISSUER}/*"]}}],
                                      "to": [{"operation": {"paths": ["/private*"]}}]}]}}),
            json.dumps({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "deny-admin", "namespace": "backend"},
                        "spec": {"targetRefs": [gateway_ref], "action": "DENY",
                                 "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}),
            json.dumps({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                        "metadata": {"name": "jwt", "namespace": "backend"},
                        "spec": {"targetRefs": [gateway_ref],
                                 "jwtRules": [{"issuer": ISSUER, "jwks": jwks}]}}),
        ]
        cls.n1 = t.add_agent("node1")
        cls.n1.write_config("pods.yaml", "---\n".join(d if d.endswith("\n") else d + "\n"
                                                      for d in docs))
        cls.n1.start(wait_pods=[cls.a])

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def token(self, **claims):
        return self.issuer.token(now=NOW, lifetime=3600, **claims)

    def check(self, *args, json_out=True):
        argv = [AMBITCTL, "check", *args, "--now", str(NOW), "--admin-socket",
                self.n1.admin_socket]
        if json_out:
            argv += ["-o", "json"]
        r = run(*argv, check=False)
        self.assertEqual(r.returncode, 0, f"ambitctl {' '.join(args)}: {r.stderr}")
        return json.loads(r.stdout) if json_out else r.stdout

    def test_l7_allow_through_the_waypoint(self):
        doc = self.check("default/a", "backend/api:80", "--method", "GET", "--path", "/get?x=1")
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertEqual(doc["httpStatus"], 200)
        self.assertEqual(doc["waypoint"], "backend/waypoint")
        self.assertEqual(doc["service"], "backend/api")
        self.assertEqual(doc["destination"], "backend/b")
        self.assertEqual(doc["policy"], "backend/allow-api")
        self.assertEqual([h["kind"] for h in doc["hops"]], ["waypoint", "tunnel"])
        self.assertEqual(doc["hops"][0]["source"], "spiffe://cluster.local/ns/default/sa/web")
        self.assertEqual(doc["hops"][1]["source"], WAYPOINT_ID)
        self.assertEqual(doc["mtls"]["mode"], "PERMISSIVE")  # the existing fields stay
        text = self.check("default/a", "backend/api:80", "--path", "/get", json_out=False)
        self.assertTrue(text.startswith("decision: allow (HTTP 200 at waypoint backend/waypoint)"),
                        text)
        self.assertIn("hop 1: waypoint backend/waypoint (pod backend/wp", text)
        self.assertIn(f"hop 2: the tunnel of backend/b, L4, from {WAYPOINT_ID}", text)

    def test_path_deny_names_the_policy(self):
        doc = self.check("default/a", "backend/api:80", "--path", "/admin/users")
        self.assertEqual(doc["decision"], "deny")
        self.assertEqual(doc["httpStatus"], 403)
        self.assertEqual(doc["policy"], "backend/deny-admin")
        self.assertEqual(doc["hops"][1]["decision"], "not_reached")
        text = self.check("default/a", "backend/api:80", "--path", "/admin/users",
                          json_out=False)
        self.assertIn("DENY backend/deny-admin: matched (rule 0)", text)
        self.assertIn('result: HTTP 403 "RBAC: access denied" (policy backend/deny-admin, rule 0)',
                      text)

    def test_expired_jwt_is_401(self):
        expired = self.token(exp=NOW - 3600, iat=NOW - 7200)  # past the 60 s clock skew
        doc = self.check("default/a", "backend/api:80", "--path", "/private", "--header",
                         f"authorization: Bearer {expired}")
        self.assertEqual(doc["decision"], "deny")
        self.assertEqual(doc["httpStatus"], 401)
        self.assertEqual(doc["authn"]["result"], "reject")
        self.assertEqual(doc["authn"]["status"], 401)
        self.assertIn("Jwt is expired", doc["authn"]["reason"])
        self.assertIn("backend/jwt jwtRules[0]", doc["authn"]["rule"])
        text = self.check("default/a", "backend/api:80", "--path", "/private", "--header",
                          f"authorization: Bearer {expired}", json_out=False)
        self.assertIn('result: reject, HTTP 401 "Jwt is expired"', text)
        # The same token before it expires opens the requestPrincipals rule.
        doc = self.check("default/a", "backend/api:80", "--path", "/private", "--header",
                         f"authorization: Bearer {self.token()}")
        self.assertEqual(doc["httpStatus"], 200, doc)
        self.assertEqual(doc["authn"]["principal"], f"{ISSUER}/user-1")

    def test_missing_token_fails_request_principals(self):
        doc = self.check("default/a", "backend/api:80", "--method", "POST", "--path", "/private")
        self.assertEqual(doc["decision"], "deny")
        self.assertEqual(doc["httpStatus"], 403)
        self.assertEqual(doc["authn"]["result"], "allow")  # no token: unauthenticated
        self.assertIsNone(doc["authn"]["principal"])
        text = self.check("default/a", "backend/api:80", "--path", "/private", json_out=False)
        self.assertIn("requestPrincipals", text)
        self.assertIn('result: HTTP 403 "RBAC: access denied"', text)

    def test_bypass_only_the_waypoint_identity_is_accepted(self):
        # b's own address skips the service's waypoint; b's tunnel takes the waypoint alone.
        doc = self.check("default/a", "backend/b:8080")
        self.assertEqual(doc["decision"], "deny")
        self.assertIsNone(doc["waypoint"])
        self.assertEqual(doc["policy"], "waypoint backend/waypoint")
        self.assertIn("only its identity may connect, not spiffe://cluster.local/ns/default/sa/web",
                      doc["reason"])
        text = self.check("default/a", f"{self.b.ip4}:8080", json_out=False)
        self.assertIn("bypass refused", text)
        # The waypoint's own pod is that identity.
        doc = self.check("backend/wp", "backend/b:8080")
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertEqual(doc["source"], WAYPOINT_ID)

    def test_service_addressed_by_cluster_ip(self):
        doc = self.check("default/a", f"{SERVICE_IP}:80", "--path", "/public/x")
        self.assertEqual(doc["service"], "backend/api")
        self.assertEqual(doc["waypoint"], "backend/waypoint")
        self.assertEqual(doc["destination"], "backend/b")
        self.assertEqual(doc["destinationIp"], self.b.ip4)
        self.assertIn("the first of 1 endpoint", doc["endpoint"])
        self.assertEqual(doc["httpStatus"], 200)
        r = run(AMBITCTL, "check", "default/a", f"{SERVICE_IP}:81", "--admin-socket",
                self.n1.admin_socket, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no TCP port 81 (its TCP ports: 80)", r.stderr)

    def test_without_a_waypoint_http_is_not_evaluated(self):
        text = self.check("default/a", "default/a:8080", "--path", "/admin", json_out=False)
        self.assertTrue(text.startswith("decision: allow\n"), text)
        self.assertIn("L7 rules are not evaluated: no waypoint serves default/a", text)
        r = run(AMBITCTL, "check", "default/a", "backend/api:80", "--header", "no colon",
                "--admin-socket", self.n1.admin_socket, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("is not 'name: value'", r.stderr)


if __name__ == "__main__":
    unittest.main()
