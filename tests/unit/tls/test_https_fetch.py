#!/usr/bin/python3
"""HttpsJwksFetcher (agent/tls/https_fetch.h) against real Python HTTPS servers on 127.0.0.1.

A test CA signs the servers' certificates at test time; `https_fetch_probe` does one fetch with
that CA (or another) and prints what it got. Loopback only.
"""

import datetime
import http.server
import os
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import ipaddress

BUILD = os.environ.get("AMBIT_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../../build"))
PROBE = os.path.join(BUILD, "tests/unit/tls/https_fetch_probe")
LOOPBACK = "127.0.0.1"
JWKS = b'{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"x","y":"y"}]}'


def make_ca(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca_key, ca_cert, dns=(), ips=()):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks server")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def pem_cert(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(self.path)
        self.server.hosts.append(self.headers.get("host"))
        if self.path == "/jwks":
            self.send_response(200)
            self.send_header("content-length", str(len(JWKS)))
            self.end_headers()
            self.wfile.write(JWKS)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (JWKS[:10], JWKS[10:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(JWKS)
            self.close_connection = True
        elif self.path == "/missing":
            self.send_response(404)
            self.send_header("content-length", "9")
            self.end_headers()
            self.wfile.write(b"not found")
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("location", "https://elsewhere.example/jwks")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path.startswith("/big/"):
            n = int(self.path[5:])
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            try:
                self.wfile.write(b"x" * n)
            except OSError:
                pass
        elif self.path == "/slow":
            time.sleep(3)
            self.send_response(200)
            self.send_header("content-length", str(len(JWKS)))
            self.end_headers()
            self.wfile.write(JWKS)
        elif self.path == "/trickle":
            # Headers at once, then a byte every 200 ms: each read is quick, the whole is not.
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context, family=socket.AF_INET, host=LOOPBACK):
        self.address_family = family
        self.context = context
        self.paths = []
        self.hosts = []
        super().__init__((host, 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request, client_address):
        # The handshake runs in the request's thread, so a client that rejects the certificate
        # (or never speaks) holds up no one else.
        if self.context is not None:
            request.settimeout(10)
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass

    def close(self):
        self.shutdown()
        self.server_close()


class HttpsFetchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        ca_key, ca_cert = make_ca("ambit test CA")
        other_key, other_cert = make_ca("some other CA")
        cls.ca_file = cls.write("ca.pem", pem_cert(ca_cert))
        cls.other_ca_file = cls.write("other-ca.pem", pem_cert(other_cert))

        def context(key, cert):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            name = f"{id(cert)}"
            ctx.load_cert_chain(cls.write(name + ".crt", pem_cert(cert)),
                                cls.write(name + ".key", pem_key(key)))
            return ctx

        cls.good_ctx = context(*make_leaf(ca_key, ca_cert, dns=["localhost"],
                                          ips=[LOOPBACK, "::1"]))
        cls.wrong_host_ctx = context(*make_leaf(ca_key, ca_cert, dns=["jwks.example.test"]))
        cls.other_ca_ctx = context(*make_leaf(other_key, other_cert, ips=[LOOPBACK]))
        tls12 = context(*make_leaf(ca_key, ca_cert, ips=[LOOPBACK]))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        cls.tls12_ctx = tls12
        tls11 = context(*make_leaf(ca_key, ca_cert, ips=[LOOPBACK]))
        tls11.minimum_version = ssl.TLSVersion.TLSv1
        tls11.maximum_version = ssl.TLSVersion.TLSv1_1
        cls.tls11_ctx = tls11

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    @classmethod
    def write(cls, name, data):
        path = os.path.join(cls.dir.name, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def serve(self, context, **kw):
        s = Server(context, **kw)
        self.addCleanup(s.close)
        return s

    def fetch(self, uri, ca_file=None, timeout_ms=5000):
        args = [PROBE, uri, ca_file if ca_file is not None else self.ca_file, str(timeout_ms)]
        out = subprocess.run(args, capture_output=True, timeout=30).stdout.decode(errors="replace")
        lines = out.split("\n")
        elapsed = int([l for l in lines if l.startswith("elapsed_ms ")][-1].split()[1])
        if lines[0].startswith("OK "):
            n = int(lines[0].split()[1])
            return True, out[len(lines[0]) + 1:][:n], elapsed
        return False, lines[0], elapsed

    def test_good_chain_ip_literal(self):
        s = self.serve(self.good_ctx)
        ok, body, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks")
        self.assertTrue(ok, body)
        self.assertEqual(body.encode(), JWKS)
        self.assertEqual(s.hosts, [f"{LOOPBACK}:{s.port}"])

    def test_good_chain_host_name_and_fragment_dropped(self):
        s = self.serve(self.good_ctx)
        ok, body, _ = self.fetch(f"https://localhost:{s.port}/jwks#frag")
        self.assertTrue(ok, body)
        self.assertEqual(body.encode(), JWKS)
        self.assertEqual(s.paths, ["/jwks"])

    def test_ipv6_literal(self):
        s = self.serve(self.good_ctx, family=socket.AF_INET6, host="::1")
        ok, body, _ = self.fetch(f"https://[::1]:{s.port}/jwks")
        self.assertTrue(ok, body)
        self.assertEqual(body.encode(), JWKS)

    def test_chunked_and_until_close_bodies(self):
        s = self.serve(self.good_ctx)
        for path in ("/chunked", "/until-close"):
            ok, body, _ = self.fetch(f"https://{LOOPBACK}:{s.port}{path}")
            self.assertTrue(ok, path + ": " + body)
            self.assertEqual(body.encode(), JWKS, path)

    def test_tls12_accepted_tls11_refused(self):
        s = self.serve(self.tls12_ctx)
        ok, body, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks")
        self.assertTrue(ok, body)
        s = self.serve(self.tls11_ctx)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks")
        self.assertFalse(ok)
        self.assertIn("TLS handshake", err)
        self.assertEqual(s.paths, [])

    def test_wrong_host_is_refused(self):
        s = self.serve(self.wrong_host_ctx)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks")
        self.assertFalse(ok)
        self.assertIn("TLS handshake", err)
        self.assertIn("certificate", err)
        self.assertEqual(s.paths, [])  # no request was sent
        ok, err, _ = self.fetch(f"https://localhost:{s.port}/jwks")
        self.assertFalse(ok)
        self.assertEqual(s.paths, [])

    def test_untrusted_ca_is_refused(self):
        s = self.serve(self.other_ca_ctx)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks")
        self.assertFalse(ok)
        self.assertIn("certificate", err)
        # The system roots do not know the test CA either.
        s2 = self.serve(self.good_ctx)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s2.port}/jwks", ca_file="")
        self.assertFalse(ok)
        self.assertIn("certificate", err)
        # With that CA it is trusted.
        ok, body, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks", ca_file=self.other_ca_file)
        self.assertTrue(ok, body)

    def test_non_200_and_redirect_are_errors(self):
        s = self.serve(self.good_ctx)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/missing")
        self.assertFalse(ok)
        self.assertIn("answered 404", err)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/moved")
        self.assertFalse(ok)
        self.assertIn("answered 302", err)
        self.assertIn("redirects are not followed", err)
        self.assertEqual(s.paths, ["/missing", "/moved"])  # the Location was not fetched

    def test_oversize_body_is_refused(self):
        s = self.serve(self.good_ctx)
        ok, body, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/big/{1 << 20}")
        self.assertTrue(ok)
        self.assertEqual(len(body), 1 << 20)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/big/{(1 << 20) + 1}")
        self.assertFalse(ok)
        self.assertIn("RESOURCE_EXHAUSTED", err)

    def test_slow_server_past_the_deadline(self):
        s = self.serve(self.good_ctx)
        ok, err, elapsed = self.fetch(f"https://{LOOPBACK}:{s.port}/slow", timeout_ms=1000)
        self.assertFalse(ok)
        self.assertIn("DEADLINE_EXCEEDED", err)
        self.assertGreaterEqual(elapsed, 900)
        self.assertLess(elapsed, 2000)
        # A body that trickles in keeps each read short; the deadline is for the whole answer.
        ok, err, elapsed = self.fetch(f"https://{LOOPBACK}:{s.port}/trickle", timeout_ms=1000)
        self.assertFalse(ok)
        self.assertIn("DEADLINE_EXCEEDED", err)
        self.assertLess(elapsed, 2000)

    def test_silent_server_times_out_in_the_handshake(self):
        with socket.socket() as lsock:
            lsock.bind((LOOPBACK, 0))
            lsock.listen(4)
            port = lsock.getsockname()[1]
            ok, err, elapsed = self.fetch(f"https://{LOOPBACK}:{port}/jwks", timeout_ms=500)
        self.assertFalse(ok)
        self.assertIn("DEADLINE_EXCEEDED", err)
        self.assertIn("TLS handshake", err)
        self.assertLess(elapsed, 1500)

    def test_connection_refused(self):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{port}/jwks")
        self.assertFalse(ok)
        self.assertIn("refused", err)

    def test_plain_http_like_istiod(self):
        s = self.serve(None)
        ok, body, _ = self.fetch(f"http://{LOOPBACK}:{s.port}/jwks")
        self.assertTrue(ok, body)
        self.assertEqual(body.encode(), JWKS)

    def test_https_uri_against_plain_server_fails(self):
        s = self.serve(None)
        ok, err, _ = self.fetch(f"https://{LOOPBACK}:{s.port}/jwks", timeout_ms=2000)
        self.assertFalse(ok)
        self.assertIn("TLS handshake", err)

    def test_bad_uris(self):
        for uri, want in (("ftp://127.0.0.1/jwks", "scheme"),
                          ("https://user@127.0.0.1/jwks", "userinfo"),
                          ("https:///jwks", "no host"),
                          ("https://127.0.0.1:99999/jwks", "bad port"),
                          ("https://127.0.0.1/a b", "space"),
                          ("jwks.json", "absolute")):
            ok, err, _ = self.fetch(uri)
            self.assertFalse(ok, uri)
            self.assertIn(want, err, uri)

    def test_bad_ca_file(self):
        bad = self.write("bad-ca.pem", b"not a certificate")
        out = subprocess.run([PROBE, "https://127.0.0.1/jwks", bad], capture_output=True,
                             timeout=10).stdout.decode()
        self.assertIn("cannot load the CA certificates", out)


if __name__ == "__main__":
    unittest.main()
