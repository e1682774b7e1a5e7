#!/usr/bin/python3
"""The waypoint's gRPC ext_authz client against a real grpcio authorizer, on loopback only.

`authz_probe` runs the client's real code (nghttp2, the loop's timers, one shared connection) and
prints each answer as JSON; `tests/authorizers/grpc_authz.py` (python3-grpcio, Envoy's
Authorization/Check from the repository's protos) answers by the checked request's x-ext-authz
header and logs each CheckRequest it received, so these tests check both ends.
"""

import base64
import json
import os
import subprocess
import tempfile
import time
import unittest

from test_waypoint_http import refusing_port

BUILD = os.environ.get("AMBIT_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
PROBE = os.path.join(BUILD, "tests/waypoint/authz_probe")
AUTHORIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "../authorizers/grpc_authz.py")
LOOPBACK = "127.0.0.1"
DENY_BODY = 'denied by ext_authz for not found header "x-ext-authz: allow" in the request'


class Authorizer:
    """grpc_authz.py on loopback, logging to a file of its own."""

    def __init__(self, port=0, extra=()):
        self.log = tempfile.NamedTemporaryFile(prefix="grpc-authz-", suffix=".jsonl", delete=False)
        self.log.close()
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", AUTHORIZER, "--listen", f"{LOOPBACK}:{port}", "--log",
             self.log.name, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"grpc_authz.py did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[1])

    def entries(self):
        with open(self.log.name, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def close(self):
        self.stop()
        os.unlink(self.log.name)


def run_probe(port, *args, timeout=30):
    """Runs authz_probe to the end; returns its answers sorted by sequence number."""
    out = subprocess.run([PROBE, f"--addr={LOOPBACK}:{port}", *args], capture_output=True,
                         text=True, timeout=timeout, check=True)
    lines = out.stdout.splitlines()
    assert lines and lines[-1] == "done", out
    return sorted((json.loads(line) for line in lines[:-1]), key=lambda a: a["seq"])


class GrpcAuthzTest(unittest.TestCase):
    def setUp(self):
        self.authz = Authorizer()
        self.addCleanup(self.authz.close)

    def check(self, *args, **kw):
        answers = run_probe(self.authz.port, *args, **kw)
        self.assertEqual(len(answers), 1, answers)
        return answers[0]

    def test_allow_carries_the_authorizers_edits(self):
        a = self.check("--ext_authz=allow")
        self.assertEqual(a["outcome"], "allow", a)
        self.assertEqual(a["detail"], "gRPC OK")
        # append unset in a CheckResponse means "replace" (set); headers_to_remove is a removal.
        self.assertEqual(a["upstream_edits"], [
            {"op": "set", "name": "x-ext-authz-check-result", "value": "allowed"},
            {"op": "set", "name": "x-ext-authz-upstream", "value": "added"},
            {"op": "remove", "name": "x-remove-me", "value": ""},
        ])
        self.assertEqual(a["downstream_edits"],
                         [{"op": "set", "name": "x-ext-authz-downstream", "value": "added"}])

    def test_deny_without_a_status_is_403_with_headers_and_body(self):
        a = self.check()  # no x-ext-authz header
        self.assertEqual(a["outcome"], "deny", a)
        self.assertEqual(a["status"], 403)
        self.assertEqual(a["headers"], [["x-ext-authz-check-result", "denied"]])
        self.assertEqual(a["body"], DENY_BODY)
        self.assertEqual(a["detail"], "gRPC PERMISSION_DENIED (7)")

    def test_deny_with_a_custom_status_headers_and_body(self):
        a = self.check("--ext_authz=deny-418")
        self.assertEqual(a["outcome"], "deny", a)
        self.assertEqual(a["status"], 418)
        self.assertEqual(a["headers"], [["x-teapot", "yes"]])
        self.assertEqual(a["body"], "short and stout")

    def test_a_hanging_authorizer_times_out_at_the_provider_timeout(self):
        start = time.monotonic()
        a = self.check("--ext_authz=hang", "--timeout=300ms")
        elapsed = time.monotonic() - start
        self.assertEqual(a["outcome"], "error", a)
        self.assertTrue(a["detail"].startswith("timeout after 300ms"), a)
        self.assertGreaterEqual(a["latency_us"], 300_000)
        self.assertLess(a["latency_us"], 1_000_000)
        self.assertLess(elapsed, 5)

    def test_a_hanging_check_does_not_hold_up_the_others_on_its_connection(self):
        proc = subprocess.Popen([PROBE, f"--addr={LOOPBACK}:{self.authz.port}", "--interactive",
                                 "--ext_authz=hang", "--timeout=3s", "--concurrency=2"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            proc.stdin.write("allow\n")
            proc.stdin.flush()
            first = json.loads(proc.stdout.readline())
            self.assertEqual((first["seq"], first["outcome"]), (1, "allow"), first)
            self.assertLess(first["latency_us"], 1_000_000)
            proc.stdin.close()
            second = json.loads(proc.stdout.readline())
            self.assertEqual((second["seq"], second["outcome"]), (0, "error"), second)
            self.assertEqual(proc.stdout.readline().strip(), "done")
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()
        self.assertEqual(len({e["peer"] for e in self.authz.entries()}), 1)

    def test_garbage_is_a_malformed_answer(self):
        a = self.check("--ext_authz=garbage")
        self.assertEqual(a["outcome"], "error", a)
        self.assertEqual(a["detail"], "malformed answer: not a CheckResponse")

    def test_an_rpc_error_is_an_error_not_a_deny(self):
        a = self.check("--ext_authz=error")
        self.assertEqual(a["outcome"], "error", a)
        self.assertTrue(a["detail"].startswith("gRPC UNAVAILABLE (14)"), a)
        self.assertIn("told to fail", a["detail"])

    def test_a_refused_connection_is_an_error(self):
        answers = run_probe(refusing_port(self), "--ext_authz=allow", "--count=3", "--concurrency=3")
        self.assertEqual([a["outcome"] for a in answers], ["error"] * 3, answers)
        for a in answers:
            self.assertTrue(a["detail"].startswith("connection refused"), a)
            self.assertLess(a["latency_us"], 1_000_000)

    def test_concurrent_checks_share_one_connection(self):
        answers = run_probe(self.authz.port, "--ext_authz=allow", "--count=30",
                            "--concurrency=30")
        self.assertEqual([a["outcome"] for a in answers], ["allow"] * 30, answers)
        entries = self.authz.entries()
        self.assertEqual(len(entries), 30)
        self.assertEqual(len({e["peer"] for e in entries}), 1, "one HTTP/2 connection")
        latencies = sorted(a["latency_us"] for a in answers)
        print(f"\n30 concurrent checks: p50 {latencies[15]} us, max {latencies[-1]} us")

    def test_reconnects_after_the_authorizer_restarts(self):
        port = self.authz.port
        proc = subprocess.Popen([PROBE, f"--addr={LOOPBACK}:{port}", "--interactive",
                                 "--ext_authz=allow", "--timeout=3s"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(json.loads(proc.stdout.readline())["outcome"], "allow")
            self.authz.stop()
            # Down: the check fails at once, nothing hangs.
            proc.stdin.write("allow\n")
            proc.stdin.flush()
            down = json.loads(proc.stdout.readline())
            self.assertEqual(down["outcome"], "error", down)
            # Back on the same port: the same client dials again.
            again = Authorizer(port)
            self.addCleanup(again.close)
            proc.stdin.write("allow\n")
            proc.stdin.flush()
            up = json.loads(proc.stdout.readline())
            self.assertEqual(up["outcome"], "allow", up)
            proc.stdin.close()
            self.assertEqual(proc.stdout.readline().strip(), "done")
            self.assertEqual(proc.wait(timeout=10), 0)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()
        self.assertEqual(len(again.entries()), 1)

    def test_reconnects_after_goaway(self):
        # grpcio ends each connection with a GOAWAY after 300 ms: checks keep flowing on new ones.
        aging = Authorizer(extra=["--max-connection-age-ms=300"])
        self.addCleanup(aging.close)
        proc = subprocess.Popen([PROBE, f"--addr={LOOPBACK}:{aging.port}", "--interactive",
                                 "--ext_authz=allow", "--timeout=3s"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        answers = []
        try:
            answers.append(json.loads(proc.stdout.readline()))
            for _ in range(8):
                time.sleep(0.15)
                proc.stdin.write("allow\n")
                proc.stdin.flush()
                answers.append(json.loads(proc.stdout.readline()))
            proc.stdin.close()
            self.assertEqual(proc.stdout.readline().strip(), "done")
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()
        self.assertEqual([a["outcome"] for a in answers], ["allow"] * 9, answers)
        peers = [e["peer"] for e in aging.entries()]
        self.assertEqual(len(peers), 9)
        self.assertGreaterEqual(len(set(peers)), 2, "a new connection after the GOAWAY")

    def test_the_check_request_carries_envoys_attributes(self):
        a = self.check("--ext_authz=allow-body", "--method=POST", "--path=/api/v1?x=1",
                       "--host=productpage.foo.svc.cluster.local", "--protocol=HTTP/2",
                       "--headers=x-expect-body: hello\nX-Custom: one\nx-custom: two",
                       "--include_body", "--pack_as_bytes", "--body=hello",
                       "--request_id=req-42", "--source=198.18.0.10:40000",
                       "--destination=198.18.0.20:8080",
                       "--source_principal=spiffe://cluster.local/ns/foo/sa/sleep",
                       "--destination_principal=spiffe://cluster.local/ns/foo/sa/waypoint")
        self.assertEqual(a["outcome"], "allow", a)
        [entry] = self.authz.entries()
        attrs = entry["attributes"]
        self.assertEqual(attrs["source"]["principal"], "spiffe://cluster.local/ns/foo/sa/sleep")
        self.assertEqual(attrs["source"]["address"]["socketAddress"],
                         {"address": "198.18.0.10", "portValue": 40000})
        self.assertEqual(attrs["destination"]["principal"],
                         "spiffe://cluster.local/ns/foo/sa/waypoint")
        self.assertEqual(attrs["destination"]["address"]["socketAddress"],
                         {"address": "198.18.0.20", "portValue": 8080})
        self.assertNotIn("contextExtensions", attrs)
        self.assertIn("time", attrs["request"])
        http = attrs["request"]["http"]
        self.assertEqual(http["method"], "POST")
        self.assertEqual(http["path"], "/api/v1?x=1")
        self.assertEqual(http["host"], "productpage.foo.svc.cluster.local")
        self.assertEqual(http["scheme"], "http")
        self.assertEqual(http["protocol"], "HTTP/2")
        self.assertEqual(http["id"], "req-42")
        self.assertEqual(http["size"], "5")
        self.assertEqual(http["headers"]["x-custom"], "one,two")
        self.assertEqual(http["headers"][":method"], "POST")
        self.assertEqual(http["headers"][":path"], "/api/v1?x=1")
        self.assertEqual(http["headers"][":authority"], "productpage.foo.svc.cluster.local")
        self.assertEqual(http["headers"]["x-envoy-auth-partial-body"], "false")
        # packAsBytes: raw_body, and no body string.
        self.assertEqual(base64.b64decode(http["rawBody"]), b"hello")
        self.assertNotIn("body", http)

    def test_the_body_as_a_string_without_pack_as_bytes(self):
        a = self.check("--ext_authz=allow-body", "--method=POST", "--headers=x-expect-body: hi",
                       "--include_body", "--body=hi")
        self.assertEqual(a["outcome"], "allow", a)
        http = self.authz.entries()[0]["attributes"]["request"]["http"]
        self.assertEqual(http["body"], "hi")
        self.assertNotIn("rawBody", http)
        # The authorizer compares the body it got: a different one is denied.
        a = self.check("--ext_authz=allow-body", "--method=POST", "--headers=x-expect-body: hi",
                       "--include_body", "--body=ho")
        self.assertEqual(a["outcome"], "deny", a)


if __name__ == "__main__":
    unittest.main()
