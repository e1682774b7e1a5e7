#!/usr/bin/env python3
"""An HTTP external authorizer for the tests, answering like Istio's sample ext-authz service.

    http_authz.py --listen HOST:PORT [--log FILE]

Prints `listening <port>` once serving (PORT 0 picks one) and appends one JSON line per check to
FILE: {"method", "path", "headers" (lower-case name -> value, repeats joined by ","), "body"
(UTF-8, undecodable bytes replaced), "body_len", "peer" ("host:port" of the checking connection,
so a test can count connections)}. The answer depends on the checked request's `x-ext-authz`:
  allow       200, x-ext-authz-check-result: allowed, x-ext-authz-upstream: added
  deny-418    418, x-teapot: yes, body "short and stout"
  hang        no answer until the peer closes the connection
  garbage     "NOT HTTP\\r\\n\\r\\n", then close
  error       500
  allow-body  allow when the body is non-empty and equals the x-expect-body header, else deny
  otherwise   403, x-ext-authz-check-result: denied, body "denied by ext_authz for not found
              header "x-ext-authz: allow" in the request"
HTTP/1.1 with keep-alive, every method, bodies by content-length or chunked.
"""

import argparse
import http.server
import json
import sys
import threading

DENY_BODY = b'denied by ext_authz for not found header "x-ext-authz: allow" in the request'
MAX_BODY = 16 << 20


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "http-authz-test"
    log_lock = threading.Lock()
    log_file = None

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; every method is a check here.
        if name.startswith("do_"):
            return self.check
        raise AttributeError(name)

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ValueError("connection closed inside a chunked body")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers until the empty line.
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                if len(body) + size > MAX_BODY:
                    raise ValueError("body too large")
                body += self.rfile.read(size)
                self.rfile.readline(8)
        length = int(self.headers.get("content-length", "0") or "0")
        if length < 0 or length > MAX_BODY:
            raise ValueError("bad content-length")
        return self.rfile.read(length) if length else b""

    def record(self, body):
        if self.log_file is None:
            return
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + "," + value if name in headers else value
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            "body_len": len(body),
            "peer": "%s:%d" % self.client_address[:2],
        }
        with self.log_lock:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def answer(self, status, headers, body=b""):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def deny(self):
        self.answer(403, [("content-type", "text/plain"),
                          ("x-ext-authz-check-result", "denied")], DENY_BODY)

    def allow(self):
        self.answer(200, [("x-ext-authz-check-result", "allowed"),
                          ("x-ext-authz-upstream", "added")])

    def check(self):
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            self.answer(400, [("connection", "close")], b"bad request body")
            return
        self.record(body)
        mode = self.headers.get("x-ext-authz", "")
        if mode == "allow":
            self.allow()
        elif mode == "deny-418":
            self.answer(418, [("content-type", "text/plain"), ("x-teapot", "yes")],
                        b"short and stout")
        elif mode == "hang":
            # Hold the connection without answering until the checker gives up and closes it.
            self.close_connection = True
            while self.rfile.read(1):
                pass
        elif mode == "garbage":
            self.close_connection = True
            self.wfile.write(b"NOT HTTP\r\n\r\n")
            self.wfile.flush()
        elif mode == "error":
            self.answer(500, [("content-type", "text/plain")], b"authorizer failure")
        elif mode == "allow-body":
            expect = self.headers.get("x-expect-body", "").encode("utf-8")
            if body and body == expect:
                self.allow()
            else:
                self.deny()
        else:
            self.deny()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (PORT 0 picks one)")
    parser.add_argument("--log", help="append one JSON line per check to this file")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if ":" in host:
        Server.address_family = __import__("socket").AF_INET6
    Handler.log_file = args.log
    server = Server((host, int(port)), Handler)
    print("listening %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
