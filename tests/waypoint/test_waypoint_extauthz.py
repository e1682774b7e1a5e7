#!/usr/bin/python3
"""External authorization (CUSTOM AuthorizationPolicy, envoyExtAuthzHttp) through the waypoint's
HTTP engine, with real clients, on loopback only (no root needed).

Each test starts tests/authorizers/http_authz.py (answers by the checked request's `x-ext-authz`
header, logs every check it gets as JSON), a Python upstream and `waypoint_harness` with
`--ext-authz` providers pointing at the authorizer, then checks what the client, the upstream and
the authorizer saw: curl, Python http.client and the h2 library.
"""

import http.client
import json
import os
import subprocess
import tempfile
import time
import unittest

from test_waypoint_http import (LOOPBACK, TIMEOUT, Harness, Upstream, h2_request,
                                refusing_port, wait_for)

AUTHORIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "../authorizers/http_authz.py")
DENY_BODY = b'denied by ext_authz for not found header "x-ext-authz: allow" in the request'


class Authorizer:
    """tests/authorizers/http_authz.py on an ephemeral loopback port."""

    def __init__(self):
        fd, self.log = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)
        self.proc = subprocess.Popen(["/usr/bin/python3", AUTHORIZER, "--listen",
                                      f"{LOOPBACK}:0", "--log", self.log],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError("http_authz.py did not start: %r" % line)
        self.port = int(line.split()[1])

    def checks(self):
        with open(self.log, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()

    def close(self):
        self.stop()
        os.unlink(self.log)


def curl(port, path, headers=(), method=None, data=None, http2=False):
    """Runs curl; returns (status, headers as a lower-case list of pairs, body)."""
    cmd = ["curl", "-s", "-i", "--max-time", str(TIMEOUT), "-H", "Host: svc.default"]
    if http2:
        cmd.append("--http2-prior-knowledge")
    for h in headers:
        cmd += ["-H", h]
    if method:
        cmd += ["-X", method]
    if data is not None:
        cmd += ["--data-binary", "@-"]
    out = subprocess.run(cmd + [f"http://{LOOPBACK}:{port}{path}"], input=data,
                         capture_output=True, timeout=TIMEOUT + 5, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hs = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hs.append((k.strip().lower(), v.strip()))
    return status, hs, body


def header(hs, name):
    return [v for k, v in hs if k == name]


class ExtAuthzTestBase(unittest.TestCase):
    POLICY = "CUSTOM ext provider=http-authz\n"
    # The provider's settings after name, kind and addr.
    PROVIDER = ("headers=x-ext-authz|x-expect-body,upstream=x-ext-authz-upstream,"
                "down_allow=x-ext-authz-check-result,timeout=2s")

    def provider_args(self):
        return ["--ext-authz", f"name=http-authz,kind=http,addr={LOOPBACK}:{self.authz.port},"
                               + self.PROVIDER]

    def setUp(self):
        self.authz = Authorizer()
        self.addCleanup(self.authz.close)
        self.upstream = Upstream()
        self.addCleanup(self.upstream.close)
        self.wp = Harness(self.upstream.port, self.POLICY, self.provider_args())
        self.addCleanup(self.wp.close)

    def tearDown(self):
        if self.wp.proc.poll() is not None:
            self.fail("waypoint_harness exited: " + self.wp.stderr()[-2000:])

    def upstream_headers(self, i=-1):
        return dict(self.upstream.requests[i]["headers"])


class ExtAuthzHttpTest(ExtAuthzTestBase):
    def test_allow_adds_upstream_and_downstream_headers(self):
        status, hs, body = curl(self.wp.port, "/api?q=1", ["x-ext-authz: allow"])
        self.assertEqual(status, 200, body)
        self.assertEqual(header(hs, "x-ext-authz-check-result"), ["allowed"])
        self.assertEqual(len(self.upstream.requests), 1)
        up = self.upstream_headers()
        self.assertEqual(up.get("x-ext-authz-upstream"), "added")
        checks = self.authz.checks()
        self.assertEqual(len(checks), 1)
        self.assertEqual(checks[0]["method"], "GET")
        self.assertEqual(checks[0]["path"], "/api?q=1")
        self.assertEqual(checks[0]["headers"]["host"], "svc.default")
        self.assertEqual(checks[0]["headers"]["content-length"], "0")
        self.assertTrue(wait_for(lambda: any("ext_authz=http-authz:allow:" in l
                                             for l in self.wp.access_log())), self.wp.stderr())

    def test_deny_passes_the_authorizers_status_headers_and_body(self):
        status, hs, body = curl(self.wp.port, "/api")
        self.assertEqual(status, 403)
        self.assertEqual(header(hs, "x-ext-authz-check-result"), ["denied"])
        self.assertEqual(body, DENY_BODY)
        self.assertEqual(self.upstream.requests, [])
        self.assertTrue(wait_for(lambda: any("details=ext_authz_denied" in l and
                                             "ext_authz=http-authz:deny:" in l
                                             for l in self.wp.access_log())), self.wp.stderr())

    def test_deny_with_a_custom_status(self):
        status, hs, body = curl(self.wp.port, "/api", ["x-ext-authz: deny-418"])
        self.assertEqual(status, 418)
        self.assertEqual(header(hs, "x-teapot"), ["yes"])
        self.assertEqual(body, b"short and stout")
        # The authorizer's content-type replaces the waypoint's default: one header, not two.
        self.assertEqual(header(hs, "content-type"), ["text/plain"])
        # Envoy rewrites Server: the authorizer's does not reach the client.
        self.assertNotIn("http-authz-test", " ".join(header(hs, "server")))

    def test_authorizer_5xx_and_garbage_are_errors_answered_403(self):
        for mode in ("error", "garbage"):
            status, hs, body = curl(self.wp.port, "/api", [f"x-ext-authz: {mode}"])
            self.assertEqual(status, 403, mode)
            self.assertEqual(body, b"", mode)
            self.assertEqual(header(hs, "x-teapot"), [])
        self.assertEqual(self.upstream.requests, [])
        self.assertTrue(wait_for(lambda: sum("details=ext_authz_error" in l
                                             for l in self.wp.access_log()) == 2),
                        self.wp.stderr())

    def test_http_client_and_h2(self):
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("POST", "/items", body=b"abc",
                  headers={"Host": "svc.default", "x-ext-authz": "allow"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(r.read())["body_len"], 3)
        c.request("DELETE", "/items/1", headers={"Host": "svc.default"})
        r = c.getresponse()
        self.assertEqual(r.status, 403)
        self.assertEqual(r.read(), DENY_BODY)
        c.close()
        results = h2_request(self.wp.port, [
            ("GET", "/h2/ok", [("x-ext-authz", "allow")], b""),
            ("PUT", "/h2/no", [("x-ext-authz", "deny-418")], b"data"),
            ("GET", "/h2/deny", [], b""),
        ])
        self.assertEqual(results[0][0], 200)
        self.assertEqual(results[0][1].get("x-ext-authz-check-result"), "allowed")
        self.assertEqual(results[1][0], 418)
        self.assertEqual(results[1][1].get("x-teapot"), "yes")
        self.assertEqual(results[1][2], b"short and stout")
        self.assertEqual(results[2][0], 403)
        self.assertEqual(results[2][2], DENY_BODY)
        methods = [(c["method"], c["path"]) for c in self.authz.checks()]
        self.assertIn(("POST", "/items"), methods)
        self.assertIn(("DELETE", "/items/1"), methods)
        self.assertIn(("PUT", "/h2/no"), methods)
        # Without includeRequestBodyInCheck the body stays with the waypoint.
        self.assertTrue(all(c["body_len"] == 0 and c["headers"]["content-length"] == "0"
                            for c in self.authz.checks()))

    def test_keep_alive_one_connection_for_many_checks(self):
        for i in range(6):
            status, _, _ = curl(self.wp.port, f"/k/{i}", ["x-ext-authz: allow"])
            self.assertEqual(status, 200)
        peers = {c["peer"] for c in self.authz.checks()}
        self.assertEqual(len(self.authz.checks()), 6)
        self.assertEqual(len(peers), 1, peers)

    def test_metrics_count_checks_by_result(self):
        curl(self.wp.port, "/m", ["x-ext-authz: allow"])
        curl(self.wp.port, "/m")
        curl(self.wp.port, "/m")
        curl(self.wp.port, "/m", ["x-ext-authz: error"])
        m = self.wp.metrics()
        self.assertIn('ambit_waypoint_ext_authz_checks_total{provider="http-authz",'
                      'result="allow"} 1', m)
        self.assertIn('ambit_waypoint_ext_authz_checks_total{provider="http-authz",'
                      'result="deny"} 2', m)
        self.assertIn('ambit_waypoint_ext_authz_checks_total{provider="http-authz",'
                      'result="error"} 1', m)
        self.assertIn("# TYPE ambit_waypoint_ext_authz_duration_milliseconds histogram", m)
        self.assertRegex(m, r'ambit_waypoint_ext_authz_duration_milliseconds_count'
                            r'\{provider="http-authz"\} 4')


class ExtAuthzHeadersTest(ExtAuthzTestBase):
    PROVIDER = ("headers=x-ext-authz|x-custom-*,add=x-added:fixed|x-ext-authz:allow,"
                "path_prefix=/check,down_deny=x-ext-authz-check-result")

    def test_path_prefix_and_which_headers_reach_the_authorizer(self):
        status, _, _ = curl(self.wp.port, "/api/v1?x=1&y=2",
                            ["Authorization: Bearer secret", "Cookie: c=1", "x-custom-a: A",
                             "x-other: o", "x-ext-authz: deny"])
        # includeAdditionalHeadersInCheck overrides the client's x-ext-authz.
        self.assertEqual(status, 200)
        check = self.authz.checks()[0]
        self.assertEqual(check["path"], "/check/api/v1?x=1&y=2")
        h = check["headers"]
        self.assertEqual(h.get("authorization"), "Bearer secret")
        self.assertEqual(h.get("x-custom-a"), "A")
        self.assertEqual(h.get("x-added"), "fixed")
        self.assertEqual(h.get("x-ext-authz"), "allow")
        self.assertNotIn("cookie", h)
        self.assertNotIn("x-other", h)
        self.assertNotIn("user-agent", h)
        self.assertEqual(h.get("host"), "svc.default")
        # headersToUpstreamOnAllow unset: nothing from the answer goes upstream.
        self.assertNotIn("x-ext-authz-upstream", self.upstream_headers())


class ExtAuthzDenyHeadersTest(ExtAuthzTestBase):
    PROVIDER = "headers=x-ext-authz,down_deny=x-ext-authz-check-result"

    def test_only_listed_headers_reach_the_client_on_deny(self):
        status, hs, body = curl(self.wp.port, "/x", ["x-ext-authz: deny-418"])
        self.assertEqual(status, 418)
        self.assertEqual(header(hs, "x-teapot"), [])
        self.assertEqual(body, b"short and stout")
        status, hs, body = curl(self.wp.port, "/x")
        self.assertEqual(status, 403)
        self.assertEqual(header(hs, "x-ext-authz-check-result"), ["denied"])


class ExtAuthzFailureTest(ExtAuthzTestBase):
    """Two providers, two policies: one fails closed with statusOnError 503, one fails open."""

    POLICY = ("CUSTOM closed provider=closed paths=/closed/*\n"
              "CUSTOM open provider=open paths=/open/*\n")

    def provider_args(self):
        a = f"addr={LOOPBACK}:{self.authz.port},headers=x-ext-authz"
        return ["--ext-authz", f"name=closed,kind=http,{a},timeout=300ms,status_on_error=503",
                "--ext-authz", f"name=open,kind=http,{a},timeout=300ms,fail_open=true"]

    def test_timeout(self):
        start = time.time()
        status, _, body = curl(self.wp.port, "/closed/a", ["x-ext-authz: hang"])
        took = time.time() - start
        self.assertEqual(status, 503)
        self.assertEqual(body, b"")
        self.assertLess(took, 2.5)
        self.assertGreaterEqual(took, 0.25)
        status, _, _ = curl(self.wp.port, "/open/a", ["x-ext-authz: hang"])
        self.assertEqual(status, 200)
        self.assertEqual([r["target"] for r in self.upstream.requests], ["/open/a"])
        self.assertTrue(wait_for(lambda: any("ext_authz=open:failure_mode_allowed:" in l
                                             for l in self.wp.access_log())), self.wp.stderr())
        self.assertTrue(any("ext_authz=closed:error:" in l and "status=503" in l
                            for l in self.wp.access_log()))

    def test_two_providers_each_for_its_own_policy(self):
        self.assertEqual(curl(self.wp.port, "/closed/x", ["x-ext-authz: allow"])[0], 200)
        self.assertEqual(curl(self.wp.port, "/open/x", ["x-ext-authz: allow"])[0], 200)
        self.assertEqual(curl(self.wp.port, "/neither")[0], 200)  # no CUSTOM applies
        self.assertEqual(len(self.authz.checks()), 2)
        m = self.wp.metrics()
        self.assertIn('ambit_waypoint_ext_authz_checks_total{provider="closed",result="allow"} 1',
                      m)
        self.assertIn('ambit_waypoint_ext_authz_checks_total{provider="open",result="allow"} 1', m)

    def test_refused_when_the_authorizer_is_gone(self):
        self.authz.stop()
        status, _, body = curl(self.wp.port, "/closed/r", ["x-ext-authz: allow"])
        self.assertEqual(status, 503)
        status, _, _ = curl(self.wp.port, "/open/r", ["x-ext-authz: allow"])
        self.assertEqual(status, 200)
        self.assertEqual([r["target"] for r in self.upstream.requests], ["/open/r"])

    def test_refused_from_the_start(self):
        port = refusing_port(self)
        wp = Harness(self.upstream.port, self.POLICY,
                     ["--ext-authz", f"name=closed,kind=http,addr={LOOPBACK}:{port}",
                      "--ext-authz", f"name=open,kind=http,addr={LOOPBACK}:{port},fail_open=true"])
        self.addCleanup(wp.close)
        self.assertEqual(curl(wp.port, "/closed/r")[0], 403)
        self.assertEqual(curl(wp.port, "/open/r")[0], 200)
        self.assertTrue(wait_for(lambda: any("ext_authz=closed:error:" in l
                                             for l in wp.access_log())), wp.stderr())


class ExtAuthzBodyTest(ExtAuthzTestBase):
    POLICY = ("CUSTOM whole provider=whole paths=/whole/*\n"
              "CUSTOM partial provider=partial paths=/partial/*\n")

    def provider_args(self):
        a = f"addr={LOOPBACK}:{self.authz.port},headers=x-ext-authz|x-expect-body"
        return ["--ext-authz", f"name=whole,kind=http,{a},body=16",
                "--ext-authz", f"name=partial,kind=http,{a},body=8:partial"]

    def test_body_included(self):
        status, _, _ = curl(self.wp.port, "/whole/a", ["x-ext-authz: allow-body",
                                                       "x-expect-body: hello"], data=b"hello")
        self.assertEqual(status, 200)
        self.assertEqual(self.upstream.requests[0]["body"], b"hello")
        check = self.authz.checks()[0]
        self.assertEqual(check["body"], "hello")
        self.assertEqual(check["headers"]["content-length"], "5")
        status, _, _ = curl(self.wp.port, "/whole/b", ["x-ext-authz: allow-body",
                                                       "x-expect-body: other"], data=b"hello")
        self.assertEqual(status, 403)

    def test_body_too_large_without_partial_is_413(self):
        status, _, _ = curl(self.wp.port, "/whole/big", ["x-ext-authz: allow"], data=b"x" * 17)
        self.assertEqual(status, 413)
        self.assertEqual(self.authz.checks(), [])
        self.assertEqual(self.upstream.requests, [])

    def test_partial_body_is_cut_and_the_whole_goes_upstream(self):
        status, _, _ = curl(self.wp.port, "/partial/a", ["x-ext-authz: allow-body",
                                                         "x-expect-body: 01234567"],
                            data=b"0123456789abcdef")
        self.assertEqual(status, 200)
        self.assertEqual(self.authz.checks()[0]["body"], "01234567")
        self.assertEqual(self.upstream.requests[0]["body"], b"0123456789abcdef")


class ExtAuthzOrderTest(ExtAuthzTestBase):
    POLICY = ("CUSTOM ext provider=http-authz\n"
              "DENY no-admin paths=/admin/*\n"
              "ALLOW only-get methods=GET,POST\n")

    def test_custom_then_deny_then_allow(self):
        # CUSTOM allows, DENY still denies.
        status, _, body = curl(self.wp.port, "/admin/x", ["x-ext-authz: allow"])
        self.assertEqual(status, 403)
        self.assertEqual(body, b"RBAC: access denied")
        # CUSTOM allows, ALLOW does not match.
        status, _, body = curl(self.wp.port, "/api", ["x-ext-authz: allow"], method="PUT")
        self.assertEqual(status, 403)
        self.assertEqual(body, b"RBAC: access denied")
        # CUSTOM denies first: the authorizer's answer, not RBAC's.
        status, _, body = curl(self.wp.port, "/admin/x")
        self.assertEqual(body, DENY_BODY)
        status, _, _ = curl(self.wp.port, "/api", ["x-ext-authz: allow"])
        self.assertEqual(status, 200)
        self.assertEqual([r["target"] for r in self.upstream.requests], ["/api"])
        self.assertEqual(len(self.authz.checks()), 4)


class ExtAuthzUnresolvedTest(ExtAuthzTestBase):
    PROVIDER = "headers=x-ext-authz,fail_open=true,unresolved=no-such-service"

    def test_unresolved_provider_fails_closed_without_asking(self):
        status, _, body = curl(self.wp.port, "/api", ["x-ext-authz: allow"])
        self.assertEqual(status, 403)
        self.assertEqual(body, b"RBAC: access denied")
        self.assertEqual(self.authz.checks(), [])
        self.assertIn("no-such-service", self.wp.stderr())


if __name__ == "__main__":
    unittest.main()
