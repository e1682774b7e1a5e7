"""End to end: workload identity (issue: identity).

Real ambitd (built-in CA, CA API over gRPC+TLS), real ambit-tunnel generating keys and CSRs,
an independent gRPC client (Python grpcio, stubs generated from our proto), openssl and Python's
cryptography checking what was issued.
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, run  # noqa: E402

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def load_ca_stubs(outdir):
    """Generates Python stubs for istio.v1.auth from our proto, as an outside client would."""
    from grpc_tools import protoc
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={outdir}",
                      f"--grpc_python_out={outdir}", "istio/v1/auth/ca.proto"])
    if rc != 0:
        raise RuntimeError("protoc failed for istio/v1/auth/ca.proto")
    sys.path.insert(0, outdir)
    from istio.v1.auth import ca_pb2, ca_pb2_grpc  # noqa: E402
    return ca_pb2, ca_pb2_grpc


def make_csr(uris=(), dns=()):
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def ambitctl(agent, *args):
    return run(str(build_dir() / "agent/cli/ambitctl"), *args, "--admin-socket",
               agent.admin_socket, check=False)


def wait_certs(agent, want, timeout=15):
    """Waits until `ambitctl certs -o json` satisfies want(list); returns the document."""
    deadline = time.time() + timeout
    doc = None
    while time.time() < deadline:
        r = ambitctl(agent, "certs", "-o", "json")
        if r.returncode == 0:
            doc = json.loads(r.stdout)
            if want(doc.get("certificates", [])):
                return doc
        time.sleep(0.1)
    raise AssertionError(f"certificates never reached the wanted state: {doc}\n"
                         f"{agent.logs()[-3000:]}")


class IdentityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("i")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web")
        cls.b = t.add_pod("b", namespace="backend", service_account="api")
        cls.b2 = t.add_pod("b2", namespace="backend", service_account="api")
        # A pod scheduled on node2: node2 may get its identity, node1 may not.
        cls.remote = t.add_pod("r", namespace="remote", service_account="far", node="node2")
        cls.tokens = os.path.join(t.workdir, "ca-tokens")
        with open(cls.tokens, "w") as f:
            f.write("# token node\nnode1-token node1\nnode2-token node2\n")
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.a, cls.b, cls.b2, cls.remote])
        cls.agent.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", cls.tokens,
                        wait_pods=[cls.a, cls.b, cls.b2])
        cls.agent.wait_log("serving istio.v1.auth.IstioCertificateService")
        line = [l for l in cls.agent.logs().splitlines() if "IstioCertificateService" in l][0]
        cls.ca_port = int(line.rsplit("port ", 1)[1].rstrip(")"))
        cls.root_pem = open(os.path.join(cls.agent.ca_dir, "ca", "root-cert.pem")).read()
        cls.stubdir = tempfile.mkdtemp(dir=t.workdir)
        cls.ca_pb2, cls.ca_grpc = load_ca_stubs(cls.stubdir)

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def stub(self):
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem.encode())
        channel = grpc.secure_channel(f"127.0.0.1:{self.ca_port}", creds,
                                      options=[("grpc.ssl_target_name_override", "ambit-ca")])
        self.addCleanup(channel.close)
        return self.ca_grpc.IstioCertificateServiceStub(channel)

    def create(self, csr, token="node1-token", ttl=0):
        md = [("authorization", f"Bearer {token}")] if token else []
        return self.stub().CreateCertificate(
            self.ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=ttl), metadata=md,
            timeout=10)

    def assertGrpcCode(self, code, fn):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception.details()

    # --- certificates of enrolled pods, created inside the data plane -------------------------

    def test_enrolled_pods_get_valid_certificates(self):
        web = "spiffe://cluster.local/ns/default/sa/web"
        api = "spiffe://cluster.local/ns/backend/sa/api"
        doc = wait_certs(self.agent, lambda c: sum(x["state"] == "valid" for x in c) == 2)
        certs = {c["identity"]: c for c in doc["certificates"]}
        self.assertEqual(set(certs), {web, api})  # one per identity, shared by b and b2
        self.assertEqual(certs[api]["pods"], 2)
        for c in certs.values():
            self.assertRegex(c["serial"], r"^[0-9A-Fa-f]{8,}$")
            life = (parse_time(c["notAfter"]) - parse_time(c["notBefore"])).total_seconds()
            self.assertAlmostEqual(life, 24 * 3600 + 60, delta=120)
            self.assertIn("ambit", c["issuer"])
        self.assertEqual(len(doc["trustBundle"]), 1)
        self.assertEqual(doc["trustBundle"][0]["sha256Fingerprint"].count(":"), 31)
        # The table form names the columns operators look for.
        table = ambitctl(self.agent, "certs").stdout
        for column in ("IDENTITY", "STATE", "SERIAL", "NOT AFTER", "ISSUER"):
            self.assertIn(column, table)
        # The private keys never left the data plane: nothing key-like in the agent's log.
        self.assertNotIn("PRIVATE KEY", self.agent.logs())

    def test_certificate_dropped_when_last_pod_leaves(self):
        wait_certs(self.agent, lambda c: any(x["identity"].endswith("sa/api") and
                                             x["state"] == "valid" for x in c))
        self.topo.write_pods(self.agent, [self.a, self.b, self.remote])
        wait_certs(self.agent, lambda c: any(x["identity"].endswith("sa/api") and x["pods"] == 1
                                             for x in c))
        self.topo.write_pods(self.agent, [self.a, self.remote])
        wait_certs(self.agent, lambda c: not any(x["identity"].endswith("sa/api") for x in c))
        self.topo.write_pods(self.agent, [self.a, self.b, self.b2, self.remote])
        wait_certs(self.agent, lambda c: any(x["identity"].endswith("sa/api") and
                                             x["state"] == "valid" for x in c))

    # --- the CA API, from an independent client ----------------------------------------------

    def test_ca_api_issues_verifiable_svid(self):
        identity = "spiffe://cluster.local/ns/default/sa/web"
        csr, key = make_csr([identity])
        resp = self.create(csr, ttl=3600)
        chain = list(resp.cert_chain)
        self.assertGreaterEqual(len(chain), 2)
        d = tempfile.mkdtemp(dir=self.topo.workdir)
        leaf_path, root_path = os.path.join(d, "leaf.pem"), os.path.join(d, "root.pem")
        with open(leaf_path, "w") as f:
            f.write(chain[0])
        with open(root_path, "w") as f:
            f.write(chain[-1])
        self.assertEqual(chain[-1].strip(), self.root_pem.strip())
        v = run("openssl", "verify", "-CAfile", root_path, leaf_path, check=False)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        text = run("openssl", "x509", "-in", leaf_path, "-noout", "-text").stdout
        self.assertIn(f"URI:{identity}", text)
        self.assertIn("CA:FALSE", text)
        # Independent parse with Python's cryptography.
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.UniformResourceIdentifier), [identity])
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertIn(ExtendedKeyUsageOID.SERVER_AUTH, eku)
        self.assertIn(ExtendedKeyUsageOID.CLIENT_AUTH, eku)
        self.assertFalse(leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(leaf.public_key().public_numbers(), key.public_key().public_numbers())
        self.assertGreaterEqual(leaf.serial_number.bit_length(), 100)
        self.assertAlmostEqual((leaf.not_valid_after - leaf.not_valid_before).total_seconds(),
                               3600 + 60, delta=5)
        self.assertEqual(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME), [])

    def test_ca_api_refuses_identity_of_another_node(self):
        csr, _ = make_csr(["spiffe://cluster.local/ns/remote/sa/far"])
        details = self.assertGrpcCode(grpc.StatusCode.PERMISSION_DENIED,
                                      lambda: self.create(csr, token="node1-token"))
        self.assertIn("node1", details)
        # The node the pod runs on may have it.
        self.assertTrue(self.create(csr, token="node2-token").cert_chain)

    def test_ca_api_rejects_bad_requests_and_keeps_serving(self):
        good, _ = make_csr(["spiffe://cluster.local/ns/default/sa/web"])
        self.assertGrpcCode(grpc.StatusCode.UNAUTHENTICATED,
                            lambda: self.create(good, token="wrong"))
        self.assertGrpcCode(grpc.StatusCode.UNAUTHENTICATED, lambda: self.create(good, token=""))
        self.assertGrpcCode(grpc.StatusCode.INVALID_ARGUMENT,
                            lambda: self.create("not a csr at all"))
        truncated = good[: len(good) // 2]
        self.assertGrpcCode(grpc.StatusCode.INVALID_ARGUMENT, lambda: self.create(truncated))
        dns, _ = make_csr(["spiffe://cluster.local/ns/default/sa/web"], dns=["evil.example"])
        self.assertIn("DNS", self.assertGrpcCode(grpc.StatusCode.INVALID_ARGUMENT,
                                                 lambda: self.create(dns)))
        two, _ = make_csr(["spiffe://cluster.local/ns/default/sa/web",
                           "spiffe://cluster.local/ns/backend/sa/api"])
        self.assertGrpcCode(grpc.StatusCode.INVALID_ARGUMENT, lambda: self.create(two))
        other, _ = make_csr(["spiffe://cluster.local/ns/default/sa/nobody"])
        self.assertGrpcCode(grpc.StatusCode.PERMISSION_DENIED, lambda: self.create(other))
        huge = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * (200 * 1024)
        self.assertGrpcCode(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: self.create(huge))
        # Still serving.
        self.assertTrue(self.create(good).cert_chain)
        self.assertIsNone(self.agent.proc.poll())


class ExternalCaTest(unittest.TestCase):
    """node2's agent gets its certificates from node1's agent over the CA API."""

    def test_agent_uses_external_ca(self):
        with Topology("x") as t:
            a = t.add_pod("a", namespace="default", service_account="web")
            c = t.add_pod("c", namespace="shop", service_account="cart", node="node2")
            tokens = os.path.join(t.workdir, "tokens")
            with open(tokens, "w") as f:
                f.write("n2secret node2\n")
            ca_agent = t.add_agent("node1")
            t.write_pods(ca_agent, [a, c])
            ca_agent.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens, wait_pods=[a])
            ca_agent.wait_log("serving istio.v1.auth.IstioCertificateService")
            line = [l for l in ca_agent.logs().splitlines() if "IstioCertificateService" in l][0]
            port = int(line.rsplit("port ", 1)[1].rstrip(")"))
            root = os.path.join(ca_agent.ca_dir, "ca", "root-cert.pem")
            token = os.path.join(t.workdir, "n2token")
            with open(token, "w") as f:
                f.write("n2secret\n")
            node2 = t.add_agent("node2")
            t.write_pods(node2, [a, c])
            node2.start("--ca-address", f"localhost:{port}", "--ca-root-cert", root,
                        "--ca-token-file", token, wait_pods=[c])
            node2.wait_log(f"certificates from external CA at localhost:{port}")
            doc = wait_certs(node2, lambda certs: any(x["state"] == "valid" for x in certs))
            cert = doc["certificates"][0]
            self.assertEqual(cert["identity"], "spiffe://cluster.local/ns/shop/sa/cart")
            ca_issuer = json.loads(ambitctl(ca_agent, "certs", "-o", "json").stdout)
            self.assertEqual(doc["trustBundle"][0]["sha256Fingerprint"],
                             ca_issuer["trustBundle"][0]["sha256Fingerprint"])
            ca_agent.wait_log("issued spiffe://cluster.local/ns/shop/sa/cart to node node2")


if __name__ == "__main__":
    unittest.main(verbosity=2)
