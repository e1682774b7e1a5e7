"""End to end through a real ambit-waypoint: a (node1) calls b (node2), which uses the waypoint
backend/waypoint; the waypoint's pod wp (node3) is served by ambit-waypoint, which node3's ambitd
starts and supervises for it. node1's tunnel sends
a's connection over HBONE to wp, ambit-waypoint parses each HTTP request, applies the
AuthorizationPolicy attached to the waypoint (targetRefs: its Gateway) and forwards what it allows
over HBONE, with the waypoint's own identity, to b's tunnel, which accepts it only because it comes
from the waypoint (bypass closed). Real clients in the pods: curl and Python's http.client.
"""

import json
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jwt_issuer import WAYPOINT_REQUEST_AUTHN, Issuer  # noqa: E402
from topology import (CLIENT, ECHO_HTTP_APP, SERVER, WAYPOINT_GATEWAY,  # noqa: E402
                      Topology, build_dir, run, wait_listening, with_labels)
import subprocess  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
ISSUER = "https://issuer.ambit.test"
WAYPOINT_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"

GATEWAY = WAYPOINT_GATEWAY

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-paths
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/web"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/public/*"]
"""


# /secure/* needs a request principal of the issuer (any valid token); /secure/admin* the group.
JWT_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: secure-paths
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        paths: ["/secure/*"]
        notPaths: ["/secure/admin*"]
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        paths: ["/secure/admin*"]
    when:
    - key: request.auth.claims[group]
      values: ["admins"]
"""




# The service in front of b, bound to the waypoint: port 80 declared HTTP (by name), 7000 declared
# TCP (appProtocol), 7001 undeclared (detected from the bytes).
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: backend
  labels:
    istio.io/use-waypoint: waypoint
spec:
  clusterIP: {vip}
  selector:
    app: b
  ports:
  - name: http-web
    port: 80
    targetPort: 8080
  - name: echo
    appProtocol: tcp
    port: 7000
    targetPort: 7000
  - name: echo-auto
    port: 7001
    targetPort: 7001
"""

# L4 rules for the TCP ports, attached to the service: apply to traffic addressed to it.
TCP_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-tcp
  namespace: backend
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/web"]
    to:
    - operation:
        ports: ["7000", "7001"]
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/public/*"]
"""



KEEPALIVE_CLIENT = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
out = []
for path in ("/public/one", "/private/two", "/public/three"):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    out.append([r.status, json.loads(body)["path"] if r.status == 200 else body])
print(json.dumps(out))
"""




class WaypointL7Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("l7")
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
        # m's node has not caught up: it does not know b uses the waypoint and sends m's traffic
        # straight to b's tunnel (the bypass attempt).
        cls.m = t.add_pod("m", namespace="default", service_account="web", node="node4")
        cls.vip = f"198.18.{t.subnet}.200"
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node3")
        # The issuer the RequestAuthentication trusts, and one with its name and key id but
        # another key: its tokens are forgeries.
        cls.issuer = Issuer(ISSUER, sub="alice", aud="api", group="users")
        cls.forger = Issuer(ISSUER, sub="alice", aud="api", group="users")
        use = {"istio.io/use-waypoint": "waypoint"}
        view = "---\n".join([
            cls.a.yaml(), with_labels(cls.b, use),
            with_labels(cls.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
            GATEWAY, POLICY, SERVICE.format(vip=cls.vip), TCP_POLICY,
            WAYPOINT_REQUEST_AUTHN.format(issuer=ISSUER, jwks=cls.issuer.jwks),
            JWT_POLICY.format(issuer=ISSUER)])
        # The topology's agents share CA material: one trust domain.
        cls.n1, cls.n2, cls.n3 = t.add_agent("node1"), t.add_agent("node2"), t.add_agent("node3")
        for n in (cls.n1, cls.n2, cls.n3):
            n.write_config("pods.yaml", view)
        cls.n4 = t.add_agent("node4")
        cls.n4.write_config("pods.yaml", "---\n".join([cls.m.yaml(), cls.b.yaml()]))
        cls.n1.start(wait_pods=[cls.a])
        cls.n2.start(wait_pods=[cls.b])
        cls.n3.start(wait_pods=[cls.wp])
        cls.n4.start(wait_pods=[cls.m])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
        cls.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")
        cls.n3.wait_log(f"certificate {WAYPOINT_ID} valid")
        cls.srv = cls.b.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"],
                              stdout=__import__("subprocess").PIPE, text=True)
        cls.srv.stdout.readline()
        cls.n4.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def curl(self, *args):
        r = self.a.run(["curl", "-sS", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                        *args])
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body, r.stderr

    def test_allowed_request_reaches_the_pod_through_the_waypoint(self):
        code, body, err = self.curl(f"http://{self.b.ip4}:8080/public/index")
        self.assertEqual(code, 200, err)
        seen = json.loads(body)
        self.assertEqual(seen["path"], "/public/index")
        # b's tunnel delivered it from the waypoint's pod: the waypoint forwarded it.
        self.assertEqual(seen["client"], self.wp.ip4)
        self.n3.wait_log("path=/public/index")

    def test_path_rule_denies_with_403(self):
        code, body, _ = self.curl(f"http://{self.b.ip4}:8080/private")
        self.assertEqual(code, 403)
        self.assertEqual(body, "RBAC: access denied")

    def test_method_rule_denies_with_403(self):
        code, body, _ = self.curl("-X", "DELETE", f"http://{self.b.ip4}:8080/public/x")
        self.assertEqual(code, 403)

    def test_http2_prior_knowledge(self):
        code, body, err = self.curl("--http2-prior-knowledge",
                                    f"http://{self.b.ip4}:8080/public/h2")
        self.assertEqual(code, 200, err)
        self.assertEqual(json.loads(body)["path"], "/public/h2")

    def test_keep_alive_requests_decided_one_by_one(self):
        # One connection, three requests: each is decided on its own, and a denial does not end
        # the connection.
        r = self.a.python(KEEPALIVE_CLIENT, self.b.ip4, 8080)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), [[200, "/public/one"], [403, "RBAC: access denied"],
                                                [200, "/public/three"]])

    def echo_server(self, port):
        srv = self.b.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", str(port), "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        return srv

    def echo(self, pod, host, port, payload):
        r = pod.python(CLIENT, host, port, payload)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def test_service_addressed_request_goes_to_an_endpoint(self):
        code, body, err = self.curl(f"http://{self.vip}/public/svc")
        self.assertEqual(code, 200, err)
        self.assertEqual(json.loads(body)["path"], "/public/svc")
        code, body, _ = self.curl(f"http://{self.vip}/private")
        self.assertEqual(code, 403)

    def test_declared_tcp_port_passes_at_l4(self):
        srv = self.echo_server(7000)
        got = self.echo(self.a, self.vip, 7000, "GET / not-http-at-all")
        srv.wait(timeout=10)
        self.assertIsNotNone(got)
        self.assertEqual(got["reply"], "echo:GET / not-http-at-all")

    def test_undeclared_port_detects_tcp(self):
        srv = self.echo_server(7001)
        got = self.echo(self.a, self.vip, 7001, "binary hello")
        srv.wait(timeout=10)
        self.assertIsNotNone(got)
        self.assertEqual(got["reply"], "echo:binary hello")

    def test_bypass_straight_to_the_pods_tunnel_is_refused(self):
        # m's tunnel dials b's tunnel directly with m's own identity: b accepts only the waypoint.
        code, _, _ = self.curl_from(self.m, f"http://{self.b.ip4}:8080/public/index")
        self.assertEqual(code, 0)
        self.n2.wait_log("uses waypoint backend/waypoint")

    def test_smuggling_is_refused_with_400(self):
        raw = ("POST /public/x HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               "GET /private HTTP/1.1\r\nHost: b\r\n\r\n")
        r = self.a.python(RAW_CLIENT, self.b.ip4, 8080, raw)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("HTTP/1.1 400"), r.stdout)
        self.assertNotIn("/private", r.stdout)

    def test_python_h2_client_two_streams(self):
        r = self.a.python(H2_CLIENT, self.b.ip4, 8080, self.issuer.token())
        self.assertEqual(r.returncode, 0, r.stderr)
        (one_status, one_body), (two_status, two_body) = json.loads(r.stdout)
        self.assertEqual(one_status, 200)
        self.assertEqual(json.loads(one_body)["path"], "/secure/h2-one")
        self.assertEqual((two_status, two_body), (403, "RBAC: access denied"))

    def test_malformed_request_is_400(self):
        raw = "GET /public/x HTTP/1.1\r\nHost: b\r\nno colon here\r\n\r\n"
        r = self.a.python(RAW_CLIENT, self.b.ip4, 8080, raw)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("HTTP/1.1 400"), r.stdout)

    def test_metrics_count_requests_by_code(self):
        self.curl(f"http://{self.b.ip4}:8080/private/metrics")
        text = self.n3.metrics()
        self.assertRegex(text, r'istio_requests_total\{[^}]*response_code="403"[^}]*\} [1-9]')

    def test_process_is_started_by_ambitd_for_the_waypoint_pod(self):
        out = run("pgrep", "-f", "--", f"ambit-waypoint .*--control-socket {self.n3.run_dir}/",
                  check=False).stdout.split()
        self.assertEqual(len(out), 1, "one ambit-waypoint for node3's waypoint pod")
        # node2 has no waypoint pod: no waypoint process there.
        out = run("pgrep", "-f", "--", f"ambit-waypoint .*--control-socket {self.n2.run_dir}/",
                  check=False).stdout.split()
        self.assertEqual(out, [])

    def test_valid_token_passes_and_its_claim_reaches_the_app(self):
        code, body, err = self.curl("-H", f"authorization: Bearer {self.issuer.token()}",
                                    f"http://{self.b.ip4}:8080/secure/data")
        self.assertEqual(code, 200, err)
        seen = json.loads(body)
        self.assertEqual(seen["group"], "users")
        self.n3.wait_log(f"jwt_principal={ISSUER}/alice")

    def test_forged_claim_header_without_token_never_reaches_the_app(self):
        code, body, err = self.curl("-H", "x-jwt-group: admins",
                                    f"http://{self.b.ip4}:8080/public/forged")
        self.assertEqual(code, 200, err)
        self.assertIsNone(json.loads(body)["group"])

    def test_missing_token_is_denied_by_the_request_principal_rule(self):
        code, body, _ = self.curl(f"http://{self.b.ip4}:8080/secure/data")
        self.assertEqual((code, body), (403, "RBAC: access denied"))

    def test_expired_token_is_401(self):
        past = int(time.time()) - 3600
        code, body, _ = self.curl("-H", f"authorization: Bearer "
                                  f"{self.issuer.token(iat=past - 60, exp=past)}",
                                  f"http://{self.b.ip4}:8080/secure/data")
        self.assertEqual((code, body), (401, "Jwt is expired"))

    def test_wrong_audience_is_403(self):
        other = self.issuer.token(aud="other")
        code, body, _ = self.curl("-H", f"authorization: Bearer {other}",
                                  f"http://{self.b.ip4}:8080/secure/data")
        self.assertEqual((code, body), (403, "Audiences in Jwt are not allowed"))

    def test_wrong_key_is_401(self):
        code, body, _ = self.curl("-H", f"authorization: Bearer {self.forger.token()}",
                                  f"http://{self.b.ip4}:8080/secure/data")
        self.assertEqual((code, body), (401, "Jwt verification fails"))

    def test_group_claim_rule(self):
        url = f"http://{self.b.ip4}:8080/secure/admin/x"
        code, body, _ = self.curl("-H", f"authorization: Bearer {self.issuer.token()}", url)
        self.assertEqual((code, body), (403, "RBAC: access denied"))
        admin = self.issuer.token(group="admins")
        code, _, err = self.curl("-H", f"authorization: Bearer {admin}", url)
        self.assertEqual(code, 200, err)

    def test_token_over_http2(self):
        code, body, err = self.curl("--http2-prior-knowledge", "-H",
                                    f"authorization: Bearer {self.issuer.token()}",
                                    f"http://{self.b.ip4}:8080/secure/h2")
        self.assertEqual(code, 200, err)
        code, body, _ = self.curl("--http2-prior-knowledge", f"http://{self.b.ip4}:8080/secure/h2")
        self.assertEqual(code, 403)

    def curl_from(self, pod, *args):
        r = pod.run(["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *args])
        return int(r.stdout or 0), r.stdout, r.stderr


# One h2c connection (prior knowledge) with Python's h2: two requests on two streams, the answers
# by stream: [status, body].
H2_CLIENT = r"""
import json, socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
auth = sys.argv[3]
streams = {}
for path in ("/secure/h2-one", "/private/h2-two"):
    sid = c.get_next_available_stream_id()
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"),
               (":authority", sys.argv[1])]
    if auth:
        headers.append(("authorization", "Bearer " + auth))
    c.send_headers(sid, headers, end_stream=True)
    streams[sid] = [0, b""]
s.sendall(c.data_to_send())
done = set()
while len(done) < len(streams):
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            streams[e.stream_id][0] = int(dict(e.headers)[b":status"])
        elif isinstance(e, h2.events.DataReceived):
            streams[e.stream_id][1] += e.data
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded):
            done.add(e.stream_id)
    s.sendall(c.data_to_send())
print(json.dumps([[st, body.decode()] for st, body in streams.values()]))
"""

RAW_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(sys.argv[3].encode())
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"""


if __name__ == "__main__":
    unittest.main()
