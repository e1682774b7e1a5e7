"""End to end: trust-domain migration (meshConfig trustDomainAliases) and certificate revocation
lists (ambitd --crl-file), with real ambitd/ambit-tunnel processes in network namespaces
(tests/e2e/topology.py) and real TCP clients in the pods.

TrustDomainAliasTest: node1 is still in the old trust domain (its pods' certificates say
spiffe://old.example/...), node2 already in the new one, each listing the other as an alias; both
sign with the same CA root. The client on node1 reaches the server on node2 over HBONE although
their SPIFFE IDs differ in trust domain, and node2's AuthorizationPolicy, written with the new
trust domain (and with cluster.local), matches the client's old-domain identity. Without the
alias node2 refuses the peer at the handshake.

CrlTest: two client pods on node1 (web and other) call the server on node2. The CRL file, signed
with the topology's CA root key, is empty at first, then revokes web's certificate serial: web's
connections are refused at the handshake (the log names its SPIFFE ID and serial, the
handshake-failure metric counts certificate_revoked), other's keep working; a malformed CRL file
afterwards is reported and the last good CRL stays in force.
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
from topology import Topology  # noqa: E402

PORT = 7941


def allow_policy(namespace, principals):
    return json.dumps({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-web", "namespace": namespace},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": principals}}]}]},
    })


def metric(agent, name, labels):
    for line in agent.metrics().splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Nodes:
    """Pods a (and c) on node1 calling b on node2; the agents not started yet."""

    def __init__(self, name, clients=("a",)):
        self.topo = Topology(name)
        self.topo.__enter__()
        try:
            t = self.topo
            self.clients = {}
            sas = {"a": "web", "c": "other"}
            for c in clients:
                self.clients[c] = t.add_pod(c, namespace="default", service_account=sas[c],
                                            node="node1")
            self.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            self.n1, self.n2 = t.add_agent("node1"), t.add_agent("node2")
            for agent in (self.n1, self.n2):
                t.write_pods(agent, list(self.clients.values()) + [self.b])
        except BaseException:
            self.topo.close()
            raise

    def start(self, *args):
        self.n1.start(*args, wait_pods=list(self.clients.values()))
        self.n2.start(*args, wait_pods=[self.b])

    def echo(self):
        out = os.path.join(self.topo.workdir, "echo.out")
        f = open(out, "w")
        self.topo.procs.append(self.b.popen(["/usr/bin/python3", "-u", "-c", faults.ECHO,
                                             str(PORT)], stdout=f, stderr=f))
        f.close()
        faults.wait_for("echo server", lambda: "listening" in open(out).read(), 10, 0.05)

    def probe(self, client="a", timeout=3):
        r = self.clients[client].python(faults.PROBE, self.b.ip4, PORT, timeout,
                                        timeout=timeout + 20)
        return json.loads(r.stdout)

    def wait_probe(self, ok, client="a", timeout=15):
        return faults.wait_for(f"{client} -> b {'served' if ok else 'refused'}",
                               lambda: self.probe(client)["ok"] == ok, timeout, 0.2)

    def hold(self, client="a"):
        """A connection to b's echo held open (faults.HOLD), checked with one round trip."""
        p = self.clients[client].popen(["/usr/bin/python3", "-u", "-c", faults.HOLD, self.b.ip4,
                                        str(PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
        self.topo.procs.append(p)
        self.assertion(p.stdout.readline().strip() == "connected", "held connection not made")
        p.stdin.write("held-1\n")
        p.stdin.flush()
        got = p.stdout.readline().strip()
        self.assertion(got == "held-1", f"held connection did not echo: {got!r}")
        return p

    @staticmethod
    def assertion(ok, message):
        if not ok:
            raise AssertionError(message)

    def assert_held_broken(self, held):
        """The held connection was reset: its next round trip fails."""
        held.stdin.write("held-2\n")
        held.stdin.flush()
        got = held.stdout.readline().strip()
        self.assertion(got in ("closed", "ConnectionResetError", "BrokenPipeError"),
                       f"the held connection still works: {got!r}")

    @staticmethod
    def wait_cut_off(agent):
        """The log line of a session closed because its peer is no longer trusted."""
        return faults.wait_for(
            "a session of a peer no longer trusted closed",
            lambda: [l for l in agent.logs().splitlines() if "closed (peer_not_trusted)" in l],
            15)[0]

    def close(self):
        self.topo.close()


class TrustDomainAliasTest(unittest.TestCase):
    OLD = "old.example"
    NEW = "new.example"

    def setUp(self):
        self.n = Nodes("tda")
        self.addCleanup(self.n.close)

    def test_alias_peer_accepted_and_policy_in_new_domain_matches(self):
        n = self.n
        n.n1.write_config("mesh.yaml",
                          f"trustDomain: {self.OLD}\ntrustDomainAliases: [{self.NEW}]\n")
        n.n2.write_config("mesh.yaml",
                          f"trustDomain: {self.NEW}\ntrustDomainAliases: [{self.OLD}]\n")
        # The server's policy names the client in the server's (new) trust domain.
        n.n2.write_config("authz.yaml",
                          allow_policy("backend", [f"{self.NEW}/ns/default/sa/web"]))
        n.start()
        web_old = f"spiffe://{self.OLD}/ns/default/sa/web"
        api_new = f"spiffe://{self.NEW}/ns/backend/sa/api"
        n.n1.wait_log(f"certificate {web_old} valid", 30)
        n.n2.wait_log(f"certificate {api_new} valid", 30)
        n.echo()
        n.wait_probe(True)
        # The policy is enforced, not vacuous: another principal in the new domain is refused.
        n.n2.write_config("authz.yaml",
                          allow_policy("backend", [f"{self.NEW}/ns/default/sa/someone"]))
        n.wait_probe(False)
        # cluster.local stands for the local trust domain and its aliases (istiod's rule).
        n.n2.write_config("authz.yaml", allow_policy("backend", ["cluster.local/ns/default/sa/web"]))
        n.wait_probe(True)
        # ambitctl's offline check explains it with the expanded principals.
        req = os.path.join(n.topo.workdir, "request.json")
        with open(req, "w") as f:
            json.dump({"enforcement": "L4", "target": {"namespace": "backend"},
                       "source": {"principal": web_old, "ip": "198.18.0.5"},
                       "destination": {"ip": n.b.ip4, "port": PORT}}, f)
        r = faults.run(str(faults.build_dir() / "agent/cli/ambitctl"), "policy", "check",
                       "--config", n.n2.config_dir, "--request", req, check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("decision: allow"), r.stdout)
        self.assertIn(f'"{self.OLD}/ns/default/sa/web"', r.stdout)

        # Without the alias the old domain is another mesh: its identity no longer matches a
        # principal of this one, and node2 no longer accepts it at all: the session that carries
        # a held connection is closed at once (node1 still lists node2's domain as an alias, so
        # only node2 can end it).
        held = n.hold()
        n.n2.write_config("authz.yaml", allow_policy("backend", ["cluster.local/ns/default/sa/web"]))
        n.n2.write_config("mesh.yaml", f"trustDomain: {self.NEW}\n")
        line = n.wait_cut_off(n.n2)
        self.assertIn(web_old, line)
        self.assertIn("trust domain", line)
        n.assert_held_broken(held)
        n.wait_probe(False)


class CrlTest(unittest.TestCase):
    def setUp(self):
        self.n = Nodes("crl", clients=("a", "c"))
        self.addCleanup(self.n.close)
        self.crl_path = os.path.join(self.n.topo.workdir, "crl", "crl.pem")
        os.makedirs(os.path.dirname(self.crl_path))

    def write_crl(self, text):
        tmp = self.crl_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.crl_path)  # as a ConfigMap update swaps the file

    def sign_crl(self, serials):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        ca = os.path.join(self.n.n1.ca_dir, "ca")
        with open(os.path.join(ca, "root-key.pem"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(ca, "root-cert.pem"), "rb") as f:
            root = x509.load_pem_x509_certificate(f.read())
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        b = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
             .last_update(now).next_update(now + datetime.timedelta(days=1)))
        for s in serials:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s)
                                          .revocation_date(now).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    def test_revoked_pod_refused_at_handshake_others_served(self):
        n = self.n
        self.write_crl("")  # mounted, no revocation yet
        n.start("--crl-file", self.crl_path)
        web = f"{faults.TRUST}/ns/default/sa/web"
        n.n1.wait_log(f"certificate {web} valid", 30)
        n.n1.wait_log(f"certificate {faults.TRUST}/ns/default/sa/other valid", 30)
        n.n2.wait_log(f"certificate {faults.TRUST}/ns/backend/sa/api valid", 30)
        n.echo()
        n.wait_probe(True, "a")
        n.wait_probe(True, "c")
        (serial,) = [c["serial"] for c in faults.certs(n.n1) if c["identity"] == web]

        # With 6 000 other revoked serials: the bundle (about 300 KB of PEM) is more than one
        # control message carries, so it reaches the data planes in a sealed file.
        fillers = [(1 << 120) + i for i in range(6000)]
        crl = self.sign_crl([int(serial, 16)] + fillers)
        self.assertGreater(len(crl), 256 * 1024)
        self.write_crl(crl)
        n.n2.wait_log("CRLs: 1 in force, 6001 revoked certificate(s)", 15)
        n.wait_probe(False, "a")
        for _ in range(5):
            self.assertTrue(n.probe("c")["ok"], "a pod whose certificate is not revoked is served")
        line = faults.wait_for(
            "refusal logged",
            lambda: [l for l in n.n2.logs().splitlines() if "presented a revoked certificate" in l],
            10)[0]
        self.assertIn(web, line)
        self.assertIn(serial.lower(), line.lower())
        self.assertGreaterEqual(
            metric(n.n2, "ambit_hbone_handshake_failures_total", 'reason="certificate_revoked"'), 1)

        # A malformed file is reported and the last good CRL stays in force.
        self.write_crl("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
        n.n2.wait_log("--crl-file rejected", 10)
        self.assertFalse(n.probe("a")["ok"])
        self.assertTrue(n.probe("c")["ok"])

        # An empty CRL file lifts the revocation (read at start, then again now).
        self.write_crl("")
        n.wait_probe(True, "a", timeout=20)
        self.assertGreaterEqual(len(re.findall(r"--crl-file \S+: 0 CRL\(s\)", n.n2.logs())), 2)
        n.n2.wait_log("CRLs: none in force any more", 10)

    def test_open_session_of_a_peer_revoked_since_is_cut_off_by_the_server(self):
        """node1 is started without the CRL (a node that ignores revocation, as one whose key was
        stolen would): node2 alone must end the HBONE session web keeps open, resetting the
        connection it carries, and then refuse web at the handshake. other is still served."""
        n = self.n
        self.write_crl("")
        n.n1.start(wait_pods=list(n.clients.values()))
        n.n2.start("--crl-file", self.crl_path, wait_pods=[n.b])
        web = f"{faults.TRUST}/ns/default/sa/web"
        n.n1.wait_log(f"certificate {web} valid", 30)
        n.n2.wait_log(f"certificate {faults.TRUST}/ns/backend/sa/api valid", 30)
        n.echo()
        n.wait_probe(True, "a")
        n.wait_probe(True, "c")
        held = n.hold("a")
        held_other = n.hold("c")
        (serial,) = [c["serial"] for c in faults.certs(n.n1) if c["identity"] == web]
        self.write_crl(self.sign_crl([int(serial, 16)]))
        n.n2.wait_log("CRLs: 1 in force, 1 revoked certificate(s)", 15)
        line = n.wait_cut_off(n.n2)
        self.assertIn(web, line)
        self.assertIn(serial.lower(), line.lower())
        self.assertIn("revoked", line)
        n.assert_held_broken(held)
        held_other.stdin.write("other-2\n")
        held_other.stdin.flush()
        self.assertEqual(held_other.stdout.readline().strip(), "other-2",
                         "the session of a peer that is not revoked was cut off too")
        n.wait_probe(False, "a")
        self.assertTrue(n.probe("c")["ok"])
        self.assertGreaterEqual(
            metric(n.n2, "ambit_hbone_sessions_drained_total", 'reason="peer_not_trusted"'), 1)
        # node1 never heard of the CRL: the refusal is node2's, at the handshake.
        self.assertNotIn("CRLs: 1 in force", n.n1.logs())
        faults.wait_for("handshake refusal logged",
                        lambda: "presented a revoked certificate" in n.n2.logs(), 10)


if __name__ == "__main__":
    unittest.main()
