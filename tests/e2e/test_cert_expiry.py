"""End to end: a certificate that expires (or stops being acceptable) while an HBONE session made
with it is still open. A pooled session must not carry new streams past that moment: the side
whose certificate went bad drains it (GOAWAY, open streams finish) and says why; the next
connection needs a fresh handshake, which fails closed until a valid certificate exists.

Two simulated nodes (tests/e2e/topology.py) taking certificates from an external CA (a third
ambitd serving the CA API), with different lifetimes so that only one side's certificate expires.
A client in pod a opens a new connection every 100-200 ms to pod b, so the pooled session is
always busy and always reused. Every loop is bounded in count and time; everything is torn down
on failure too.
"""

import datetime
import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_faults as faults  # noqa: E402
from apps import H2_CLIENT, echo_loop  # noqa: E402
from topology import free_port  # noqa: E402

TRUST = faults.TRUST
WEB = f"{TRUST}/ns/default/sa/web"
API = f"{TRUST}/ns/backend/sa/api"
PORT = 7930


def not_after(agent):
    (cert,) = faults.certs(agent)
    return datetime.datetime.strptime(cert["notAfter"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def metric(agent, name):
    total = 0.0
    for line in agent.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            if key == name or key.startswith(name):
                total += float(value)
    return total


def drain_lines(agent, reason):
    return [l for l in agent.logs().splitlines() if f": draining ({reason}): " in l]


class ExternalCaNodes:
    """TwoNodes whose agents take certificates from a CA that can be stopped and restarted."""

    def __init__(self, name, ttl1, ttl2):
        self.nodes = faults.TwoNodes(name, start=False)
        try:
            n, t = self.nodes, self.nodes.topo
            self.tokens = os.path.join(t.workdir, "ca-tokens")
            with open(self.tokens, "w") as f:
                f.write("tok1 node1\ntok2 node2\n")
            self.ca = t.add_agent("ca")
            t.write_pods(self.ca, [n.a, n.b])
            self.ca_port = free_port()
            self.start_ca()
            root = os.path.join(self.ca.ca_dir, "ca", "root-cert.pem")
            for agent, token, pod, ttl in ((n.n1, "tok1", n.a, ttl1), (n.n2, "tok2", n.b, ttl2)):
                path = os.path.join(t.workdir, f"token-{agent.node}")
                with open(path, "w") as f:
                    f.write(token + "\n")
                agent.start("--ca-address", f"localhost:{self.ca_port}", "--ca-root-cert", root,
                            "--ca-token-file", path, "--cert-ttl", f"{ttl}s", wait_pods=[pod])
            n.n1.wait_log(f"certificate {WEB} valid", 30)
            n.n2.wait_log(f"certificate {API} valid", 30)
        except BaseException:
            self.nodes.close()
            raise

    def start_ca(self):
        self.ca.start("--ca-listen", f"127.0.0.1:{self.ca_port}", "--ca-tokens", self.tokens)
        self.ca.wait_log("serving istio.v1.auth.IstioCertificateService", 20)

    def close(self):
        self.nodes.close()


def paced(nodes, seconds, name):
    out = os.path.join(nodes.topo.workdir, f"paced-{name}.jsonl")
    proc = nodes.a.popen(echo_loop(nodes.b.ip4, PORT, seconds, name, out, interval=0.1,
                                   jitter=0.1, timeout=3, max_connections=5000),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    nodes.topo.procs.append(proc)
    return proc, out


def paced_results(proc, out, timeout):
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"client loop failed: {err}")
    with open(out) as f:
        return [json.loads(l) for l in f if l.strip()]


class ExpiryTest(unittest.TestCase):
    # The shortest lifetime the tests use (the CA backdates by a minute on top, so renewal is
    # due a few seconds after issue and an outage soon meets it); the other side lives an hour.
    SHORT_TTL = 75
    LONG_TTL = 3600
    GRACE = 1.0  # seconds after notAfter: the worker's timer, one connection in flight
    # Recovery, counted from the moment the restarted CA serves: the jitter of the retry; for a
    # request that was already waiting for the CA, the CA channel's reconnect back-off (2 s cap,
    # 20% jitter); the tunnel's timer; the probe itself.
    MARGIN = 6.0

    def expire_under_load(self, env, expiring, ident):
        """Stops the CA, keeps a client busy across `expiring`'s certificate expiry, and checks
        that nothing is served after it. Returns (records, expiry time, CA stop time)."""
        n = env.nodes
        _, self.echo_out = n.echo_server(PORT)
        self.assertTrue(n.probe(PORT)["ok"])
        env.ca.stop()
        t_stop = time.time()
        time.sleep(2)  # a renewal in flight when the CA stopped may still land
        expires = not_after(expiring)
        self.assertLess(expires - t_stop, self.SHORT_TTL + 1)
        # The session is pooled from the first connection on, and stays busy until past expiry.
        proc, out = paced(n, expires - time.time() + 8, expiring.node)
        records = paced_results(proc, out, expires - time.time() + 60)
        before = [r for r in records if r["t1"] < expires - 1]
        after = [r for r in records if r["t0"] > expires + self.GRACE]
        ok_before = [r for r in before if r["err"] is None]
        served_after = [r for r in after if r["err"] is None]
        print(f"\n{len(records)} connections; {len(ok_before)}/{len(before)} served before "
              f"expiry, {len(served_after)}/{len(after)} after it")
        self.assertGreater(len(ok_before), 50, "the client loop did not run before expiry")
        self.assertGreater(len(after), 20, "the client loop did not run past expiry")
        self.assertEqual(served_after, [],
                         f"{len(served_after)} connection(s) served after {ident} expired "
                         f"(first at +{served_after[0]['t0'] - expires:.2f}s)"
                         if served_after else "")
        return records, expires, t_stop

    def drained_for_expiry(self, expiring, peer, ident, expires):
        """Checks that the HBONE session whose certificate expired was drained with the reason
        logged and counted. Both ends check the certificates at the same instant (a timer at
        notAfter): whichever acts first drains for "expired" (its own) or "peer_expired", and its
        GOAWAY ends the session before the other end's check runs, so either side may be the one
        that says so. Returns (lines of `expiring`, lines of `peer`)."""
        own = drain_lines(expiring, "expired")
        theirs = drain_lines(peer, "peer_expired")
        self.assertTrue(own or theirs, expiring.logs()[-3000:])
        for line in own + theirs:
            self.assertIn(ident, line)
            self.assertGreaterEqual(faults.log_time(line), expires - 0.5, line)
        drained = 'ambit_hbone_sessions_drained_total{reason="%s"}'
        self.assertGreaterEqual(
            metric(expiring, drained % "expired") + metric(peer, drained % "peer_expired"), 1)
        return own, theirs

    def assert_expired_everywhere(self, agent, ident):
        (cert,) = faults.certs(agent)
        self.assertEqual(cert["state"], "expired", cert)
        status, body = agent.ready()
        self.assertEqual(status, 503, body)
        self.assertIn(f"certificate for {ident} is expired", body)
        self.assertIn("expired", faults.ambitctl(agent, "certs").stdout)

    def test_server_certificate_expires_under_load_then_recovers(self):
        env = ExternalCaNodes("e", self.LONG_TTL, self.SHORT_TTL)
        self.addCleanup(env.close)
        n = env.nodes
        records, expires, t_stop = self.expire_under_load(env, n.n2, API)

        # The server (or the client, if it saw the expiry first) said why and counted it.
        own, _ = self.drained_for_expiry(n.n2, n.n1, API, expires)
        for line in own:
            self.assertIn("inbound pod=backend/", line)
        self.assert_expired_everywhere(n.n2, API)
        (cert,) = faults.certs(n.n1)
        self.assertIn(cert["state"], ("valid", "renewing"), cert)  # the client's is still good

        # The CA returns: the server's next retry gets a certificate, and the client's next
        # connection (a fresh handshake) is served. The retry's delay was logged before.
        t_back = time.time()
        env.start_ca()
        # Counted from when the CA serves again: its own start (an agent's, a second or more on
        # a loaded machine) is not the retry's delay.
        t_serving = time.time()
        lines = [l for l in n.n2.logs().splitlines()
                 if "certificate request failed (" in l and faults.log_time(l) <= t_back]
        self.assertTrue(lines, "node2 logged no retry")
        m = re.search(r"retrying in ([0-9.hms]+)\)", lines[-1])
        self.assertIsNotNone(m, lines[-1])
        due = faults.log_time(lines[-1]) + faults.parse_duration(m.group(1))
        bound = max(0.0, due - t_serving) + self.MARGIN
        faults.wait_for("served again after the CA returned",
                        lambda: n.probe(PORT, 2)["ok"], bound + 5, 0.2)
        recovered = time.time() - t_serving
        print(f"CA down {t_back - t_stop:.0f}s, {t_serving - t_back:.1f}s to serve again; retry "
              f"due {due - t_serving:.1f}s after that; first connection served again "
              f"{recovered:.2f}s after the CA served")
        self.assertLessEqual(recovered, bound, "recovery took longer than the logged back-off")
        self.assertEqual(n.n2.ready()[0], 200)

    def test_client_certificate_expires_under_load(self):
        env = ExternalCaNodes("f", self.SHORT_TTL, self.LONG_TTL)
        self.addCleanup(env.close)
        n = env.nodes
        _, expires, _ = self.expire_under_load(env, n.n1, WEB)
        # The client drains its pooled session for its own expiry; the server, if it saw the
        # client's certificate expire before the client's GOAWAY arrived, for the peer's.
        own, _ = self.drained_for_expiry(n.n1, n.n2, WEB, expires)
        for line in own:
            self.assertIn("outbound pod=default/", line)
        self.assert_expired_everywhere(n.n1, WEB)
        # No new handshake with an expired certificate either: refused on the client's side.
        n.n1.wait_log(f"no valid certificate for {WEB}")


# An HBONE client we did not write (Python ssl + h2) whose certificate expires while its session
# is open. Opens stream 1 and echoes a line on it, waits past its certificate's expiry without
# reading, then opens a new stream and writes another line on stream 1. From then on the frames
# are read raw (h2 would stop at the GOAWAY): prints the GOAWAY's last stream id, the new
# stream's RST_STREAM code, and what came back on stream 1.
LATE_STREAM = r"""
import json, os, socket, ssl, sys, time
import h2.config, h2.connection, h2.events
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, RstStreamFrame
certdir, host, authority, expires = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
""" + H2_CLIENT + r"""first = conn.get_next_available_stream_id()
conn.send_headers(first, [(":method", "CONNECT"), (":authority", authority)])
tls.sendall(conn.data_to_send())
out = {"status": None, "echo": b"", "goaway_last": None, "goaway_code": None, "late": None,
       "late_rst": None, "echo_after": b""}
deadline = time.time() + 10
while out["echo"] != b"one\n" and time.time() < deadline:
    data = tls.recv(65536)
    if not data:
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.ResponseReceived):
            out["status"] = int(dict(ev.headers)[b":status"])
            conn.send_data(first, b"one\n")
        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == first:
            out["echo"] += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, first)
    tls.sendall(conn.data_to_send())
time.sleep(max(0.0, expires + 2 - time.time()))
late = conn.get_next_available_stream_id()
out["late"] = late
conn.send_headers(late, [(":method", "CONNECT"), (":authority", authority)])
conn.send_data(first, b"two\n")
tls.sendall(conn.data_to_send())
buf = bytes(conn.incoming_buffer.data)
deadline = time.time() + 10
while time.time() < deadline and (out["late_rst"] is None or out["echo_after"] != b"two\n"):
    tls.settimeout(0.5)
    try:
        data = tls.recv(65536)
    except (socket.timeout, TimeoutError):
        continue
    except OSError:
        break
    if not data:
        break
    buf += data
    while len(buf) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
        if len(buf) < 9 + length:
            break
        frame.parse_body(memoryview(buf[9:9 + length]))
        buf = buf[9 + length:]
        if isinstance(frame, GoAwayFrame):
            out["goaway_last"], out["goaway_code"] = frame.last_stream_id, frame.error_code
        elif isinstance(frame, RstStreamFrame) and frame.stream_id == late:
            out["late_rst"] = frame.error_code
        elif isinstance(frame, DataFrame) and frame.stream_id == first:
            out["echo_after"] += frame.data
out["echo"], out["echo_after"] = out["echo"].decode(), out["echo_after"].decode()
print(json.dumps(out), flush=True)
"""


def mint_svid(agent, identity, lifetime, certdir):
    """An SVID signed with the topology's CA key, valid for `lifetime` seconds from now (the CA
    API would not issue one this short). Returns its notAfter."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    ca = os.path.join(agent.ca_dir, "ca")
    root_pem = open(os.path.join(ca, "root-cert.pem"), "rb").read()
    root = x509.load_pem_x509_certificate(root_pem)
    root_key = serialization.load_pem_private_key(
        open(os.path.join(ca, "root-key.pem"), "rb").read(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    expires = now + datetime.timedelta(seconds=lifetime)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(expires)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    os.makedirs(certdir, exist_ok=True)
    with open(os.path.join(certdir, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(certdir, "root.pem"), "wb") as f:
        f.write(root_pem)
    with open(os.path.join(certdir, "key.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return expires.timestamp()


class PeerExpiryTest(unittest.TestCase):
    """The client's certificate expires during a long HBONE session to ambit's server: the server
    sends GOAWAY naming the last stream it accepted, lets that stream go on, and refuses a stream
    opened afterwards with RST_STREAM(REFUSED_STREAM) instead of forwarding it."""

    LIFETIME = 20  # seconds; a certificate the test signs itself, not one the agent requested

    def test_peer_certificate_expiry_drains_the_session(self):
        n = faults.TwoNodes("h")
        self.addCleanup(n.close)
        _, echo_out = n.echo_server(PORT)
        certdir = os.path.join(n.topo.workdir, "short-svid")
        expires = mint_svid(n.n2, WEB, self.LIFETIME, certdir)
        authority = f"{n.b.ip4}:{PORT}"
        r = n.a.python(LATE_STREAM, certdir, n.b.ip4, authority, expires, in_cgroup=False,
                       timeout=self.LIFETIME + 40)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        print(f"\n{out}")
        self.assertEqual(out["status"], 200, out)
        self.assertEqual(out["echo"], "one\n", out)
        self.assertEqual(out["goaway_code"], 0, out)  # NO_ERROR: a graceful end
        self.assertEqual(out["goaway_last"], 1, out)
        self.assertEqual(out["late_rst"], 7, out)  # REFUSED_STREAM
        self.assertEqual(out["echo_after"], "two\n", "the open stream did not go on")
        self.assertEqual(n.accepted(echo_out, PORT), 1, "the refused stream reached the app")
        lines = drain_lines(n.n2, "peer_expired")
        self.assertTrue(lines, n.n2.logs()[-3000:])
        self.assertIn(f"<- {WEB}", lines[0])
        self.assertGreaterEqual(faults.log_time(lines[0]), expires - 0.5)
        self.assertGreaterEqual(
            metric(n.n2, 'ambit_hbone_sessions_drained_total{reason="peer_expired"}'), 1)


class TrustDomainChangeTest(unittest.TestCase):
    """mesh.yaml's trustDomain changes on the server's node: the identity its inbound sessions
    were established with is replaced (the pod gets an identity in the new domain), and they take
    no new stream."""

    def test_trust_domain_change_drains_inbound_sessions(self):
        n = faults.TwoNodes("g")
        self.addCleanup(n.close)
        _, echo_out = n.echo_server(PORT)
        self.assertTrue(n.probe(PORT)["ok"])
        proc, out = paced(n, 25, "td")
        time.sleep(6)  # the pooled session is busy
        t_change = time.time()
        n.n2.write_config("mesh.yaml", "trustDomain: example.org\n")
        # The data plane has taken the change once it asks for the pod's identity in the new
        # domain (the agent re-sends the pod) or, failing that, finds the old identity out of
        # the domain: whichever it logs first.
        new_id = API.replace("spiffe://cluster.local/", "spiffe://example.org/")
        markers = (f"requesting a certificate for {new_id}",
                   f"TLS context for {API}: not in trust domain example.org")
        deadline = time.time() + 15
        applied = []
        while not applied and time.time() < deadline:
            applied = [l for l in n.n2.logs().splitlines() if any(m in l for m in markers)]
            time.sleep(0.1)
        self.assertTrue(applied, n.n2.logs()[-3000:])
        t_applied = faults.log_time(applied[0])
        records = paced_results(proc, out, 60)
        before = [r for r in records if r["t1"] < t_change]
        after = [r for r in records if r["t0"] > t_applied + 0.5]
        served_after = [r for r in after if r["err"] is None]
        print(f"\ntrust domain changed; applied {t_applied - t_change:.2f}s later; "
              f"{sum(r['err'] is None for r in before)}/{len(before)} served before, "
              f"{len(served_after)}/{len(after)} after")
        self.assertGreater(sum(r["err"] is None for r in before), 10)
        self.assertGreater(len(after), 20)
        self.assertEqual(len(served_after), 0, "streams served with the old identity after the "
                                               "trust-domain change")
        # Said why, once per session, and counted.
        lines = [l for l in n.n2.logs().splitlines() if ": draining (" in l]
        self.assertTrue(lines, n.n2.logs()[-3000:])
        reason = re.search(r": draining \(([a-z_]+)\)", lines[0]).group(1)
        self.assertIn(reason, ("out_of_trust_domain", "removed"), lines[0])
        self.assertIn(API, lines[0])
        self.assertLess(faults.log_time(lines[0]) - t_applied, 0.5)
        self.assertGreaterEqual(
            metric(n.n2, f'ambit_hbone_sessions_drained_total{{reason="{reason}"}}'), 1)


if __name__ == "__main__":
    unittest.main()
