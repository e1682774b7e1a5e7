#!/usr/bin/python3
"""The waypoint's HTTP engine against real clients, on loopback only (no root needed).

Each test starts `waypoint_harness` (the real engine: http-parser, nghttp2, the policy engine)
between a client and a Python upstream on 127.0.0.1, and checks what both ends see: curl (HTTP/1.1
and --http2-prior-knowledge), http.client, the h2 library, and raw sockets for what well-behaved
clients never send (smuggling attempts, malformed heads, slow or partial requests).
"""

import json
import os
import re
import select
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import unittest

import h2.config
import h2.connection
import h2.events
import h2.errors
import h2.exceptions

BUILD = os.environ.get("AMBIT_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
HARNESS = os.path.join(BUILD, "tests/waypoint/waypoint_harness")
LOOPBACK = "127.0.0.1"
TIMEOUT = 10


# ---------------------------------------------------------------- upstream


class Upstream:
    """A threaded HTTP/1.1 origin that echoes what it received as JSON, records every request and
    every connection, and switches to a byte echo after answering an Upgrade with 101."""

    def __init__(self):
        self.requests = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stall = threading.Event()  # set: do not read request bodies (backpressure test)
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with outer.lock:
                    outer.connections += 1
                try:
                    self.serve(self.request)
                except OSError:
                    pass  # the waypoint reset or closed the connection: part of some tests

            def serve(self, sock):
                sock.settimeout(30)
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = sock.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = []
                    for line in lines[1:]:
                        k, v = line.split(":", 1)
                        headers.append((k.strip().lower(), v.strip()))
                    h = dict(headers)
                    if outer.stall.is_set() and method == "POST":
                        time.sleep(30)
                        return
                    body = b""
                    if h.get("transfer-encoding") == "chunked":
                        while True:
                            while b"\r\n" not in buf:
                                buf += sock.recv(65536)
                            size_line, buf = buf.split(b"\r\n", 1)
                            size = int(size_line.split(b";")[0], 16)
                            while len(buf) < size + 2:
                                buf += sock.recv(65536)
                            body += buf[:size]
                            buf = buf[size + 2:]
                            if size == 0:
                                break
                    elif "content-length" in h:
                        n = int(h["content-length"])
                        while len(buf) < n:
                            data = sock.recv(65536)
                            if not data:
                                return
                            buf += data
                        body, buf = buf[:n], buf[n:]
                    with outer.lock:
                        outer.requests.append({"method": method, "target": target,
                                               "headers": headers, "body": body,
                                               "peer": self.client_address[1]})
                    if h.get("upgrade", "").lower() == "websocket":
                        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                     b"connection: upgrade\r\n\r\n")
                        if buf:
                            sock.sendall(buf)
                        while True:
                            data = sock.recv(65536)
                            if not data:
                                return
                            sock.sendall(data)
                    if target.startswith("/big/"):
                        payload = b"x" * int(target[5:])
                    else:
                        payload = json.dumps({"method": method, "target": target,
                                              "headers": headers, "body_len": len(body),
                                              "body": body[:1000].decode("latin-1")}).encode()
                    if target == "/chunked-response":
                        out = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" +
                               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                    elif method == "HEAD":
                        out = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload)
                    else:
                        out = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               b"content-length: %d\r\nx-upstream: yes\r\n\r\n" % len(payload) +
                               payload)
                    sock.sendall(out)

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class TcpEcho:
    """A raw TCP echo upstream for ports declared TCP."""

    def __init__(self):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    while True:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        self.request.sendall(data)
                except OSError:
                    pass

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- harness


class Harness:
    def __init__(self, upstream_port, policy="", args=()):
        self.policy = tempfile.NamedTemporaryFile("w", suffix=".policy", delete=False)
        self.policy.write(policy)
        self.policy.close()
        self.log = tempfile.TemporaryFile()
        cmd = [HARNESS, "--upstream", f"{LOOPBACK}:{upstream_port}", "--policy",
               self.policy.name, "--metrics-listen", f"{LOOPBACK}:0",
               "--peer-identity", "spiffe://cluster.local/ns/client/sa/sleep", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.port = None
        self.metrics_port = None
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and (self.port is None or self.metrics_port is None):
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("listening "):
                self.port = int(line.split()[1])
            elif line.startswith("metrics "):
                self.metrics_port = int(line.split()[1])
        if self.port is None:
            self.close()
            raise RuntimeError("waypoint_harness did not start: " + self.stderr())

    def stderr(self):
        if self.log.closed:
            return self.saved_stderr
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def access_log(self):
        return [line for line in self.stderr().splitlines() if "start=" in line and "status=" in line]

    def metrics(self):
        with socket.create_connection((LOOPBACK, self.metrics_port), timeout=TIMEOUT) as s:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode().split("\r\n\r\n", 1)[1]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.saved_stderr = self.stderr()
        self.log.close()
        os.unlink(self.policy.name)


def raw_exchange(port, data, timeout=5, until_close=True):
    """Sends bytes and returns everything read until the server closes (or `timeout`)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if not until_close and b"\r\n\r\n" in out:
                break
        return out


def refusing_port(test):
    """A loopback port that refuses connections for the rest of `test`: bound, never listened on,
    and kept bound, so nothing else (the waypoint's own listener) can be given it meanwhile, as a
    port bound and released could be."""
    s = socket.socket()
    test.addCleanup(s.close)
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def wait_for(predicate, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def status_of(response):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return int(m.group(1)) if m else None


def h2_request(port, requests, settings=None):
    """Sends each (method, path, headers, body) on its own stream of one h2c connection and
    returns [(status, headers, body)] in order."""
    with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as s:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        ids = []
        pending = {}
        for method, path, headers, body in requests:
            sid = conn.get_next_available_stream_id()
            hs = [(":method", method), (":path", path), (":scheme", "http"),
                  (":authority", "svc.default.svc.cluster.local")] + list(headers)
            conn.send_headers(sid, hs, end_stream=not body)
            ids.append(sid)
            if body:
                pending[sid] = body
            s.sendall(conn.data_to_send())
        results = {sid: [None, [], b""] for sid in ids}
        done = set()
        deadline = time.time() + TIMEOUT
        while len(done) < len(ids) and time.time() < deadline:
            for sid in list(pending):
                # Only as much as the flow-control windows allow; the rest after WINDOW_UPDATE.
                n = min(len(pending[sid]), conn.local_flow_control_window(sid),
                        conn.max_outbound_frame_size)
                while n > 0:
                    conn.send_data(sid, pending[sid][:n], end_stream=(n == len(pending[sid])))
                    pending[sid] = pending[sid][n:]
                    if not pending[sid]:
                        del pending[sid]
                        break
                    n = min(len(pending[sid]), conn.local_flow_control_window(sid),
                            conn.max_outbound_frame_size)
            s.sendall(conn.data_to_send())
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    hd = dict((k.decode() if isinstance(k, bytes) else k,
                               v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers)
                    results[ev.stream_id][0] = int(hd[":status"])
                    results[ev.stream_id][1] = hd
                elif isinstance(ev, h2.events.DataReceived):
                    results[ev.stream_id][2] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done.add(ev.stream_id)
            s.sendall(conn.data_to_send())
        return [tuple(results[sid]) for sid in ids]


class WaypointTestBase(unittest.TestCase):
    POLICY = ""
    ARGS = ()

    def setUp(self):
        self.upstream = Upstream()
        self.addCleanup(self.upstream.close)
        self.wp = Harness(self.upstream.port, self.POLICY, self.ARGS)
        self.addCleanup(self.wp.close)

    def tearDown(self):
        if self.wp.proc.poll() is not None:
            self.fail("waypoint_harness exited: " + self.wp.stderr()[-2000:])


# ---------------------------------------------------------------- tests


class Http1Test(WaypointTestBase):
    POLICY = """
DENY deny-admin paths=/admin/*
CUSTOM ext-check provider=opa paths=/ext/*
"""

    def test_keep_alive_reuses_both_connections(self):
        import http.client
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        for i in range(3):
            c.request("GET", f"/hello/{i}", headers={"x-test": str(i)})
            r = c.getresponse()
            body = json.loads(r.read())
            self.assertEqual(r.status, 200)
            self.assertEqual(body["target"], f"/hello/{i}")
            self.assertIn(["x-test", str(i)], body["headers"])
            self.assertEqual(r.getheader("x-upstream"), "yes")
        c.close()
        self.assertEqual(len(self.upstream.requests), 3)
        self.assertEqual(self.upstream.connections, 1, "the upstream connection was not reused")

    def test_curl_http11_and_post_body(self):
        out = subprocess.run(["curl", "-sS", "--http1.1", "-d", "a=1&b=2",
                              f"http://{LOOPBACK}:{self.wp.port}/form"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        body = json.loads(out)
        self.assertEqual(body["method"], "POST")
        self.assertEqual(body["body"], "a=1&b=2")

    def test_chunked_request_and_response(self):
        req = (b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n")
        out = raw_exchange(self.wp.port, req, until_close=False)
        self.assertEqual(status_of(out), 200)
        self.assertEqual(self.upstream.requests[-1]["body"], b"Wikipedia")
        out = subprocess.run(["curl", "-sS", f"http://{LOOPBACK}:{self.wp.port}/chunked-response"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        self.assertEqual(out, b"hello world")

    def test_large_body_streams_through(self):
        body = os.urandom(8 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            out = subprocess.run(["curl", "-sS", "--http1.1", "-H", "Expect:", "--data-binary",
                                  "@" + f.name, f"http://{LOOPBACK}:{self.wp.port}/bulk"],
                                 capture_output=True, timeout=60, check=True).stdout
        self.assertEqual(json.loads(out)["body_len"], len(body))
        self.assertEqual(self.upstream.requests[-1]["body"], body)
        out = subprocess.run(["curl", "-sS", f"http://{LOOPBACK}:{self.wp.port}/big/5000000"],
                             capture_output=True, timeout=60, check=True).stdout
        self.assertEqual(len(out), 5000000)

    def test_deny_is_403_rbac_access_denied(self):
        out = raw_exchange(self.wp.port, b"GET /admin/users HTTP/1.1\r\nHost: svc\r\n\r\n",
                           until_close=False, timeout=3)
        self.assertEqual(status_of(out), 403)
        self.assertTrue(out.endswith(b"RBAC: access denied"), out)
        self.assertEqual(self.upstream.requests, [])
        # The connection stays usable after a local answer to a body-less request.
        import http.client
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("GET", "/admin/x")
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (403, b"RBAC: access denied"))
        c.request("GET", "/ok")
        self.assertEqual(c.getresponse().status, 200)

    def test_custom_policy_fails_closed_with_a_reason(self):
        out = raw_exchange(self.wp.port, b"GET /ext/thing HTTP/1.1\r\nHost: svc\r\n\r\n",
                           until_close=False, timeout=3)
        self.assertEqual(status_of(out), 403)
        self.assertEqual(self.upstream.requests, [])
        deadline = time.time() + 5
        while time.time() < deadline and "provider \"opa\"" not in self.wp.stderr():
            time.sleep(0.05)
        self.assertRegex(self.wp.stderr(), r"CUSTOM policy default/ext-check .*provider \"opa\"")
        wait_for(lambda: self.wp.access_log())
        self.assertTrue(any("details=ext_authz_unavailable" in l and "policy=default/ext-check" in l
                            for l in self.wp.access_log()), self.wp.access_log())

    def test_expect_100_continue(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"PUT /data HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            interim = s.recv(65536)
            self.assertTrue(interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim)
            s.sendall(b"hello")
            out = b""
            while b"}" not in out:
                out += s.recv(65536)
            self.assertEqual(status_of(out), 200)
        req = self.upstream.requests[-1]
        self.assertEqual(req["body"], b"hello")
        self.assertNotIn("expect", dict(req["headers"]))
        # Denied: 403 at once, no 100, and the body is never asked for.
        out = raw_exchange(self.wp.port, b"PUT /admin/x HTTP/1.1\r\nHost: svc\r\n"
                           b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", timeout=3)
        self.assertEqual(status_of(out), 403)
        self.assertNotIn(b"100 Continue", out)

    def test_websocket_upgrade_passes_through_after_the_decision(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\n"
                      b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            self.assertEqual(status_of(head), 101)
            self.assertIn(b"upgrade: websocket", head.lower())
            for msg in (b"\x81\x05hello", b"binary\x00\xff" * 1000):
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += s.recv(65536)
                self.assertEqual(got, msg)
        out = raw_exchange(self.wp.port, b"GET /admin/chat HTTP/1.1\r\nHost: svc\r\n"
                           b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", timeout=3)
        self.assertEqual(status_of(out), 403)

    def test_header_limits_are_431(self):
        big = b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * (61 << 10) + b"\r\n\r\n"
        self.assertEqual(status_of(raw_exchange(self.wp.port, big)), 431)
        many = b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"".join(
            b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n"
        self.assertEqual(status_of(raw_exchange(self.wp.port, many)), 431)
        ok = b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"".join(
            b"X-H%d: v\r\n" % i for i in range(98)) + b"\r\n"
        self.assertEqual(status_of(raw_exchange(self.wp.port, ok, until_close=False)), 200)
        self.assertEqual(len(self.upstream.requests), 1)

    def test_head_request_has_no_body(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"HEAD /x HTTP/1.1\r\nHost: svc\r\n\r\nGET /y HTTP/1.1\r\nHost: svc\r\n\r\n")
            out = b""
            deadline = time.time() + 5
            while out.count(b"HTTP/1.1 200") < 2 and time.time() < deadline:
                out += s.recv(65536)
            self.assertEqual(out.count(b"HTTP/1.1 200"), 2, out)
        self.assertEqual([r["target"] for r in self.upstream.requests], ["/x", "/y"])

    def test_http10_without_host_goes_upstream_with_one(self):
        out = raw_exchange(self.wp.port, b"GET /old HTTP/1.0\r\n\r\n", timeout=3)
        self.assertEqual(status_of(out), 200)
        self.assertIn(b"connection: close", out.lower())
        req = self.upstream.requests[-1]
        self.assertEqual(dict(req["headers"]).get("host"), f"{LOOPBACK}:{self.upstream.port}")

    def test_upstream_down_is_503(self):
        self.upstream.close()
        wp = Harness(refusing_port(self))
        try:
            out = raw_exchange(wp.port, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", timeout=3)
            self.assertEqual(status_of(out), 503)
            self.assertTrue(any("flags=UF" in l for l in wp.access_log()), wp.stderr())
        finally:
            wp.close()
        self.upstream = Upstream()  # for tearDown's cleanup symmetry


class SmugglingTest(WaypointTestBase):
    """Requests whose framing two HTTP implementations could read differently are refused before
    anything reaches the upstream."""

    CASES = [
        ("cl_and_te", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te_and_cl", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 4\r\n\r\n0\r\n\r\n"),
        ("duplicate_cl_same", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
         b"Content-Length: 3\r\n\r\nabc"),
        ("duplicate_cl_differ", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
         b"Content-Length: 4\r\n\r\nabcd"),
        ("cl_list", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"),
        ("cl_sign", 400, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"),
        ("te_gzip_chunked", 501, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked"
         b"\r\n\r\n0\r\n\r\n"),
        ("te_twice", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("te_http10", 400, b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\n"),
        ("te_space_before_colon", 400, b"POST / HTTP/1.1\r\nHost: a\r\n"
         b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("te_name_prefix", 400, b"POST / HTTP/1.1\r\nHost: a\r\n"
         b"Transfer-Encodingr-Encoding: c: chunked\r\n\r\n0\r\n\r\n"),
        ("obs_fold", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("obs_fold_te", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n"
         b"\r\n0\r\n\r\n"),
        ("bare_lf", 400, b"GET / HTTP/1.1\nHost: a\n\n"),
        ("bare_cr", 400, b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
        ("no_host", 400, b"GET / HTTP/1.1\r\n\r\n"),
        ("two_hosts", 400, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("nul_in_value", 400, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
        ("bad_chunk_size", 400, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"\r\nzz\r\n"),
        ("http2_version_in_h1", 505, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        ("not_http", 400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
        ("connect", 405, b"CONNECT 198.18.0.1:443 HTTP/1.1\r\nHost: 198.18.0.1:443\r\n\r\n"),
    ]

    def test_ambiguous_framing_is_refused(self):
        for name, want, req in self.CASES:
            with self.subTest(name):
                out = raw_exchange(self.wp.port, req, timeout=3)
                self.assertEqual(status_of(out), want, out)
                self.assertIn(b"connection: close", out.lower())
        self.assertEqual(self.upstream.requests, [], "a refused request reached the upstream")

    def test_pipelined_smuggle_after_valid_request(self):
        # A valid request followed by a smuggling attempt: the first is served, the second is
        # refused and the connection closed; the upstream sees exactly one request.
        req = (b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
               b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
        out = raw_exchange(self.wp.port, req, timeout=3)
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3})", out), [b"200", b"400"], out)
        self.assertEqual([r["target"] for r in self.upstream.requests], ["/first"])


class Http2Test(WaypointTestBase):
    POLICY = """
DENY deny-admin paths=/admin/*
ALLOW allow-alice when=request.headers[x-user]:alice
ALLOW allow-public paths=/public/*
"""

    def test_curl_prior_knowledge(self):
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", "x-user: alice",
                              "-w", "\n%{http_version} %{http_code}",
                              f"http://{LOOPBACK}:{self.wp.port}/h2/path?q=1"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        body, meta = out.rsplit(b"\n", 1)
        self.assertEqual(meta, b"2 200")
        got = json.loads(body)
        self.assertEqual(got["target"], "/h2/path?q=1")
        self.assertIn(["host", "svc.default.svc.cluster.local"] if False else ["x-user", "alice"],
                      got["headers"])

    def test_streams_policies_and_bodies(self):
        res = h2_request(self.wp.port, [
            ("GET", "/any", [("x-user", "alice")], b""),
            ("GET", "/any", [("x-user", "bob")], b""),
            ("GET", "/admin/x", [("x-user", "alice")], b""),
            ("POST", "/public/upload", [], b"z" * 200000),
            ("POST", "/public/len", [("content-length", "3")], b"abc"),
            ("HEAD", "/public/head", [], b""),
        ])
        self.assertEqual([r[0] for r in res], [200, 403, 403, 200, 200, 200])
        self.assertEqual(res[1][2], b"RBAC: access denied")
        self.assertEqual(res[2][2], b"RBAC: access denied")
        self.assertEqual(json.loads(res[3][2])["body_len"], 200000)
        self.assertEqual(json.loads(res[4][2])["body"], "abc")
        self.assertEqual(res[5][2], b"")
        targets = sorted(r["target"] for r in self.upstream.requests)
        self.assertEqual(targets, ["/any", "/public/head", "/public/len", "/public/upload"])

    def test_header_limit_is_431(self):
        res = h2_request(self.wp.port, [
            ("GET", "/public/a", [("x-big", "a" * (61 << 10))], b""),
            ("GET", "/public/b", [(f"x-h{i}", "v") for i in range(101)], b""),
            ("GET", "/public/c", [], b""),
        ])
        self.assertEqual([r[0] for r in res], [431, 431, 200])

    def test_large_response_with_flow_control(self):
        res = h2_request(self.wp.port, [("GET", "/big/3000000", [("x-user", "alice")], b"")])
        self.assertEqual(res[0][0], 200)
        self.assertEqual(len(res[0][2]), 3000000)


class RapidResetTest(WaypointTestBase):
    ARGS = ("--stream-open-burst", "20", "--stream-open-rate", "1")

    def test_rapid_reset_gets_goaway(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            for _ in range(60):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "GET"), (":path", "/slow"),
                                        (":scheme", "http"), (":authority", "a")])
                conn.reset_stream(sid)
            s.sendall(conn.data_to_send())
            goaway = None
            deadline = time.time() + 5
            while goaway is None and time.time() < deadline:
                data = s.recv(65536)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = ev
            self.assertIsNotNone(goaway, "no GOAWAY after 60 rapid resets with a burst of 20")
            self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("opens streams faster than they complete", self.wp.stderr())


class TimeoutTest(WaypointTestBase):
    ARGS = ("--idle-timeout", "1s", "--stream-idle-timeout", "1s")

    def test_idle_connection_is_closed(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            out = b""
            while b"}" not in out:
                out += s.recv(65536)
            start = time.time()
            s.settimeout(5)
            rest = s.recv(65536)
            self.assertEqual(rest, b"", "the idle connection stayed open")
            self.assertGreater(time.time() - start, 0.8)

    def test_stalled_request_gets_408(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            s.settimeout(5)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        self.assertEqual(status_of(out), 408, out)
        self.assertTrue(any("flags=SI" in l for l in self.wp.access_log()), self.wp.stderr())

    def test_h2_stalled_stream_gets_408_and_idle_connection_goaway(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            # A request whose body never comes.
            conn.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                                  (":authority", "a")])
            s.sendall(conn.data_to_send())
            status, goaway = None, None
            start = time.time()
            while goaway is None and time.time() - start < 6:
                data = s.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = dict(ev.headers)[b":status"]
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = ev
                s.sendall(conn.data_to_send())
            self.assertEqual(status, b"408")
            # Then, with no stream left, the connection idle timeout sends GOAWAY.
            self.assertIsNotNone(goaway)
            self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.NO_ERROR)
            self.assertGreater(time.time() - start, 1.5)

    def test_partial_head_gets_408(self):
        out = raw_exchange(self.wp.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", timeout=5)
        self.assertEqual(status_of(out), 408, out)


class TcpPortTest(unittest.TestCase):
    def setUp(self):
        self.echo = TcpEcho()
        self.addCleanup(self.echo.close)

    def test_non_http_passes_at_l4(self):
        wp = Harness(self.echo.port, "ALLOW http-only paths=/x\nALLOW by-ns namespaces=client\n",
                     ("--tcp",))
        self.addCleanup(wp.close)
        payload = b"\x00\x01binary, not HTTP\r\n\r\n" * 1000
        with socket.create_connection((LOOPBACK, wp.port), timeout=TIMEOUT) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        self.assertEqual(got, payload)

    def test_l4_deny_resets(self):
        wp = Harness(self.echo.port, "DENY no-loopback ip_blocks=127.0.0.0/8\n", ("--tcp",))
        self.addCleanup(wp.close)
        # The reset may arrive before the send, even before the timed connect reads its result
        # (SO_ERROR is then ECONNRESET): the L4 decision needs no bytes.
        try:
            with socket.create_connection((LOOPBACK, wp.port), timeout=TIMEOUT) as s:
                s.sendall(b"hello")
                got = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        self.assertEqual(got, b"")
        deadline = time.time() + 3
        while time.time() < deadline and not wp.access_log():
            time.sleep(0.05)
        self.assertTrue(any("protocol=tcp" in l and "policy=default/no-loopback" in l
                            for l in wp.access_log()), wp.stderr())


class BackpressureTest(WaypointTestBase):
    def test_slow_upstream_bounds_buffering(self):
        self.upstream.stall.set()
        sent = 0
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n")
            s.setblocking(False)
            chunk = b"x" * 65536
            deadline = time.time() + 3
            while time.time() < deadline:
                _, w, _ = select.select([], [s], [], 0.2)
                if not w:
                    continue
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    pass
        # Kernel buffers on both hops plus the waypoint's bounded buffer; never the gigabyte.
        self.assertLess(sent, 64 << 20, f"the waypoint accepted {sent} bytes for a stalled upstream")
        rss_kb = int(open(f"/proc/{self.wp.proc.pid}/status").read().split("VmRSS:")[1].split()[0])
        self.assertLess(rss_kb, 64 << 10, f"waypoint RSS {rss_kb} KiB")


class TelemetryTest(WaypointTestBase):
    POLICY = "DENY deny-admin paths=/admin/*\n"

    def test_access_log_and_istio_metrics(self):
        import http.client
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        for path in ("/a", "/b", "/admin/c"):
            c.request("GET", path, headers={"Host": "reviews.default.svc:9080"})
            c.getresponse().read()
        c.close()
        h2_request(self.wp.port, [("GET", "/h2", [], b"")])
        deadline = time.time() + 3
        while time.time() < deadline and len(self.wp.access_log()) < 4:
            time.sleep(0.05)
        log = self.wp.access_log()
        self.assertEqual(len(log), 4, log)
        denied = [l for l in log if "path=/admin/c" in l][0]
        for field in ("method=GET", "authority=reviews.default.svc:9080", "status=403",
                      "details=rbac_access_denied", "policy=default/deny-admin",
                      "src_identity=spiffe://cluster.local/ns/client/sa/sleep", "protocol=HTTP/1.1"):
            self.assertIn(field, denied)
        self.assertTrue(any("protocol=HTTP/2" in l and "status=200" in l for l in log), log)
        m = self.wp.metrics()
        self.assertIn('istio_requests_total{reporter="waypoint",response_code="200"} 3', m)
        self.assertIn('istio_requests_total{reporter="waypoint",response_code="403"} 1', m)
        self.assertIn("# TYPE istio_request_duration_milliseconds histogram", m)
        self.assertRegex(m, r'istio_request_duration_milliseconds_count\{reporter="waypoint",'
                            r'response_code="200"\} 3')
        self.assertRegex(m, r'istio_response_bytes_bucket\{reporter="waypoint",'
                            r'response_code="403",le="\+Inf"\} 1')
        self.assertIn("istio_request_bytes_sum", m)


if __name__ == "__main__":
    unittest.main()


# ---------------------------------------------------------------- JWT (RequestAuthentication)

import datetime  # noqa: E402  (the JWT tests' own imports, kept with them)
import http.client  # noqa: E402
import ipaddress  # noqa: E402
import ssl  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

ISSUER = "https://issuer.test"
HEADER_ISSUER = "https://header.test"
AUDIENCE = "ambit-test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_document():
    rs = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    rs.update(kid="rs1", alg="RS256", use="sig")
    es = json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key()))
    es.update(kid="es1", alg="ES256", use="sig")
    return json.dumps({"keys": [rs, es]})


def token(alg="RS256", key=None, kid=None, **claims):
    """A token signed now; claims override the defaults (None removes one)."""
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    if key is None:
        key = RSA_KEY if alg.startswith("RS") else EC_KEY
    if kid is None:
        kid = "rs1" if alg.startswith("RS") else "es1"
    return pyjwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def http1_get(port, path, headers=()):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=dict(headers))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class JwtTestBase(WaypointTestBase):
    """An inline JWKS (RS256 and ES256 keys) in a file named by the policy's jwks_file."""

    JWT_POLICY = (
        "JWT jwt issuer=https://issuer.test audiences=ambit-test jwks_file={jwks} "
        "claim_to_headers=x-jwt-sub:sub,x-jwt-role:role output_payload_to_header=x-jwt-payload\n"
        "JWT jwt issuer=https://header.test jwks_file={jwks} from_headers=x-token: "
        "forward_original_token=true\n" + """
ALLOW need-jwt request_principals=https://issuer.test/alice,https://header.test/bob paths=/secure/*
ALLOW by-claim paths=/claims/* when=request.auth.claims[role]:admin
ALLOW public paths=/public/*
""")

    def setUp(self):
        self.jwks = tempfile.NamedTemporaryFile("w", suffix=".jwks", delete=False)
        self.jwks.write(jwks_document())
        self.jwks.close()
        self.addCleanup(os.unlink, self.jwks.name)
        self.POLICY = self.JWT_POLICY.format(jwks=self.jwks.name)
        super().setUp()

    def upstream_headers(self):
        self.assertTrue(self.upstream.requests, "the request did not reach the upstream")
        return dict(self.upstream.requests[-1]["headers"])


class JwtHttp1Test(JwtTestBase):
    def test_valid_rs256_and_es256_reach_the_upstream_with_claim_headers(self):
        for alg in ("RS256", "ES256"):
            status, _, body = http1_get(self.wp.port, "/secure/x",
                                        [("authorization", "Bearer " + token(alg))])
            self.assertEqual(status, 200, body)
            h = self.upstream_headers()
            self.assertEqual(h.get("x-jwt-sub"), "alice")
            # forwardOriginalToken false (the default): the token does not go upstream.
            self.assertNotIn("authorization", h)
            payload = h["x-jwt-payload"]
            claims = json.loads(base64_url_decode(payload))
            self.assertEqual(claims["sub"], "alice")
        log = self.wp.access_log()
        self.assertTrue(any("https://issuer.test/alice" in line for line in log), log)

    def test_curl_bearer_token(self):
        out = subprocess.run(["curl", "-sS", "-H", "Authorization: Bearer " + token(),
                              "-w", "\n%{http_code}", f"http://{LOOPBACK}:{self.wp.port}/secure/c"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        body, code = out.rsplit(b"\n", 1)
        self.assertEqual(code, b"200", body)
        self.assertEqual(json.loads(body)["target"], "/secure/c")

    def test_expired_is_401(self):
        now = int(time.time())
        status, headers, body = http1_get(
            self.wp.port, "/secure/x",
            [("authorization", "Bearer " + token(exp=now - 120, iat=now - 720))])
        self.assertEqual((status, body), (401, b"Jwt is expired"))
        self.assertEqual(headers["www-authenticate"],
                         f'Bearer realm="http://{LOOPBACK}:{self.wp.port}/secure/x", '
                         'error="invalid_token"')
        self.assertEqual(self.upstream.requests, [])
        self.assertTrue(wait_for(lambda: any("jwt_authn_access_denied{Jwt_is_expired}" in line
                                             for line in self.wp.access_log())),
                        self.wp.access_log())

    def test_wrong_audience_is_403(self):
        status, headers, body = http1_get(self.wp.port, "/secure/x",
                                          [("authorization", "Bearer " + token(aud="other"))])
        self.assertEqual((status, body), (403, b"Audiences in Jwt are not allowed"))
        self.assertIn("www-authenticate", headers)
        self.assertEqual(self.upstream.requests, [])

    def test_wrong_key_is_401(self):
        status, _, body = http1_get(self.wp.port, "/secure/x",
                                    [("authorization", "Bearer " + token(key=ROGUE_KEY))])
        self.assertEqual((status, body), (401, b"Jwt verification fails"))
        self.assertEqual(self.upstream.requests, [])

    def test_missing_token_meets_request_principals_deny(self):
        status, headers, body = http1_get(self.wp.port, "/secure/x")
        self.assertEqual((status, body), (403, b"RBAC: access denied"))
        self.assertNotIn("www-authenticate", headers)
        # Without a requestPrincipals rule, no token is fine.
        status, _, _ = http1_get(self.wp.port, "/public/x")
        self.assertEqual(status, 200)

    def test_access_token_query_parameter(self):
        t = token("ES256")
        status, _, body = http1_get(self.wp.port, "/secure/q?access_token=" + t)
        self.assertEqual(status, 200, body)
        # Envoy leaves the query alone.
        self.assertEqual(self.upstream.requests[-1]["target"], "/secure/q?access_token=" + t)
        status, _, body = http1_get(self.wp.port, "/secure/q?access_token=" + token(aud="x"))
        self.assertEqual((status, body), (403, b"Audiences in Jwt are not allowed"))

    def test_from_headers_location_forwards_original_token(self):
        t = token(iss=HEADER_ISSUER, sub="bob", aud=None)
        status, _, body = http1_get(self.wp.port, "/secure/h", [("x-token", t)])
        self.assertEqual(status, 200, body)
        h = self.upstream_headers()
        self.assertEqual(h.get("x-token"), t)  # forwardOriginalToken: true
        self.assertNotIn("x-jwt-sub", h)  # that rule outputs no claims
        # The header rule's token in the Authorization header is read by the first rule only.
        status, _, body = http1_get(self.wp.port, "/secure/h", [("authorization", "Bearer " + t)])
        self.assertEqual(status, 401, body)

    def test_claims_reach_the_authorization_policy(self):
        status, _, _ = http1_get(self.wp.port, "/claims/x",
                                 [("authorization", "Bearer " + token(role="admin"))])
        self.assertEqual(status, 200)
        self.assertEqual(self.upstream_headers().get("x-jwt-role"), "admin")
        status, _, body = http1_get(self.wp.port, "/claims/x",
                                    [("authorization", "Bearer " + token(role="user"))])
        self.assertEqual((status, body), (403, b"RBAC: access denied"))

    def test_client_cannot_forge_claim_headers(self):
        status, _, _ = http1_get(self.wp.port, "/secure/x",
                                 [("authorization", "Bearer " + token()),
                                  ("x-jwt-sub", "mallory"), ("x-jwt-role", "admin")])
        self.assertEqual(status, 200)
        h = self.upstream_headers()
        self.assertEqual(h.get("x-jwt-sub"), "alice")
        self.assertNotIn("x-jwt-role", h)  # the token has no role claim

    def test_claim_with_line_break_adds_no_upstream_header(self):
        status, _, body = http1_get(
            self.wp.port, "/secure/x",
            [("authorization", "Bearer " + token(role="admin\r\nx-injected: 1"))])
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.upstream.requests), 1)
        h = self.upstream_headers()
        self.assertNotIn("x-injected", h)
        self.assertNotIn("x-jwt-role", h)
        self.assertEqual(h.get("x-jwt-sub"), "alice")


def base64_url_decode(text):
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JwtHttp2Test(JwtTestBase):
    def test_h2_streams(self):
        now = int(time.time())
        res = h2_request(self.wp.port, [
            ("GET", "/secure/a", [("authorization", "Bearer " + token())], b""),
            # Expired past Envoy's 60 s clock skew.
            ("GET", "/secure/b", [("authorization", "Bearer " + token(exp=now - 120))], b""),
            ("GET", "/secure/c", [("authorization", "Bearer " + token(aud="nope"))], b""),
            ("GET", "/secure/d", [("authorization", "Bearer " + token(key=ROGUE_KEY))], b""),
            ("GET", "/secure/e", [], b""),
            ("GET", "/secure/f?access_token=" + token("ES256"), [], b""),
            ("GET", "/secure/g", [("x-token", token(iss=HEADER_ISSUER, sub="bob"))], b""),
        ])
        self.assertEqual([r[0] for r in res], [200, 401, 403, 401, 403, 200, 200])
        self.assertEqual([r[2] for r in res[1:5]],
                         [b"Jwt is expired", b"Audiences in Jwt are not allowed",
                          b"Jwt verification fails", b"RBAC: access denied"])
        self.assertTrue(res[1][1]["www-authenticate"].startswith('Bearer realm="http://'))
        by_target = {r["target"].split("?")[0]: dict(r["headers"]) for r in self.upstream.requests}
        self.assertEqual(sorted(by_target), ["/secure/a", "/secure/f", "/secure/g"])
        self.assertEqual(by_target["/secure/a"].get("x-jwt-sub"), "alice")
        self.assertNotIn("authorization", by_target["/secure/a"])
        self.assertIn("x-token", by_target["/secure/g"])

    def test_curl_prior_knowledge_strips_the_token(self):
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge",
                              "-H", "Authorization: Bearer " + token("ES256", role="admin"),
                              "-w", "\n%{http_version} %{http_code}",
                              f"http://{LOOPBACK}:{self.wp.port}/claims/z"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        body, meta = out.rsplit(b"\n", 1)
        self.assertEqual(meta, b"2 200", body)
        got = dict((k, v) for k, v in json.loads(body)["headers"])
        self.assertEqual(got.get("x-jwt-role"), "admin")
        self.assertEqual(got.get("x-jwt-sub"), "alice")
        self.assertNotIn("authorization", got)


def _test_ca(tmpdir):
    """A CA and a server certificate for 127.0.0.1 in tmpdir; returns (ca_file, cert, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, pub, signer, ca, sans=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test CA")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks")]), ca_name,
                 key.public_key(), ca_key, False,
                 [x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
    paths = [os.path.join(tmpdir, n) for n in ("ca.pem", "server.pem", "server.key")]
    for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                  leaf.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        with open(path, "wb") as f:
            f.write(data)
    return paths


class JwksServer:
    """Serves the test JWKS at /jwks over HTTPS on loopback; counts the fetches."""

    def __init__(self, cert, key):
        import http.server
        self.fetches = 0
        outer = self
        doc = jwks_document().encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.fetches += 1
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(doc)))
                self.end_headers()
                self.wfile.write(doc)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):
                request.settimeout(10)
                try:
                    request = ctx.wrap_socket(request, server_side=True)
                except OSError:
                    return
                try:
                    super().finish_request(request, client_address)
                finally:
                    request.close()

            def handle_error(self, request, client_address):
                pass

        self.server = Server((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class JwksUriTest(unittest.TestCase):
    """A jwksUri served over HTTPS by a Python server on loopback, trusted via --jwks-ca-file."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.ca_file, self.cert, self.key = _test_ca(self.tmp.name)
        self.upstream = Upstream()
        self.addCleanup(self.upstream.close)

    def harness(self, uri, *args):
        policy = (f"JWT jwt issuer={ISSUER} audiences={AUDIENCE} jwks_uri={uri} timeout=2s\n"
                  f"ALLOW need-jwt request_principals={ISSUER}/alice\n")
        wp = Harness(self.upstream.port, policy, ("--jwks-ca-file", self.ca_file, *args))
        self.addCleanup(wp.close)
        return wp

    def get(self, wp):
        return http1_get(wp.port, "/r", [("authorization", "Bearer " + token())])

    def test_fetched_key_set_then_expired_after_the_server_stops(self):
        server = JwksServer(self.cert, self.key)
        self.addCleanup(server.close)
        wp = self.harness(f"https://{LOOPBACK}:{server.port}/jwks",
                          "--jwks-refresh-interval", "300ms", "--jwks-retry-interval", "200ms",
                          "--jwks-max-age", "2s")
        self.assertTrue(wait_for(lambda: self.get(wp)[0] == 200, timeout=5), self.get(wp))
        self.assertGreaterEqual(server.fetches, 1)
        self.assertTrue(wait_for(lambda: server.fetches >= 3, timeout=5))  # refreshed
        # ES256 from the same fetched set.
        status, _, _ = http1_get(wp.port, "/r", [("authorization", "Bearer " + token("ES256"))])
        self.assertEqual(status, 200)
        server.close()
        stopped = time.time()
        # The last good set serves until max_age, then tokens fail as in Istio.
        self.assertEqual(self.get(wp)[0], 200)
        self.assertTrue(wait_for(lambda: self.get(wp)[0] == 401, timeout=6))
        self.assertGreater(time.time() - stopped, 1.0)
        status, _, body = self.get(wp)
        self.assertEqual((status, body), (401, b"Jwks remote fetch is failed"))

    def test_never_fetched_is_401(self):
        wp = self.harness(f"https://{LOOPBACK}:{refusing_port(self)}/jwks")
        status, _, body = self.get(wp)
        self.assertEqual((status, body), (401, b"Jwks remote fetch is failed"))
        time.sleep(0.5)  # after the failed first fetch too
        status, _, body = self.get(wp)
        self.assertEqual((status, body), (401, b"Jwks remote fetch is failed"))

    def test_untrusted_server_is_never_asked(self):
        server = JwksServer(self.cert, self.key)
        self.addCleanup(server.close)
        # The system roots do not know the test CA: the handshake fails, no request is sent.
        policy = (f"JWT jwt issuer={ISSUER} jwks_uri=https://{LOOPBACK}:{server.port}/jwks\n")
        wp = Harness(self.upstream.port, policy, ("--jwks-retry-interval", "100ms"))
        self.addCleanup(wp.close)
        time.sleep(1)
        status, _, body = self.get(wp)
        self.assertEqual((status, body), (401, b"Jwks remote fetch is failed"))
        self.assertEqual(server.fetches, 0)
