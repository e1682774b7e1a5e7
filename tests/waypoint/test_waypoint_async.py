#!/usr/bin/python3
"""Asynchronous filters in the waypoint's HTTP engine, against real clients on loopback.

`waypoint_harness --hold-filter` adds a filter that waits as the request's headers say (see the
harness's file comment): `x-hold-ms` waits on a loop timer, `x-hold-body` asks for the body first,
`x-hold-deny` answers locally after the wait. These tests check what the client and the upstream
see while a request is held and after: nothing upstream before the answer, the body collected and
then forwarded intact, 413 for a body too large, order of pipelined requests, other h2 streams
unaffected, flow control, cancellation on disconnect, reset and timeout, and the downstream header
edits.
"""

import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest

import h2.config
import h2.connection
import h2.errors
import h2.events

from test_waypoint_http import (LOOPBACK, TIMEOUT, WaypointTestBase, h2_request, raw_exchange,
                                status_of, wait_for)


def read_response(sock, timeout=TIMEOUT):
    """Reads one HTTP/1.1 response with a content-length body; returns (status, headers, body)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:n], rest[n:]


class H2Client:
    """One h2c connection driven step by step (streams opened, reset and read on demand)."""

    def __init__(self, port):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.status = {}
        self.headers = {}
        self.body = {}
        self.ended = []  # stream ids in the order they ended (or were reset)
        self.reset = {}

    def request(self, path, headers=(), body=b"", method="GET", end=True):
        sid = self.conn.get_next_available_stream_id()
        hs = [(":method", method), (":path", path), (":scheme", "http"),
              (":authority", "svc.default.svc.cluster.local")] + list(headers)
        self.conn.send_headers(sid, hs, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.sock.sendall(self.conn.data_to_send())
        self.body[sid] = b""
        return sid

    def reset_stream(self, sid):
        self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        self.sock.sendall(self.conn.data_to_send())

    def pump(self, until, timeout=TIMEOUT):
        deadline = time.time() + timeout
        self.sock.settimeout(0.2)
        while not until() and time.time() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    hd = {k.decode(): v.decode() for k, v in ev.headers}
                    self.status[ev.stream_id] = int(hd[":status"])
                    self.headers[ev.stream_id] = hd
                elif isinstance(ev, h2.events.DataReceived):
                    self.body[ev.stream_id] = self.body.get(ev.stream_id, b"") + ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended.append(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    self.reset[ev.stream_id] = ev.error_code
                    if ev.stream_id not in self.ended:
                        self.ended.append(ev.stream_id)
            self.sock.sendall(self.conn.data_to_send())
        return until()

    def send_body(self, sid, body, end=True):
        """Sends as much of `body` as the windows allow now; returns what is left."""
        while body:
            n = min(len(body), self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size)
            if n <= 0:
                break
            self.conn.send_data(sid, body[:n], end_stream=end and n == len(body))
            body = body[n:]
        self.sock.sendall(self.conn.data_to_send())
        return body

    def close(self):
        self.sock.close()


class AsyncTestBase(WaypointTestBase):
    ARGS = ("--hold-filter",)

    def hold_log(self, what, path):
        return [l for l in self.wp.stderr().splitlines() if f"hold {what} path={path}" in l]

    def access(self, path):
        return [l for l in self.wp.access_log() if f"path={path} " in l]

    def upstream_targets(self):
        return [r["target"] for r in self.upstream.requests]

    def upstream_headers(self, target):
        reqs = [r for r in self.upstream.requests if r["target"] == target]
        self.assertEqual(len(reqs), 1, self.upstream_targets())
        return dict(reqs[0]["headers"]), reqs[0]["body"]


class AsyncHttp1Test(AsyncTestBase):
    POLICY = "DENY deny-admin paths=/admin/*\n"

    def test_allow_after_a_wait_nothing_upstream_before(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            start = time.time()
            s.sendall(b"GET /wait HTTP/1.1\r\nHost: svc\r\nx-hold-ms: 600\r\n\r\n")
            time.sleep(0.3)
            self.assertEqual(self.upstream.requests, [], "forwarded while the filter waited")
            status, headers, body, _ = read_response(s)
            self.assertGreaterEqual(time.time() - start, 0.55)
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("x-held"), "yes")  # the downstream edit
        self.assertEqual(headers.get("x-upstream"), "yes")
        h, _ = self.upstream_headers("/wait")
        self.assertEqual(h.get("x-held-body-bytes"), "0")
        self.assertNotIn("x-held-truncated", h)
        self.assertEqual(len(self.hold_log("done", "/wait")), 1)
        self.assertTrue(wait_for(lambda: self.access("/wait")))
        self.assertIn("ext_authz=hold:allow:600 upstream=", self.access("/wait")[0])

    def test_curl_sees_the_downstream_edit(self):
        out = subprocess.run(["curl", "-sS", "--http1.1", "-D", "-", "-H", "x-hold-ms: 50",
                              f"http://{LOOPBACK}:{self.wp.port}/curl"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertEqual(status_of(head), 200)
        self.assertIn(b"\r\nx-held: yes", head.lower())
        self.assertEqual(json.loads(body)["target"], "/curl")

    def test_deny_after_a_wait_keeps_the_connection(self):
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("GET", "/denied", headers={"x-hold-ms": "200", "x-hold-deny": "418"})
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (418, b"held and denied"))
        self.assertIsNone(r.getheader("x-held"))  # a local answer carries its own headers
        c.request("GET", "/after")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        r.read()
        c.close()
        self.assertEqual(self.upstream_targets(), ["/after"])
        self.assertTrue(any("status=418" in l and "ext_authz=hold:deny:200" in l
                            for l in self.access("/denied")), self.wp.access_log())
        # The rest of the chain still runs after a wait that continues.
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("GET", "/admin/x", headers={"x-hold-ms": "50"})
        r = c.getresponse()
        self.assertEqual((r.status, r.read()), (403, b"RBAC: access denied"))
        c.close()
        self.assertEqual(self.upstream_targets(), ["/after"])

    def test_partial_body_then_the_whole_body_upstream(self):
        body = os.urandom(1 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            out = subprocess.run(["curl", "-sS", "--http1.1", "-H", "Expect:",
                                  "-H", "x-hold-body: 1024,partial", "--data-binary",
                                  "@" + f.name, f"http://{LOOPBACK}:{self.wp.port}/partial"],
                                 capture_output=True, timeout=60, check=True).stdout
        self.assertEqual(json.loads(out)["body_len"], len(body))
        h, got = self.upstream_headers("/partial")
        self.assertEqual(got, body)
        self.assertEqual(h.get("x-held-body-bytes"), "1024")
        self.assertEqual(h.get("x-held-truncated"), "1")
        self.assertIn("body_bytes=1024", self.hold_log("started", "/partial")[0])

    def test_small_body_collected_whole(self):
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("POST", "/small", body=b"q" * 700, headers={"x-hold-body": "1024"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        r.read()
        c.close()
        # Wanted beyond the input buffer's bound (a head plus 64 KiB): still collected whole.
        wide = os.urandom(300000)
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("POST", "/wide", body=wide, headers={"x-hold-body": "400000"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        r.read()
        c.close()
        h, got = self.upstream_headers("/wide")
        self.assertEqual((got, h.get("x-held-body-bytes")), (wide, "300000"))
        h, got = self.upstream_headers("/small")
        self.assertEqual(got, b"q" * 700)
        self.assertEqual(h.get("x-held-body-bytes"), "700")
        self.assertNotIn("x-held-truncated", h)

    def test_body_too_large_is_413_and_the_check_never_starts(self):
        out = raw_exchange(self.wp.port, b"POST /big HTTP/1.1\r\nHost: svc\r\nx-hold-body: 1024\r\n"
                           b"Content-Length: 2000\r\n\r\n" + b"x" * 2000, timeout=3)
        self.assertEqual(status_of(out), 413, out)
        self.assertTrue(out.endswith(b"Payload Too Large"), out)
        # Chunked, so only the bytes say it is too large.
        chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
        out = raw_exchange(self.wp.port, b"POST /bigchunked HTTP/1.1\r\nHost: svc\r\n"
                           b"x-hold-body: 1024\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks,
                           timeout=3)
        self.assertEqual(status_of(out), 413, out)
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(self.hold_log("started", "/big"), [])
        self.assertEqual(self.hold_log("started", "/bigchunked"), [])
        wait_for(lambda: len(self.access("/bigchunked")) == 1)
        self.assertIn("details=request_payload_too_large", self.access("/bigchunked")[0])

    def test_chunked_upload_in_pieces(self):
        pieces = [b"alpha-" * 50, b"beta-" * 40, b"gamma" * 30]
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /chunked HTTP/1.1\r\nHost: svc\r\nx-hold-body: 4096\r\n"
                      b"x-hold-ms: 100\r\nTransfer-Encoding: chunked\r\n\r\n")
            for p in pieces:
                time.sleep(0.1)
                s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            time.sleep(0.1)
            self.assertEqual(self.upstream.requests, [])
            s.sendall(b"0\r\n\r\n")
            status, headers, body, _ = read_response(s)
        self.assertEqual(status, 200)
        h, got = self.upstream_headers("/chunked")
        self.assertEqual(got, b"".join(pieces))
        self.assertEqual(h.get("x-held-body-bytes"), str(len(got)))
        # Larger than what is wanted, partial: the first 1024 bytes, then the rest streams.
        big = [os.urandom(700) for _ in range(10)]
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /chunked2 HTTP/1.1\r\nHost: svc\r\nx-hold-body: 1024,partial\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            for p in big:
                s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            s.sendall(b"0\r\n\r\n")
            status, _, _, _ = read_response(s)
        self.assertEqual(status, 200)
        h, got = self.upstream_headers("/chunked2")
        self.assertEqual(got, b"".join(big))
        self.assertEqual((h.get("x-held-body-bytes"), h.get("x-held-truncated")), ("1024", "1"))

    def test_expect_continue_is_answered_when_the_body_is_wanted(self):
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"PUT /expect HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n"
                      b"x-hold-body: 64\r\nExpect: 100-continue\r\n\r\n")
            interim = s.recv(65536)
            self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"hello")
            status, _, _, rest = read_response(s)
            self.assertEqual(status, 200)
            self.assertNotIn(b"100 Continue", rest)
        h, got = self.upstream_headers("/expect")
        self.assertEqual((got, h.get("x-held-body-bytes")), (b"hello", "5"))

    def test_pipelined_requests_keep_their_order(self):
        reqs = (b"GET /p1 HTTP/1.1\r\nHost: svc\r\nx-hold-ms: 400\r\n\r\n"
                b"POST /p2 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /p3 HTTP/1.1\r\nHost: svc\r\nx-hold-ms: 50\r\nx-hold-deny: 401\r\n\r\n"
                b"GET /p4 HTTP/1.1\r\nHost: svc\r\nx-hold-body: 10\r\n\r\n")
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(reqs)
            got = []
            rest = b""
            for _ in range(4):
                # read_response reads from the socket; keep what it read past each response.
                status, headers, body, rest = self._read_buffered(s, rest)
                got.append((status, json.loads(body)["target"] if status == 200 else body))
        self.assertEqual(got, [(200, "/p1"), (200, "/p2"), (401, b"held and denied"),
                               (200, "/p4")])
        self.assertEqual(self.upstream_targets(), ["/p1", "/p2", "/p4"])

    @staticmethod
    def _read_buffered(sock, buf):
        sock.settimeout(TIMEOUT)
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            rest += sock.recv(65536)
        return int(lines[0].split()[1]), headers, rest[:n], rest[n:]

    def test_client_disconnect_cancels_the_check(self):
        s = socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT)
        s.sendall(b"GET /gone HTTP/1.1\r\nHost: svc\r\nx-hold-ms: 800\r\n\r\n")
        self.assertTrue(wait_for(lambda: self.hold_log("started", "/gone")))
        s.close()
        self.assertTrue(wait_for(lambda: self.hold_log("cancelled", "/gone")), self.wp.stderr())
        # Mid-way through the body the filter wants: no check starts at all.
        s = socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT)
        s.sendall(b"POST /gone2 HTTP/1.1\r\nHost: svc\r\nx-hold-body: 1024\r\n"
                  b"Content-Length: 1000\r\n\r\n" + b"z" * 10)
        time.sleep(0.2)
        s.close()
        time.sleep(1.0)  # past the first hold's end
        self.assertEqual(self.hold_log("done", "/gone"), [], "done after the cancel")
        self.assertEqual(self.hold_log("started", "/gone2"), [])
        self.assertEqual(self.upstream.requests, [])
        self.assertTrue(wait_for(lambda: any("flags=DC" in l for l in self.access("/gone"))),
                        self.wp.access_log())
        # Still serving.
        c = http.client.HTTPConnection(LOOPBACK, self.wp.port, timeout=TIMEOUT)
        c.request("GET", "/still", headers={"x-hold-ms": "10"})
        self.assertEqual(c.getresponse().status, 200)
        c.close()

    def test_reading_stops_while_the_check_is_out(self):
        # A body the filter does not want: while the check is out the waypoint reads at most a
        # head's worth more, so the client soon cannot send; afterwards all of it goes upstream.
        total = 16 << 20
        body = os.urandom(total)
        with socket.create_connection((LOOPBACK, self.wp.port), timeout=TIMEOUT) as s:
            s.sendall(b"POST /bounded HTTP/1.1\r\nHost: svc\r\nx-hold-ms: 1500\r\n"
                      b"Content-Length: %d\r\n\r\n" % total)
            s.setblocking(False)
            sent = 0
            deadline = time.time() + 1.0
            while time.time() < deadline and sent < total:
                try:
                    sent += s.send(body[sent:sent + 65536])
                except BlockingIOError:
                    time.sleep(0.01)
            self.assertEqual(self.upstream.requests, [])
            # Kernel buffers on both ends take some; the waypoint itself at most ~124 KiB.
            self.assertLess(sent, 8 << 20, "the waypoint kept reading while the check was out")
            s.setblocking(True)
            s.sendall(body[sent:])
            status, _, out, _ = read_response(s, timeout=60)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(out)["body_len"], total)
        _, got = self.upstream_headers("/bounded")
        self.assertEqual(got, body)


class AsyncHttp2Test(AsyncTestBase):
    POLICY = "DENY deny-admin paths=/admin/*\n"

    def test_a_waiting_stream_does_not_hold_another(self):
        c = H2Client(self.wp.port)
        try:
            slow = c.request("/slow", [("x-hold-ms", "800")])
            fast = c.request("/fast")
            self.assertTrue(c.pump(lambda: fast in c.ended))
            self.assertNotIn(slow, c.ended)
            self.assertEqual(c.status[fast], 200)
            self.assertEqual(self.upstream_targets(), ["/fast"])
            self.assertTrue(c.pump(lambda: slow in c.ended))
            self.assertEqual(c.status[slow], 200)
            self.assertEqual(c.headers[slow].get("x-held"), "yes")
            self.assertNotIn("x-held", c.headers[fast])
            self.assertEqual(json.loads(c.body[slow])["target"], "/slow")
        finally:
            c.close()

    def test_curl_h2_allow_and_deny(self):
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-",
                              "-H", "x-hold-ms: 50", f"http://{LOOPBACK}:{self.wp.port}/c2"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        self.assertIn(b"HTTP/2 200", out)
        self.assertIn(b"x-held: yes", out)
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", " %{http_code}",
                              "-H", "x-hold-ms: 50", "-H", "x-hold-deny: 403",
                              f"http://{LOOPBACK}:{self.wp.port}/c3"],
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        self.assertEqual(out, b"held and denied 403")
        self.assertEqual(self.upstream_targets(), ["/c2"])

    def test_bodies_partial_whole_and_too_large(self):
        big = os.urandom(1 << 20)
        # A body wanted beyond the stream window (64 KiB): collected DATA is acknowledged.
        wide = os.urandom(150000)
        res = h2_request(self.wp.port, [
            ("POST", "/h2partial", [("x-hold-body", "1024,partial")], big),
            ("POST", "/h2small", [("x-hold-body", "1024")], b"s" * 300),
            ("POST", "/h2wide", [("x-hold-body", "200000")], wide),
        ])
        self.assertEqual([r[0] for r in res], [200, 200, 200])
        h, got = self.upstream_headers("/h2wide")
        self.assertEqual((got, h.get("x-held-body-bytes")), (wide, "150000"))
        # Too large: known from content-length (answered before the body), or from the bytes.
        c = H2Client(self.wp.port)
        try:
            c.pump(lambda: False, timeout=0.2)
            known = c.request("/h2toolarge", [("x-hold-body", "1024"), ("content-length", "2000")],
                              method="POST", end=False)
            self.assertTrue(c.pump(lambda: known in c.ended))
            self.assertEqual((c.status[known], c.body[known]), (413, b"Payload Too Large"))
            bytes_only = c.request("/h2toolarge2", [("x-hold-body", "1024")], method="POST",
                                   end=False)
            c.send_body(bytes_only, b"u" * 5000)
            self.assertTrue(c.pump(lambda: bytes_only in c.ended))
            self.assertEqual(c.status[bytes_only], 413)
            # The connection goes on.
            last = c.request("/h2after")
            self.assertTrue(c.pump(lambda: last in c.ended))
            self.assertEqual(c.status[last], 200)
        finally:
            c.close()
        h, got = self.upstream_headers("/h2partial")
        self.assertEqual(got, big)
        self.assertEqual((h.get("x-held-body-bytes"), h.get("x-held-truncated")), ("1024", "1"))
        h, got = self.upstream_headers("/h2small")
        self.assertEqual((got, h.get("x-held-body-bytes")), (b"s" * 300, "300"))
        self.assertEqual(sorted(self.upstream_targets()),
                         ["/h2after", "/h2partial", "/h2small", "/h2wide"])
        self.assertEqual(self.hold_log("started", "/h2toolarge"), [])

    def test_reset_during_the_wait_cancels_and_the_connection_goes_on(self):
        c = H2Client(self.wp.port)
        try:
            sid = c.request("/rst", [("x-hold-ms", "700")])
            self.assertTrue(wait_for(lambda: self.hold_log("started", "/rst")))
            c.reset_stream(sid)
            self.assertTrue(wait_for(lambda: self.hold_log("cancelled", "/rst")),
                            self.wp.stderr())
            nxt = c.request("/next", [("x-hold-ms", "10")])
            self.assertTrue(c.pump(lambda: nxt in c.ended))
            self.assertEqual(c.status[nxt], 200)
            time.sleep(1.0)  # past the reset stream's hold
            c.pump(lambda: False, timeout=0.3)
            self.assertNotIn(sid, c.status)
        finally:
            c.close()
        self.assertEqual(self.hold_log("done", "/rst"), [], "done after the reset")
        self.assertEqual(self.upstream_targets(), ["/next"])
        self.assertTrue(wait_for(lambda: any("flags=DR" in l for l in self.access("/rst"))),
                        self.wp.access_log())

    def test_held_data_is_given_back_to_the_connection_window(self):
        # Each waiting stream holds up to its window (64 KiB) unacknowledged; resetting them must
        # return those bytes to the connection window (1 MiB), or the connection stalls.
        c = H2Client(self.wp.port)
        try:
            c.pump(lambda: False, timeout=0.3)  # the waypoint's SETTINGS and window first
            sids = []
            for i in range(20):
                sid = c.request(f"/held{i}", [("x-hold-ms", "5000")], method="POST", end=False)
                c.send_body(sid, b"h" * (64 << 10), end=False)
                sids.append(sid)
            # Nothing was acknowledged: the connection window is spent.
            c.pump(lambda: False, timeout=0.3)
            self.assertEqual(c.conn.outbound_flow_control_window, 0)
            for sid in sids:
                c.conn.reset_stream(sid)
            c.sock.sendall(c.conn.data_to_send())
            self.assertTrue(wait_for(lambda: len(self.wp.stderr().split("hold cancelled")) > 20))
            # A fresh upload larger than the connection window must go through.
            body = os.urandom(2 << 20)
            sid = c.request("/after", method="POST", end=False)
            while body:
                c.pump(lambda: c.conn.local_flow_control_window(sid) > 0, timeout=5)
                self.assertGreater(c.conn.local_flow_control_window(sid), 0,
                                   "the connection window never reopened")
                body = c.send_body(sid, body)
            self.assertTrue(c.pump(lambda: sid in c.ended, timeout=30))
            self.assertEqual(c.status[sid], 200)
            self.assertEqual(json.loads(c.body[sid])["body_len"], 2 << 20)
        finally:
            c.close()


class AsyncTimeoutTest(AsyncTestBase):
    ARGS = ("--hold-filter", "--stream-idle-timeout", "1s")

    def test_h1_stream_idle_timeout_during_a_wait(self):
        start = time.time()
        out = raw_exchange(self.wp.port, b"GET /idle1 HTTP/1.1\r\nHost: svc\r\n"
                           b"x-hold-ms: 4000\r\n\r\n", timeout=6)
        self.assertEqual(status_of(out), 408, out)
        self.assertLess(time.time() - start, 3.5)
        self.assertTrue(wait_for(lambda: self.hold_log("cancelled", "/idle1")))
        self.assertTrue(any("flags=SI" in l for l in self.access("/idle1")), self.wp.access_log())
        self.assertEqual(self.upstream.requests, [])

    def test_h2_stream_idle_timeout_during_a_wait(self):
        c = H2Client(self.wp.port)
        try:
            start = time.time()
            sid = c.request("/idle2", [("x-hold-ms", "4000")])
            self.assertTrue(c.pump(lambda: sid in c.ended, timeout=6))
            self.assertEqual(c.status.get(sid), 408)
            self.assertLess(time.time() - start, 3.5)
        finally:
            c.close()
        self.assertTrue(wait_for(lambda: self.hold_log("cancelled", "/idle2")))
        self.assertEqual(self.hold_log("done", "/idle2"), [])
        self.assertEqual(self.upstream.requests, [])


if __name__ == "__main__":
    unittest.main()
