"""End to end: external authorization (CUSTOM AuthorizationPolicy) through a real ambit-waypoint.

a (default/web, node1) calls services of backend/api (pod b, node2) that use the waypoint
backend/waypoint (pod wp, node3). Each service has a CUSTOM policy attached by targetRefs, each
naming one of the mesh config's extensionProviders: the Istio sample providers
`sample-ext-authz-http` (envoyExtAuthzHttp) and `sample-ext-authz-grpc` (envoyExtAuthzGrpc), and
variants for timeouts, failOpen, an authorizer that goes away and a provider whose definition
changes. The authorizers are pods in the mesh (authz/ext-authz on node2, running
tests/authorizers/http_authz.py and grpc_authz.py behind the Service ext-authz), so the waypoint
reaches them over HBONE from its pod. Real clients in a: curl (HTTP/1.1 and h2c), Python's
http.client and h2.

ExtAuthzAbuseTest: an authorizer written to hurt (a huge answer, a slowloris answer, an answer
whose header carries a bare CR or a folded line, many checks held at once): the waypoint stays up,
answers the provider's statusOnError (fails closed) and serves the next requests.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jwt_issuer import WAYPOINT_REQUEST_AUTHN, Issuer  # noqa: E402
from topology import (ECHO_HTTP_APP, Topology, rss_kib, run, waypoint_gateway,  # noqa: E402
                      with_labels)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HTTP_AUTHZ = os.path.join(REPO, "tests/authorizers/http_authz.py")
GRPC_AUTHZ = os.path.join(REPO, "tests/authorizers/grpc_authz.py")
ISSUER = "https://issuer.extauthz.test"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
WAYPOINT_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"
DENIED_BODY = 'denied by ext_authz for not found header "x-ext-authz: allow" in the request'
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
EXT_AUTHZ_HOST = "ext-authz.authz.svc.cluster.local"

# The waypoint takes traffic addressed to services bound to it.
GATEWAY = waypoint_gateway("service")

# Istio's sample providers, and variants. `{cfg}` is the definition of ext-authz-cfg, which
# test_provider_change_applies_to_the_next_requests rewrites.
MESH = """\
extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: {host}
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz", "x-expect-body"]
    includeRequestBodyInCheck:
      maxRequestBytes: 1024
      allowPartialMessage: false
    headersToUpstreamOnAllow: ["x-ext-authz-upstream", "x-ext-authz-check-result"]
    headersToDownstreamOnDeny: ["x-ext-authz-check-result", "x-teapot", "content-type"]
    headersToDownstreamOnAllow: ["x-ext-authz-check-result"]
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc:
    service: {host}
    port: 9000
    includeRequestBodyInCheck:
      maxRequestBytes: 1024
      packAsBytes: true
- name: ext-authz-timeout
  envoyExtAuthzHttp:
    service: {host}
    port: 8000
    timeout: 0.5s
    statusOnError: "503"
    includeRequestHeadersInCheck: ["x-ext-authz"]
- name: ext-authz-grpc-timeout
  envoyExtAuthzGrpc:
    service: {host}
    port: 9000
    timeout: 0.5s
    statusOnError: "503"
- name: ext-authz-failopen
  envoyExtAuthzHttp:
    service: {host}
    port: 8000
    timeout: 0.5s
    failOpen: true
    includeRequestHeadersInCheck: ["x-ext-authz"]
- name: ext-authz-down
  envoyExtAuthzHttp:
    service: ext-authz-down.authz.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
- name: ext-authz-cfg
  envoyExtAuthzHttp:
{cfg}
"""

CFG_BEFORE = """\
    service: {host}
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
""".format(host=EXT_AUTHZ_HOST)

CFG_AFTER = """\
    service: {host}
    port: 8000
    pathPrefix: /changed
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToDownstreamOnAllow: ["x-ext-authz-check-result"]
""".format(host=EXT_AUTHZ_HOST)


def mesh_yaml(cfg=CFG_BEFORE):
    return MESH.format(host=EXT_AUTHZ_HOST, cfg=cfg.rstrip("\n"))


SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels:
{labels}
spec:
  clusterIP: {vip}
  selector:
    app: {app}
  ports:
{ports}
"""


def service(name, namespace, vip, app, ports, use_waypoint=False):
    labels = "    istio.io/use-waypoint: waypoint" if use_waypoint else "    app: " + name
    return SERVICE.format(name=name, namespace=namespace, vip=vip, app=app, labels=labels,
                          ports="\n".join(f"  - name: {pname}\n    port: {port}\n"
                                          f"    targetPort: {target}"
                                          for pname, port, target in ports))


def custom_policy(name, target_service, provider, rules="  - {}"):
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: backend
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: {target_service}
  action: CUSTOM
  provider:
    name: {provider}
  rules:
{rules}
"""


# api-http: the HTTP provider for every path but /health; then DENY /admin/*; then ALLOW: /secure/*
# needs a request principal (a valid JWT), the rest is allowed.
API_HTTP_POLICIES = custom_policy("ext-authz-http", "api-http", "sample-ext-authz-http", """\
  - to:
    - operation:
        notPaths: ["/health"]""") + """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: backend
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: api-http
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: secure-needs-jwt
  namespace: backend
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: api-http
  action: ALLOW
  rules:
  - to:
    - operation:
        notPaths: ["/secure/*"]
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        paths: ["/secure/*"]
---
""" + WAYPOINT_REQUEST_AUTHN

# The backend services, all in front of b and bound to the waypoint: one per provider.
BACKENDS = [  # (service, last octet of its cluster IP, provider)
    ("api-http", 200, "sample-ext-authz-http"),
    ("api-grpc", 201, "sample-ext-authz-grpc"),
    ("api-timeout", 202, "ext-authz-timeout"),
    ("api-grpc-timeout", 203, "ext-authz-grpc-timeout"),
    ("api-failopen", 204, "ext-authz-failopen"),
    ("api-down", 205, "ext-authz-down"),
    ("api-cfg", 206, "ext-authz-cfg"),
]


# A client in a pod: one request with Python's http.client per argv[3] entry (a JSON list of
# [method, path, {headers}, body]) on one keep-alive connection to argv[1]:argv[2]; prints
# [[status, {headers}, body], ...].
HTTP_CLIENT = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=15)
out = []
for method, path, headers, body in json.loads(sys.argv[3]):
    c.request(method, path, body=body.encode() if body is not None else None, headers=headers)
    r = c.getresponse()
    out.append([r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()])
print(json.dumps(out))
"""

# One h2c connection (prior knowledge) with Python's h2: every request of argv[3] (a JSON list of
# [path, {headers}]) on its own stream, all sent at once; prints [[status, {headers}, body], ...]
# in the order given.
H2_CLIENT = r"""
import json, socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=15)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
streams, order = {}, []
for path, extra in json.loads(sys.argv[3]):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                         (":authority", sys.argv[1])] + list(extra.items()), end_stream=True)
    streams[sid] = [0, {}, b""]
    order.append(sid)
s.sendall(c.data_to_send())
done = set()
while len(done) < len(streams):
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            h = {k.decode(): v.decode() for k, v in e.headers}
            streams[e.stream_id][0] = int(h.pop(":status"))
            streams[e.stream_id][1] = h
        elif isinstance(e, h2.events.DataReceived):
            streams[e.stream_id][2] += e.data
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            done.add(e.stream_id)
    s.sendall(c.data_to_send())
print(json.dumps([[streams[i][0], streams[i][1], streams[i][2].decode()] for i in order]))
"""


def read_checks(path):
    """The checks an authorizer logged (one JSON object a line), oldest first."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def http_check_headers(check):
    """The headers of a check the HTTP authorizer logged, as {lower-case name: value}."""
    headers = check.get("headers") or {}
    if isinstance(headers, dict):
        return {k.lower(): v for k, v in headers.items()}
    return {k.lower(): v for k, v in headers}


def grpc_http(check):
    """attributes.request.http of a CheckRequest the gRPC authorizer logged (JSON names)."""
    return check.get("attributes", {}).get("request", {}).get("http", {})


def metric_value(text, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def start_authorizer(pod, script, port, log):
    """Starts a test authorizer in `pod` and waits for its `listening <port>` line."""
    proc = pod.popen(["/usr/bin/python3", script, "--listen", f"0.0.0.0:{port}", "--log", log],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        proc.kill()
        raise AssertionError(f"{script} did not start: {line!r} {proc.stderr.read()}")
    return proc


def wait_for(predicate, timeout, interval=0.2):
    """predicate()'s first true value within timeout seconds, else its last value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(interval)


class ExtAuthzTopology:
    """a (node1) -> services of b (node2) bound to the waypoint wp (node3); authorizer pods on
    node2. Sets attributes on `cls`."""

    @staticmethod
    def set_up(cls, name, extra_pods, backends, mesh, extra_yaml):
        t = cls.topo = Topology(name)
        t.__enter__()
        try:
            cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint",
                               node="node3")
            cls.extra = {}
            for pod_name, sa in extra_pods:
                cls.extra[pod_name] = t.add_pod(pod_name, namespace="authz", service_account=sa,
                                                node="node2")
            cls.vips = {svc: f"198.18.{t.subnet}.{octet}" for svc, octet, _ in backends}
            docs = [cls.a.yaml(), cls.b.yaml(),
                    with_labels(cls.wp, {GATEWAY_LABEL: "waypoint"}), GATEWAY]
            docs += [p.yaml() for p in cls.extra.values()]
            for svc, _, _ in backends:
                docs.append(service(svc, "backend", cls.vips[svc], "b", [("http", 80, 8080)],
                                    use_waypoint=True))
            docs += extra_yaml(cls)
            cls.view = "---\n".join(docs)
            cls.n1, cls.n2, cls.n3 = (t.add_agent("node1"), t.add_agent("node2"),
                                      t.add_agent("node3"))
            for n in (cls.n1, cls.n2, cls.n3):
                n.write_config("pods.yaml", cls.view)
                n.write_config("mesh.yaml", mesh)
            cls.n1.start(wait_pods=[cls.a])
            cls.n2.start(wait_pods=[cls.b] + list(cls.extra.values()))
            cls.n3.start(wait_pods=[cls.wp])
            cls.n1.wait_log(f"certificate {WEB_ID} valid")
            cls.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")
            cls.n3.wait_log(f"certificate {WAYPOINT_ID} valid")
            cls.app = cls.b.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080", "--headers"],
                                  stdout=subprocess.PIPE, text=True)
            if "listening" not in cls.app.stdout.readline():
                raise AssertionError("b's application did not start")
        except BaseException:
            t.close()
            raise

    @staticmethod
    def waypoint_pid(cls):
        out = run("pgrep", "-f", "--",
                  f"ambit-waypoint .*--control-socket {cls.n3.run_dir}/waypoint/dataplane.sock",
                  check=False).stdout.split()
        return int(out[0]) if len(out) == 1 else None


class ClientMixin:
    def curl(self, url, *args, headers=None, pod=None, timeout=15):
        """(status, {response headers}, body, seconds) of one curl request from a (or pod)."""
        pod = pod or self.a
        argv = ["curl", "-sS", "-m", str(timeout), "-D", "/dev/stderr", "-o", "/dev/stdout",
                "-H", "Expect:", "-w", "\n%{http_code} %{time_total}"]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        r = pod.run(argv + list(args) + [url], timeout=timeout + 10)
        body, _, tail = r.stdout.rpartition("\n")
        code, _, seconds = tail.partition(" ")
        response_headers = {}
        # The last header block (curl prints each response head: 100 Continue, ...).
        for block in r.stderr.replace("\r\n", "\n").split("\n\n"):
            if block.startswith("HTTP/"):
                response_headers = {}
                for line in block.splitlines()[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        response_headers[k.strip().lower()] = v.strip()
        return int(code or 0), response_headers, body, float(seconds or 0)

    def seen(self, body):
        """What b's application saw (its JSON answer)."""
        return json.loads(body)

    def unique(self, prefix="/t"):
        return f"{prefix}/{uuid.uuid4().hex[:12]}"

    def access_line(self, path, timeout=10):
        """node3's access-log line for the request to `path`."""
        def find():
            for line in self.n3.logs().splitlines():
                if "access: " in line and f"path={path} " in line:
                    return line
            return None
        line = wait_for(find, timeout)
        self.assertIsNotNone(line, f"no access log line for {path}:\n{self.n3.logs()[-3000:]}")
        return line


class WaypointExtAuthzTest(ClientMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.issuer = Issuer(ISSUER, sub="alice", aud="api", group="users")

        def extra(c):
            return [service("ext-authz", "authz", f"198.18.{c.topo.subnet}.210", "authz",
                            [("http", 8000, 8000), ("grpc", 9000, 9000)]),
                    service("ext-authz-down", "authz", f"198.18.{c.topo.subnet}.211", "authz2",
                            [("http", 8000, 8000)]),
                    API_HTTP_POLICIES.replace("{issuer}", ISSUER).replace("{jwks}",
                                                                          c.issuer.jwks)] + [
                custom_policy(f"ext-authz-{svc}", svc, provider)
                for svc, _, provider in BACKENDS if svc != "api-http"]

        ExtAuthzTopology.set_up(cls, "xa", [("authz", "ext-authz"), ("authz2", "ext-authz")],
                                BACKENDS, mesh_yaml(), extra)
        try:
            w = cls.topo.workdir
            cls.http_log, cls.grpc_log, cls.down_log = (os.path.join(w, "http-authz.jsonl"),
                                                        os.path.join(w, "grpc-authz.jsonl"),
                                                        os.path.join(w, "down-authz.jsonl"))
            authz_pod = cls.extra["authz"]
            cls.http_authz = start_authorizer(authz_pod, HTTP_AUTHZ, 8000, cls.http_log)
            cls.grpc_authz = start_authorizer(authz_pod, GRPC_AUTHZ, 9000, cls.grpc_log)
            cls.down_authz = start_authorizer(cls.extra["authz2"], HTTP_AUTHZ, 8000, cls.down_log)
            # The first request through the waypoint waits for every node to hold the services.
            url = f"http://{cls.vips['api-http']}/health"
            ok = wait_for(lambda: ClientMixin.curl(cls, url)[0] == 200, 20, 0.3)
            if not ok:
                raise AssertionError(f"no path through the waypoint:\n{cls.n3.logs()[-3000:]}")
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def url(self, svc, path):
        return f"http://{self.vips[svc]}{path}"

    def http_check_for(self, path, log=None, timeout=5):
        """The check the HTTP authorizer logged for `path` (its path may carry a prefix)."""
        log = log or self.http_log
        found = wait_for(lambda: [c for c in read_checks(log) if c.get("path", "").endswith(path)],
                         timeout)
        self.assertTrue(found, f"the authorizer logged no check for {path}")
        return found[-1]

    def grpc_check_for(self, path, timeout=5):
        found = wait_for(lambda: [c for c in read_checks(self.grpc_log)
                                  if grpc_http(c).get("path") == path], timeout)
        self.assertTrue(found, f"the gRPC authorizer logged no check for {path}")
        return found[-1]

    # ---- envoyExtAuthzHttp: sample-ext-authz-http ------------------------------------------

    def test_http_allow_reaches_the_upstream_with_the_authorizers_headers(self):
        path = self.unique()
        code, headers, body, _ = self.curl(self.url("api-http", path),
                                           headers={"x-ext-authz": "allow",
                                                    "x-not-included": "secret"})
        self.assertEqual(code, 200, body)
        seen = self.seen(body)
        self.assertEqual(seen["path"], path)
        self.assertEqual(seen["client"], self.wp.ip4)
        # headersToUpstreamOnAllow: the authorizer's header reached the upstream.
        self.assertEqual(seen["headers"].get("x-ext-authz-upstream"), "added")
        # headersToDownstreamOnAllow: the client sees the authorizer's allow header.
        self.assertEqual(headers.get("x-ext-authz-check-result"), "allowed")
        # The check carried the method, the path and the listed headers, not the others.
        check = self.http_check_for(path)
        self.assertEqual(check.get("method"), "GET")
        sent = http_check_headers(check)
        self.assertEqual(sent.get("x-ext-authz"), "allow")
        self.assertNotIn("x-not-included", sent)
        self.assertIn(f"ext_authz=sample-ext-authz-http:allow:", self.access_line(path))

    def test_http_deny_returns_the_authorizers_status_headers_and_body(self):
        path = self.unique()
        code, headers, body, _ = self.curl(self.url("api-http", path))
        self.assertEqual((code, body), (403, DENIED_BODY))
        self.assertEqual(headers.get("x-ext-authz-check-result"), "denied")
        line = self.access_line(path)
        self.assertRegex(line, r"ext_authz=sample-ext-authz-http:deny:\d")
        self.assertIn("status=403", line)

    def test_http_deny_with_a_custom_status(self):
        code, headers, body, _ = self.curl(self.url("api-http", self.unique()),
                                           headers={"x-ext-authz": "deny-418"})
        self.assertEqual((code, body), (418, "short and stout"))
        self.assertEqual(headers.get("x-teapot"), "yes")

    def test_path_outside_the_custom_rules_is_not_checked(self):
        before = len(read_checks(self.http_log))
        code, headers, body, _ = self.curl(self.url("api-http", "/health"))
        self.assertEqual(code, 200, body)
        self.assertNotIn("x-ext-authz-check-result", headers)
        self.assertEqual(len(read_checks(self.http_log)), before)

    def test_http_authorizer_error_and_garbage_fail_closed(self):
        for mode in ("error", "garbage"):
            path = self.unique()
            code, headers, body, _ = self.curl(self.url("api-http", path),
                                               headers={"x-ext-authz": mode})
            # statusOnError (Istio's default 403), not the authorizer's answer.
            self.assertEqual(code, 403, mode)
            self.assertNotEqual(body, DENIED_BODY, mode)
            self.assertNotIn("x-ext-authz-check-result", headers, mode)
            self.assertRegex(self.access_line(path), r"ext_authz=sample-ext-authz-http:error:",
                             mode)

    def test_http_client_keep_alive_each_request_checked(self):
        p1, p2, p3 = self.unique(), self.unique(), self.unique()
        requests = [["GET", p1, {"x-ext-authz": "allow"}, None],
                    ["GET", p2, {"x-ext-authz": "deny"}, None],
                    ["POST", p3, {"x-ext-authz": "allow", "content-type": "text/plain"},
                     "after a denial"]]
        r = self.a.python(HTTP_CLIENT, self.vips["api-http"], 80, json.dumps(requests))
        self.assertEqual(r.returncode, 0, r.stderr)
        (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = json.loads(r.stdout)
        self.assertEqual(s1, 200, b1)
        self.assertEqual(self.seen(b1)["headers"].get("x-ext-authz-upstream"), "added")
        self.assertEqual((s2, b2), (403, DENIED_BODY))
        self.assertEqual(s3, 200, b3)
        self.assertEqual(self.seen(b3)["body_bytes"], len("after a denial"))

    def test_http2_client_streams_checked_one_by_one(self):
        p = [self.unique() for _ in range(3)]
        for client in ("curl", "h2"):
            if client == "curl":
                got = []
                for path, mode in zip(p, ("allow", "deny", "deny-418")):
                    code, headers, body, _ = self.curl(self.url("api-http", path),
                                                       "--http2-prior-knowledge",
                                                       headers={"x-ext-authz": mode})
                    got.append([code, headers, body])
            else:
                streams = [[path, {"x-ext-authz": mode}]
                           for path, mode in zip(p, ("allow", "deny", "deny-418"))]
                r = self.a.python(H2_CLIENT, self.vips["api-http"], 80, json.dumps(streams))
                self.assertEqual(r.returncode, 0, r.stderr)
                got = json.loads(r.stdout)
            (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = got
            self.assertEqual(s1, 200, f"{client}: {b1}")
            self.assertEqual(self.seen(b1)["headers"].get("x-ext-authz-upstream"), "added")
            self.assertEqual(h1.get("x-ext-authz-check-result"), "allowed", client)
            self.assertEqual((s2, b2), (403, DENIED_BODY), client)
            self.assertEqual(h2.get("x-ext-authz-check-result"), "denied", client)
            self.assertEqual((s3, b3, h3.get("x-teapot")), (418, "short and stout", "yes"),
                             client)

    def test_body_is_sent_to_the_authorizer_when_asked(self):
        body = "the body the authorizer must see"
        path = self.unique()
        code, _, answer, _ = self.curl(self.url("api-http", path), "--data-binary", body,
                                       headers={"x-ext-authz": "allow-body",
                                                "x-expect-body": body,
                                                "content-type": "text/plain"})
        self.assertEqual(code, 200, answer)
        self.assertEqual(self.seen(answer)["body_bytes"], len(body))  # forwarded whole
        self.assertEqual(self.http_check_for(path).get("body"), body)
        code, _, answer, _ = self.curl(self.url("api-http", self.unique()), "--data-binary",
                                       body, headers={"x-ext-authz": "allow-body",
                                                      "x-expect-body": "something else"})
        self.assertEqual(code, 403, answer)
        # More than maxRequestBytes without allowPartialMessage: 413, the check never starts.
        path = self.unique()
        code, _, answer, _ = self.curl(self.url("api-http", path), "--data-binary", "x" * 4000,
                                       headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 413, answer)
        time.sleep(0.3)
        self.assertFalse([c for c in read_checks(self.http_log) if c.get("path") == path])

    def test_custom_allow_then_deny_policy_denies(self):
        # Istio's order: CUSTOM first, then DENY, then ALLOW. The authorizer allows /admin/x,
        # the DENY policy still denies it.
        path = self.unique("/admin")
        code, _, body, _ = self.curl(self.url("api-http", path), headers={"x-ext-authz": "allow"})
        self.assertEqual((code, body), (403, "RBAC: access denied"))
        self.http_check_for(path)  # asked first
        # The authorizer's denial comes first too: its answer, not RBAC's.
        code, _, body, _ = self.curl(self.url("api-http", self.unique("/admin")))
        self.assertEqual((code, body), (403, DENIED_BODY))

    def test_jwt_and_ext_authz_together(self):
        token = self.issuer.token()
        bearer = {"authorization": f"Bearer {token}"}
        path = self.unique("/secure")
        code, _, body, _ = self.curl(self.url("api-http", path),
                                     headers={**bearer, "x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)
        seen = self.seen(body)
        self.assertEqual(seen["group"], "users")  # the claim the JWT filter wrote
        self.assertEqual(seen["headers"].get("x-ext-authz-upstream"), "added")
        self.assertRegex(self.access_line(path), f"jwt_principal={re.escape(ISSUER)}/alice .*"
                         "ext_authz=sample-ext-authz-http:allow:")
        # A valid token the authorizer refuses.
        code, _, body, _ = self.curl(self.url("api-http", self.unique("/secure")), headers=bearer)
        self.assertEqual((code, body), (403, DENIED_BODY))
        # The authorizer allows, the ALLOW policy wants a request principal.
        code, _, body, _ = self.curl(self.url("api-http", self.unique("/secure")),
                                     headers={"x-ext-authz": "allow"})
        self.assertEqual((code, body), (403, "RBAC: access denied"))
        # An expired token is refused by authentication, before the authorizer is asked.
        past = int(time.time()) - 3600
        path = self.unique("/secure")
        code, _, body, _ = self.curl(self.url("api-http", path), headers={
            "authorization": f"Bearer {self.issuer.token(iat=past - 60, exp=past)}",
            "x-ext-authz": "allow"})
        self.assertEqual((code, body), (401, "Jwt is expired"))
        time.sleep(0.3)
        self.assertFalse([c for c in read_checks(self.http_log) if c.get("path") == path])

    # ---- envoyExtAuthzGrpc: sample-ext-authz-grpc ------------------------------------------

    def test_grpc_allow_applies_the_ok_response(self):
        path = self.unique()
        code, headers, body, _ = self.curl(self.url("api-grpc", path),
                                           headers={"x-ext-authz": "allow",
                                                    "x-remove-me": "please"})
        self.assertEqual(code, 200, body)
        sent = self.seen(body)["headers"]
        self.assertEqual(sent.get("x-ext-authz-upstream"), "added")
        self.assertEqual(sent.get("x-ext-authz-check-result"), "allowed")
        self.assertNotIn("x-remove-me", sent)  # headers_to_remove
        self.assertEqual(headers.get("x-ext-authz-downstream"), "added")  # response_headers_to_add
        # The CheckRequest as Envoy fills it.
        check = self.grpc_check_for(path)
        attrs = check["attributes"]
        self.assertEqual(attrs["source"].get("principal"), WEB_ID)
        self.assertEqual(attrs["destination"].get("principal"), WAYPOINT_ID)
        address = attrs["source"].get("address", {})
        address = address.get("socketAddress", address.get("socket_address", {}))
        self.assertEqual(address.get("address"), self.a.ip4)
        http = grpc_http(check)
        self.assertEqual(http.get("method"), "GET")
        self.assertEqual(http.get("headers", {}).get("x-ext-authz"), "allow")
        self.assertIn(self.vips["api-grpc"], http.get("host", ""))
        self.assertRegex(self.access_line(path), r"ext_authz=sample-ext-authz-grpc:allow:")

    def test_grpc_deny_default_and_custom(self):
        code, headers, body, _ = self.curl(self.url("api-grpc", self.unique()))
        self.assertEqual((code, body), (403, DENIED_BODY))
        self.assertEqual(headers.get("x-ext-authz-check-result"), "denied")
        path = self.unique()
        code, headers, body, _ = self.curl(self.url("api-grpc", path), "--http2-prior-knowledge",
                                           headers={"x-ext-authz": "deny-418"})
        self.assertEqual((code, body, headers.get("x-teapot")), (418, "short and stout", "yes"))
        self.assertRegex(self.access_line(path), r"ext_authz=sample-ext-authz-grpc:deny:")

    def test_grpc_error_and_garbage_fail_closed(self):
        for mode in ("error", "garbage"):
            path = self.unique()
            code, headers, body, _ = self.curl(self.url("api-grpc", path),
                                               headers={"x-ext-authz": mode})
            self.assertEqual(code, 403, mode)
            self.assertNotEqual(body, DENIED_BODY, mode)
            self.assertRegex(self.access_line(path), r"ext_authz=sample-ext-authz-grpc:error:",
                             mode)
        # The connection to the authorizer survives a failed call: the next check is answered.
        code, _, body, _ = self.curl(self.url("api-grpc", self.unique()),
                                     headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)

    def test_grpc_body_packed_as_bytes(self):
        body = "grpc body check"
        path = self.unique()
        code, _, answer, _ = self.curl(self.url("api-grpc", path), "--data-binary", body,
                                       headers={"x-ext-authz": "allow-body",
                                                "x-expect-body": body})
        self.assertEqual(code, 200, answer)
        http = grpc_http(self.grpc_check_for(path))
        self.assertTrue("rawBody" in http or "raw_body" in http, http)  # packAsBytes
        code, _, answer, _ = self.curl(self.url("api-grpc", self.unique()), "--data-binary",
                                       body, headers={"x-ext-authz": "allow-body",
                                                      "x-expect-body": "other"})
        self.assertEqual(code, 403, answer)

    # ---- timeouts, failOpen, an authorizer that goes away ----------------------------------

    def test_hang_times_out_to_status_on_error(self):
        for svc, provider in (("api-timeout", "ext-authz-timeout"),
                              ("api-grpc-timeout", "ext-authz-grpc-timeout")):
            path = self.unique()
            code, headers, body, seconds = self.curl(self.url(svc, path),
                                                     headers={"x-ext-authz": "hang"})
            self.assertEqual(code, 503, f"{provider}: {body}")
            # The provider's 500 ms bound the check, not curl's 15 s.
            self.assertGreaterEqual(seconds, 0.45, provider)
            self.assertLess(seconds, 3.0, provider)
            self.assertRegex(self.access_line(path), f"ext_authz={provider}:error:")
            # The same provider still answers the next check.
            code, _, body, _ = self.curl(self.url(svc, self.unique()),
                                         headers={"x-ext-authz": "allow"})
            self.assertEqual(code, 200, f"{provider}: {body}")

    def test_fail_open_lets_the_request_through_on_timeout(self):
        path = self.unique()
        code, _, body, seconds = self.curl(self.url("api-failopen", path),
                                           headers={"x-ext-authz": "hang"})
        self.assertEqual(code, 200, body)
        self.assertEqual(self.seen(body)["path"], path)
        self.assertLess(seconds, 3.0)
        self.assertIn("ext_authz=ext-authz-failopen:", self.access_line(path))
        # failOpen concerns errors only: the authorizer's denial still denies.
        code, _, body, _ = self.curl(self.url("api-failopen", self.unique()),
                                     headers={"x-ext-authz": "deny"})
        self.assertEqual((code, body), (403, DENIED_BODY))

    def test_stopped_authorizer_fails_closed_and_recovers(self):
        url = lambda: self.url("api-down", self.unique())  # noqa: E731
        code, _, body, _ = self.curl(url(), headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)
        cls = type(self)
        cls.down_authz.kill()
        cls.down_authz.wait(timeout=5)
        path = self.unique()
        code, headers, body, seconds = self.curl(self.url("api-down", path),
                                                 headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 403, body)  # statusOnError's default
        self.assertNotIn("x-ext-authz-check-result", headers)
        self.assertLess(seconds, 5.0)
        self.assertRegex(self.access_line(path), r"ext_authz=ext-authz-down:error:")
        cls.down_authz = start_authorizer(self.extra["authz2"], HTTP_AUTHZ, 8000, self.down_log)
        ok = wait_for(lambda: self.curl(url(), headers={"x-ext-authz": "allow"})[0] == 200, 10,
                      0.3)
        self.assertTrue(ok, "the restarted authorizer is asked again")

    # ---- observability and the wire ---------------------------------------------------------

    def test_metrics_count_checks_by_provider_and_result(self):
        def values():
            text = self.n3.metrics()
            return (metric_value(text, "ambit_waypoint_ext_authz_checks_total",
                                 provider="sample-ext-authz-http", result="allow"),
                    metric_value(text, "ambit_waypoint_ext_authz_checks_total",
                                 provider="sample-ext-authz-http", result="deny"),
                    text)
        allow0, deny0, _ = values()
        for mode in ("allow", "allow", "deny"):
            self.curl(self.url("api-http", self.unique()), headers={"x-ext-authz": mode})
        got = wait_for(lambda: (lambda v: v if v[:2] == (allow0 + 2, deny0 + 1) else None)(
            values()), 10)
        self.assertIsNotNone(got, f"checks_total did not move by (+2 allow, +1 deny) from "
                                  f"{allow0, deny0}:\n" + "\n".join(
                                      l for l in self.n3.metrics().splitlines()
                                      if "ext_authz" in l))
        self.assertRegex(got[2], r'ambit_waypoint_ext_authz_duration_milliseconds\w*\{[^}]*'
                                 r'provider="sample-ext-authz-http"')

    def test_no_plaintext_between_the_waypoint_and_the_authorizer(self):
        authz_pod = self.extra["authz"]
        pcap = os.path.join(self.topo.workdir, "wp-authz.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap,
                                 f"host {self.wp.ip4} and host {authz_pod.ip4}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)  # tcpdump needs a moment before it captures
        marker = f"/plaintext-marker-{uuid.uuid4().hex}"
        for svc, mode in (("api-http", "allow"), ("api-grpc", "allow"), ("api-http", "deny")):
            self.curl(self.url(svc, marker), headers={"x-ext-authz": mode})
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        text = run("tcpdump", "-n", "-r", pcap, "-q", check=False)
        self.assertEqual(text.returncode, 0, text.stderr)
        lines = [l for l in text.stdout.splitlines() if " IP " in l]
        # The checks happened (both authorizers logged the marker) ...
        self.http_check_for(marker)
        self.grpc_check_for(marker)
        # ... and crossed the wire, between the two pods, only as HBONE.
        self.assertTrue(lines, "nothing captured between the waypoint and the authorizer")
        for line in lines:
            self.assertRegex(line, r"\.15008[ :]", f"not HBONE: {line}")
        with open(pcap, "rb") as f:
            raw = f.read()
        self.assertNotIn(marker.encode(), raw)
        self.assertNotIn(b"x-ext-authz", raw)

    def test_provider_change_applies_to_the_next_requests(self):
        before = self.unique()
        code, headers, body, _ = self.curl(self.url("api-cfg", before),
                                           headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)
        self.assertNotIn("x-ext-authz-check-result", headers)
        self.assertEqual(self.http_check_for(before)["path"], before)
        for n in (self.n1, self.n2, self.n3):
            n.write_config("mesh.yaml", mesh_yaml(CFG_AFTER))
        paths = []

        def changed():
            paths.append(self.unique())
            self.curl(self.url("api-cfg", paths[-1]), headers={"x-ext-authz": "allow"})
            return self.http_check_for(paths[-1])["path"].startswith("/changed/")
        self.assertTrue(wait_for(changed, 20, 0.3), "the new pathPrefix never applied")
        # From then on every request uses the new definition.
        for _ in range(3):
            path = self.unique()
            code, headers, body, _ = self.curl(self.url("api-cfg", path),
                                               headers={"x-ext-authz": "allow"})
            self.assertEqual(code, 200, body)
            self.assertEqual(headers.get("x-ext-authz-check-result"), "allowed")
            self.assertEqual(self.http_check_for(path)["path"], "/changed" + path)
        # The other providers are untouched.
        code, _, body, _ = self.curl(self.url("api-http", self.unique()),
                                     headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)


# A malicious HTTP authorizer (port argv[1]): reads a check request, then answers by its
# x-ext-authz header. Every write is bounded in size and time. Prints "listening".
EVIL_AUTHZ = r"""
import socket, sys, threading, time
def head(c):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
        chunk = c.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data.decode(errors="replace")
def serve(c):
    c.settimeout(30)
    try:
        while True:
            h = head(c)
            if h is None:
                return
            mode = ""
            for line in h.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "x-ext-authz":
                    mode = v.strip()
            if mode == "allow":
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
                          b"x-ext-authz-upstream: added\r\n\r\n")
                continue
            deadline = time.time() + 20
            if mode == "huge-body":
                c.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 268435456\r\n\r\n")
                chunk = b"x" * 65536
                for _ in range(4096):
                    if time.time() > deadline:
                        break
                    c.sendall(chunk)
            elif mode == "huge-headers":
                c.sendall(b"HTTP/1.1 200 OK\r\n")
                line = b"x-ext-authz-upstream: " + b"a" * 8000 + b"\r\n"
                for _ in range(2048):
                    if time.time() > deadline:
                        break
                    c.sendall(line)
                c.sendall(b"content-length: 0\r\n\r\n")
            elif mode == "slow":
                for b in b"HTTP/1.1 200 OK\r\nx-ext-authz-upstream: added\r\n" * 10:
                    if time.time() > deadline:
                        break
                    c.sendall(bytes([b]))
                    time.sleep(0.2)
            elif mode == "cr":
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
                          b"x-ext-authz-upstream: added\rx-injected: evil\r\n\r\n")
            elif mode == "fold":
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
                          b"x-ext-authz-upstream: added\r\n x-injected: evil\r\n\r\n")
            elif mode == "nul":
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
                          b"x-ext-authz-upstream: add\x00ed\r\n\r\n")
            return
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(128)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

EVIL_MESH = """\
extensionProviders:
- name: ext-authz-evil
  envoyExtAuthzHttp:
    service: ext-authz-evil.authz.svc.cluster.local
    port: 8000
    timeout: 2s
    statusOnError: "502"
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-upstream", "x-injected"]
"""


class ExtAuthzAbuseTest(ClientMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        backends = [("api-evil", 200, "ext-authz-evil")]

        def extra(c):
            return [service("ext-authz-evil", "authz", f"198.18.{c.topo.subnet}.210", "evil",
                            [("http", 8000, 8000)]),
                    custom_policy("ext-authz-evil", "api-evil", "ext-authz-evil")]

        ExtAuthzTopology.set_up(cls, "xe", [("evil", "evil")], backends, EVIL_MESH, extra)
        try:
            cls.evil = cls.extra["evil"].popen(["/usr/bin/python3", "-c", EVIL_AUTHZ, "8000"],
                                               stdout=subprocess.PIPE, text=True)
            if "listening" not in cls.evil.stdout.readline():
                raise AssertionError("the malicious authorizer did not start")
            cls.url = f"http://{cls.vips['api-evil']}/"
            ok = wait_for(lambda: ClientMixin.curl(cls, cls.url,
                                                   headers={"x-ext-authz": "allow"})[0] == 200,
                          20, 0.3)
            if not ok:
                raise AssertionError(f"no path through the waypoint:\n{cls.n3.logs()[-3000:]}")
            cls.pid = ExtAuthzTopology.waypoint_pid(cls)
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def assert_fails_closed(self, mode, max_seconds):
        path = self.unique()
        code, _, body, seconds = self.curl(f"http://{self.vips['api-evil']}{path}",
                                           headers={"x-ext-authz": mode}, timeout=30)
        self.assertEqual(code, 502, f"{mode}: {body[:200]}")  # statusOnError
        self.assertLess(seconds, max_seconds, mode)
        self.assertNotIn("x-injected", body)
        self.assertIn("ext_authz=ext-authz-evil:error:", self.access_line(path))
        self.assert_still_serving()

    def assert_still_serving(self):
        self.assertEqual(ExtAuthzTopology.waypoint_pid(self), self.pid, "the waypoint restarted")
        code, _, body, _ = self.curl(f"http://{self.vips['api-evil']}/ok",
                                     headers={"x-ext-authz": "allow"})
        self.assertEqual(code, 200, body)
        self.assertEqual(self.seen(body)["headers"].get("x-ext-authz-upstream"), "added")

    def test_huge_answer_body(self):
        self.assert_fails_closed("huge-body", 10)
        self.assertLess(rss_kib(self.pid), 256 * 1024)

    def test_huge_answer_headers(self):
        self.assert_fails_closed("huge-headers", 10)
        self.assertLess(rss_kib(self.pid), 256 * 1024)

    def test_slowloris_answer_is_cut_by_the_timeout(self):
        # The provider's timeout (2 s) bounds the whole check, however steadily bytes trickle.
        self.assert_fails_closed("slow", 6)

    def test_header_with_a_bare_cr_or_a_fold_or_nul(self):
        for mode in ("cr", "fold", "nul"):
            self.assert_fails_closed(mode, 5)

    def test_many_slow_checks_at_once(self):
        # 40 requests held by the slowloris at the same time: each ends at the timeout with the
        # provider's statusOnError, and the waypoint serves the next one.
        results = []

        def one():
            results.append(self.curl(f"http://{self.vips['api-evil']}{self.unique()}",
                                     headers={"x-ext-authz": "slow"}, timeout=30)[0])
        threads = [threading.Thread(target=one) for _ in range(40)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        self.assertEqual(results, [502] * 40)
        self.assert_still_serving()


if __name__ == "__main__":
    unittest.main()
