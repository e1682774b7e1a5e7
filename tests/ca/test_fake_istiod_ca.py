#!/usr/bin/python3
"""fake_istiod_ca.py checked with a real gRPC client (grpcio, TLS verified against the root it
publishes), request by request as ztunnel and istiod exchange them: a node agent's service
account impersonating pods on its own node, refused for another node's pod, for a pod whose
only instance Failed, for a caller that may not impersonate, for a stale pod token, for a
malformed identity, for another cluster, a token of another audience or none; without
impersonation the caller's own identity whatever the CSR asks; a root rotation. No root needed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_istiod_ca  # noqa: E402

WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
GONE = "spiffe://cluster.local/ns/batch/sa/job"


def assert_issued_by(leaf, root):
    """The leaf's signature verifies with the root's key (raises otherwise)."""
    root.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes,
                             ec.ECDSA(leaf.signature_hash_algorithm))
    assert leaf.issuer == root.subject


def table():
    """Two nodes, a ztunnel on each, web on node1, api on node2, a Failed job on node1."""
    return {
        "cluster_id": "Kubernetes",
        "trusted_node_accounts": ["istio-system/ztunnel"],
        "tokens": {
            "zt1": {"namespace": "istio-system", "service_account": "ztunnel",
                    "pod_name": "ztunnel-a", "pod_uid": "uid-zt1"},
            "zt1-stale": {"namespace": "istio-system", "service_account": "ztunnel",
                          "pod_name": "ztunnel-a", "pod_uid": "uid-old"},
            "web": {"namespace": "default", "service_account": "web", "pod_name": "web-1",
                    "pod_uid": "uid-web"},
            "zt1-other-aud": {"namespace": "istio-system", "service_account": "ztunnel",
                              "pod_name": "ztunnel-a", "pod_uid": "uid-zt1",
                              "audiences": ["kubernetes"]},
        },
        "pods": [
            {"namespace": "istio-system", "name": "ztunnel-a", "uid": "uid-zt1",
             "service_account": "ztunnel", "node": "node1"},
            {"namespace": "istio-system", "name": "ztunnel-b", "uid": "uid-zt2",
             "service_account": "ztunnel", "node": "node2"},
            {"namespace": "default", "name": "web-1", "uid": "uid-web",
             "service_account": "web", "node": "node1"},
            {"namespace": "backend", "name": "api-1", "uid": "uid-api",
             "service_account": "api", "node": "node2"},
            {"namespace": "batch", "name": "job-1", "uid": "uid-job",
             "service_account": "job", "node": "node1", "phase": "Failed"},
        ],
    }


class FakeIstiodCaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stubs = fake_istiod_ca.ca_stubs()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fake-istiod-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config = os.path.join(self.dir, "table.json")
        self.write_table(table())
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "fake_istiod_ca.py"), "--listen",
             "127.0.0.1:0", "--state-dir", os.path.join(self.dir, "state"), "--config",
             self.config], stdout=subprocess.PIPE, text=True)
        self.addCleanup(self.stop)
        line = self.proc.stdout.readline()
        self.assertTrue(line.startswith("listening "), line)
        self.port = int(line.split()[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def write_table(self, doc):
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, self.config)

    def roots(self):
        with open(os.path.join(self.dir, "state", "root-cert.pem"), "rb") as f:
            return f.read()

    def decisions(self):
        with open(os.path.join(self.dir, "state", "decisions.jsonl")) as f:
            return [json.loads(line) for line in f]

    def create(self, token, csr_uri, impersonate=None, cluster="Kubernetes", roots=None):
        """CreateCertificate as ztunnel sends it; returns (leaf, chain)."""
        ca_pb2, ca_grpc = self.stubs
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        if csr_uri:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(csr_uri)]), False)
        csr = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        request = ca_pb2.IstioCertificateRequest(csr=csr.decode(), validity_duration=3600)
        if impersonate is not None:
            request.metadata.fields["ImpersonatedIdentity"].string_value = impersonate
        md = []
        if token:
            md.append(("authorization", f"Bearer {token}"))
        if cluster:
            md.append(("clusterid", cluster))
        creds = grpc.ssl_channel_credentials(root_certificates=roots or self.roots())
        with grpc.secure_channel(
                f"127.0.0.1:{self.port}", creds,
                options=[("grpc.ssl_target_name_override", "istiod.istio-system.svc")]) as ch:
            resp = ca_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                request, metadata=md, timeout=10)
        chain = list(resp.cert_chain)
        for element in chain:
            self.assertTrue(element.endswith("\n"))
            self.assertEqual(element.count("BEGIN CERTIFICATE"), 1)
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        self.assertEqual(leaf.public_key().public_numbers(), key.public_key().public_numbers())
        return leaf, chain

    def uris(self, cert):
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        self.assertTrue(san.critical)
        return san.value.get_values_for_type(x509.UniformResourceIdentifier)

    def refused(self, code, details, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.create(**kwargs)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        self.assertEqual(ctx.exception.details(), details)
        return self.decisions()[-1]

    def test_node_agent_impersonates_pods_on_its_node(self):
        leaf, chain = self.create("zt1", WEB, impersonate=WEB)
        self.assertEqual(self.uris(leaf), [WEB])
        root = x509.load_pem_x509_certificate(chain[-1].encode())
        self.assertEqual(len(chain), 2)
        self.assertEqual(chain[-1].encode(), self.roots())
        assert_issued_by(leaf, root)
        self.assertEqual(self.decisions()[-1]["node"], "node1")
        self.assertEqual(self.decisions()[-1]["outcome"], "issued")

    def test_refusals_follow_istiods_node_authorizer(self):
        failure = fake_istiod_ca.IMPERSONATION_FAILURE
        u = grpc.StatusCode.UNAUTHENTICATED
        d = self.refused(u, failure, token="zt1", csr_uri=API, impersonate=API)
        self.assertEqual(d["reason"],
                         'no instances of "backend/api" found on node "node1"')
        d = self.refused(u, failure, token="zt1", csr_uri=GONE, impersonate=GONE)
        self.assertIn('"batch/job"', d["reason"])  # only a Failed pod there
        d = self.refused(u, failure, token="web", csr_uri=API, impersonate=API)
        self.assertEqual(d["reason"], "caller (default/web) is not allowed to impersonate")
        d = self.refused(u, failure, token="zt1-stale", csr_uri=WEB, impersonate=WEB)
        self.assertIn("UID does not match", d["reason"])
        d = self.refused(u, failure, token="zt1", csr_uri=WEB, impersonate="web")
        self.assertEqual(d["reason"], "failed to validate impersonated identity web")
        # The pods move: api is scheduled on node1 now, so node1's agent may have it.
        doc = table()
        doc["pods"][3]["node"] = "node1"
        self.write_table(doc)
        leaf, _ = self.create("zt1", API, impersonate=API)
        self.assertEqual(self.uris(leaf), [API])
        # Without trusted node accounts istiod allows no impersonation at all.
        doc["trusted_node_accounts"] = []
        self.write_table(doc)
        d = self.refused(u, failure, token="zt1", csr_uri=WEB, impersonate=WEB)
        self.assertIn("CA_TRUSTED_NODE_ACCOUNTS", d["reason"])

    def test_authentication(self):
        u = grpc.StatusCode.UNAUTHENTICATED
        failure = fake_istiod_ca.AUTHN_FAILURE
        d = self.refused(u, failure, token="zt1", csr_uri=WEB, impersonate=WEB, cluster="east")
        self.assertIn('cluster "east"', d["reason"])
        self.refused(u, failure, token="never-issued", csr_uri=WEB, impersonate=WEB)
        self.refused(u, failure, token="zt1-other-aud", csr_uri=WEB, impersonate=WEB)
        self.refused(u, failure, token=None, csr_uri=WEB, impersonate=WEB)
        # No clusterid at all is the local cluster.
        self.create("zt1", WEB, impersonate=WEB, cluster=None)

    def test_without_impersonation_the_caller_is_certified(self):
        # istiod ignores the CSR's SAN: a node agent that does not impersonate gets its own
        # identity, which a careful client must notice.
        leaf, _ = self.create("zt1", WEB)
        self.assertEqual(self.uris(leaf), ["spiffe://cluster.local/ns/istio-system/sa/ztunnel"])
        leaf, _ = self.create("web", API, impersonate="")
        self.assertEqual(self.uris(leaf), [WEB])

    def test_root_rotation(self):
        old = self.roots()
        self.create("zt1", WEB, impersonate=WEB)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while self.roots() == old and time.time() < deadline:
            time.sleep(0.05)
        both = self.roots()
        self.assertEqual(both.count(b"BEGIN CERTIFICATE"), 2)
        self.assertTrue(both.endswith(old))
        new_root = both[:-len(old)]
        # The new root serves TLS and signs; a client trusting only the old one is refused.
        leaf, chain = self.create("zt1", WEB, impersonate=WEB, roots=new_root)
        self.assertEqual(chain[-1].encode(), new_root)
        assert_issued_by(leaf, x509.load_pem_x509_certificate(new_root))
        with self.assertRaises(grpc.RpcError) as ctx:
            self.create("zt1", WEB, impersonate=WEB, roots=old)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main()
