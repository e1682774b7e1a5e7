"""End to end: istiod as the CA of the node agents, and ambit's own CA serving ztunnel's kind
of request.

IstiodCaTest: real `ambitd` + `ambit-tunnel` on two nodes of the test topology, with
`--ca-address` pointing at tests/ca/fake_istiod_ca.py, which stands in for istiod's CA endpoint
(no istiod runs here) and enforces istiod's rule: the node agents' service account is the one
trusted to impersonate (CA_TRUSTED_NODE_ACCOUNTS), and an identity is certified only for a node
one of its pods is scheduled on, as the CA's own view of the cluster says. Pods get certificates
for their own identities, curl reaches a STRICT pod on the other node through the mesh (mTLS
with certificates from the fake istiod's root), a pod the CA places on another node is refused
and the refusal shows in `ambitctl certs` and the log, a leaf for another identity (a CA that
ignores the impersonation) is refused, and the CA's roots are read from a file
that changes under ambitd (a rotation: a new root is trusted, serves TLS and signs).

ConfigMapRootsTest: the roots from istiod's istio-ca-root-cert ConfigMap through the API server
(tests/kube/fake_apiserver.py stands in for kube-apiserver): nothing is asked of the CA before the
ConfigMap exists, certificates follow once it does, and a rotation written to it reaches the
data plane's trust bundle.

OwnCaImpersonationTest: `ambitd --ca-only` asked with ImpersonatedIdentity by a grpcio client
on node2's behalf: node2's pod is issued, node1's refused, and malformed or contradicting
requests are refused with their own outcome labels in /metrics.
"""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "ca"))
sys.path.insert(0, os.path.join(HERE, "..", "kube"))
from topology import (ECHO_HTTP_APP, Topology, build_dir, run,  # noqa: E402
                      strict_peer_authentication, wait_listening)
from test_cluster_ca import ClusterCa, make_cacerts  # noqa: E402
from fake_apiserver import FakeApiServer  # noqa: E402
import yaml  # noqa: E402

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
WEB2 = "spiffe://cluster.local/ns/default/sa/web2"
# The node agents' service account, as deploy/ names it: the account istiod is told to trust
# with impersonation (CA_TRUSTED_NODE_ACCOUNTS=ambit-system/ambit).
AGENT_NS, AGENT_SA = "ambit-system", "ambit"


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def ambitctl(agent, *args):
    return run(str(build_dir() / "agent/cli/ambitctl"), *args, "--admin-socket",
               agent.admin_socket, check=False)


def certs_of(agent):
    r = ambitctl(agent, "certs", "-o", "json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


def cert(agent, identity):
    for c in certs_of(agent).get("certificates", []):
        if c["identity"] == identity:
            return c
    return None


def fingerprints(pem_bundle):
    certs = x509.load_pem_x509_certificates(pem_bundle) if hasattr(
        x509, "load_pem_x509_certificates") else [
        x509.load_pem_x509_certificate(b"-----BEGIN CERTIFICATE-----" + part)
        for part in pem_bundle.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    return [c.fingerprint(hashes.SHA256()).hex().upper() for c in certs]


class FakeIstiod:
    """tests/ca/fake_istiod_ca.py as a process of the topology (ended by its PID)."""

    def __init__(self, topo):
        self.topo = topo
        self.state = os.path.join(topo.workdir, "istiod")
        self.config = os.path.join(topo.workdir, "istiod-table.json")
        self.log_path = os.path.join(topo.workdir, "istiod.log")

    def write_table(self, doc):
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, self.config)

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "..", "ca", "fake_istiod_ca.py"),
             "--listen", "127.0.0.1:0", "--state-dir", self.state, "--config", self.config],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.topo.procs.append(self.proc)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), f"fake istiod did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    @property
    def root_file(self):
        return os.path.join(self.state, "root-cert.pem")

    def roots(self):
        with open(self.root_file, "rb") as f:
            return f.read()

    def decisions(self):
        try:
            with open(os.path.join(self.state, "decisions.jsonl")) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []


class IstiodCaTest(unittest.TestCase):
    def setUp(self):
        self.topo = Topology("istiod")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        t = self.topo
        self.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        self.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        # node1 runs c as far as its agent knows; the CA's view places cart on node2 only.
        self.c = t.add_pod("c", namespace="shop", service_account="cart", node="node1")
        self.istiod = FakeIstiod(t)
        self.table = {
            "cluster_id": "Kubernetes",
            "trusted_node_accounts": [f"{AGENT_NS}/{AGENT_SA}"],
            "tokens": {}, "pods": [],
        }
        for node in ("node1", "node2"):
            self.table["tokens"][f"token-{node}"] = {
                "namespace": AGENT_NS, "service_account": AGENT_SA,
                "pod_name": f"ambit-{node}", "pod_uid": f"uid-ambit-{node}"}
            self.table["pods"].append({"namespace": AGENT_NS, "name": f"ambit-{node}",
                                       "uid": f"uid-ambit-{node}", "service_account": AGENT_SA,
                                       "node": node})
        for pod, node in ((self.a, "node1"), (self.b, "node2"), (self.c, "node2")):
            self.table["pods"].append({"namespace": pod.namespace, "name": pod.name,
                                       "uid": f"uid-{pod.name}",
                                       "service_account": pod.service_account, "node": node})
        self.istiod.write_table(self.table)
        self.istiod.start()

    def start_agent(self, node, pods, wait_pods):
        agent = self.topo.add_agent(node)
        self.topo.write_pods(agent, pods)
        agent.write_config("strict.yaml", strict_peer_authentication("backend"))
        token = os.path.join(self.topo.workdir, f"istio-token-{node}")
        with open(token, "w") as f:
            f.write(f"token-{node}\n")
        # The roots file is the one the fake istiod rewrites, as a mounted istio-ca-root-cert
        # ConfigMap changes under the process.
        agent.start("--ca-address", f"localhost:{self.istiod.port}", "--ca-root-cert",
                    self.istiod.root_file, "--ca-token-file", token, "--cert-ttl", "1h",
                    wait_pods=wait_pods)
        return agent

    def wait_state(self, agent, identity, state, timeout=30):
        return wait_for(f"{identity} {state} on {agent.node}",
                        lambda: (lambda c: c if c and c["state"] == state else None)(
                            cert(agent, identity)), timeout, 0.2)

    def curl(self, src, dst, path):
        r = src.run(["curl", "-sS", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                     f"http://{dst.ip4}:8080{path}"])
        body, _, code = r.stdout.rpartition("\n")
        return code, body, r.stderr

    def test_pods_get_their_identities_and_a_pod_elsewhere_is_refused(self):
        pods = [self.a, self.b, self.c]
        n1 = self.start_agent("node1", pods, [self.a, self.c])
        n2 = self.start_agent("node2", pods, [self.b])
        web = self.wait_state(n1, WEB, "valid")
        self.wait_state(n2, API, "valid")
        root_fp = fingerprints(self.istiod.roots())
        self.assertEqual([r["sha256Fingerprint"].replace(":", "").upper()
                          for r in certs_of(n1)["trustBundle"]], root_fp)
        self.assertIn("fake istiod root 1", web["issuer"])
        issued = {(d.get("identity"), d.get("node")) for d in self.istiod.decisions()
                  if d["outcome"] == "issued"}
        # Each certificate was asked for on the pod's behalf, by its own node's agent.
        self.assertIn((WEB, "node1"), issued)
        self.assertIn((API, "node2"), issued)
        for d in self.istiod.decisions():
            self.assertEqual(d.get("cluster"), "Kubernetes", d)
            self.assertEqual(d.get("caller"), f"{AGENT_NS}/{AGENT_SA}", d)

        # Through the mesh: a (node1) to b (node2, STRICT) over HBONE with the CA's certificates.
        app = self.b.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(app)
        code, body, err = self.curl(self.a, self.b, "/through-the-mesh")
        self.assertEqual(code, "200", f"{err}\n{n1.logs()[-2000:]}\n{n2.logs()[-2000:]}")
        self.assertEqual(json.loads(body)["path"], "/through-the-mesh")
        n2.wait_log(f"mode=mtls peer={WEB}")

        # cart is not on node1 as the CA sees the cluster: refused, and it shows.
        failed = wait_for("cart's refusal in ambitctl certs",
                          lambda: (lambda c: c if c and c["error"] else None)(
                              cert(n1, CART)), 30, 0.2)
        self.assertNotEqual(failed["state"], "valid")
        self.assertIn("request impersonation authentication failure", failed["error"])
        n1.wait_log(f"refused {CART}: request impersonation authentication failure")
        refusals = [d for d in self.istiod.decisions() if d.get("impersonated") == CART]
        self.assertTrue(refusals)
        self.assertEqual(refusals[0]["reason"], 'no instances of "shop/cart" found on node "node1"')
        self.assertFalse([d for d in self.istiod.decisions()
                          if d.get("identity") == CART and d["outcome"] == "issued"])

        # The CA learns cart runs on node1 too (a second replica scheduled there): the data
        # plane's retry gets the certificate.
        self.table["pods"].append({"namespace": "shop", "name": "c-2", "uid": "uid-c-2",
                                   "service_account": "cart", "node": "node1"})
        self.istiod.write_table(self.table)
        self.wait_state(n1, CART, "valid", 120)

    def test_a_leaf_for_another_identity_is_refused(self):
        # A CA that ignores ImpersonatedIdentity (istiod before the key existed) certifies the
        # caller, the node agent's service account: ambitd must not hand that to the pod.
        self.table["impersonation_supported"] = False
        self.istiod.write_table(self.table)
        n1 = self.start_agent("node1", [self.a, self.b], [self.a])
        failed = wait_for("web's refusal", lambda: (lambda c: c if c and c["error"] else None)(
            cert(n1, WEB)), 30, 0.2)
        self.assertNotEqual(failed["state"], "valid")
        agent_id = f"spiffe://cluster.local/ns/{AGENT_NS}/sa/{AGENT_SA}"
        self.assertIn(f"answered the request for {WEB} wrongly: the leaf certificate is for "
                      f"{agent_id}, not exactly {WEB}", failed["error"])
        n1.wait_log(f"signing {WEB} for the ")
        self.assertEqual(self.istiod.decisions()[0]["identity"], agent_id)

    def test_roots_from_the_file_are_rotated(self):
        web2 = self.topo.add_pod("d", namespace="default", service_account="web2", node="node1")
        self.table["pods"].append({"namespace": "default", "name": "d", "uid": "uid-d",
                                   "service_account": "web2", "node": "node1"})
        self.istiod.write_table(self.table)
        n1 = self.start_agent("node1", [self.a, self.b], [self.a])
        n2 = self.start_agent("node2", [self.a, self.b], [self.b])
        self.wait_state(n1, WEB, "valid")
        self.wait_state(n2, API, "valid")
        old = fingerprints(self.istiod.roots())
        self.assertEqual(len(old), 1)

        # istiod rotates: a new root signs and serves TLS; the published bundle holds both.
        self.istiod.proc.send_signal(signal.SIGHUP)
        both = wait_for("two roots in the file",
                        lambda: (lambda f: f if len(f) == 2 else None)(
                            fingerprints(self.istiod.roots())), 10)
        for agent in (n1, n2):
            agent.wait_log("trust bundle changed (1 -> 2 root(s))", 10)
            wait_for(f"both roots in {agent.node}'s trust bundle",
                     lambda: sorted(r["sha256Fingerprint"].replace(":", "").upper()
                                    for r in certs_of(agent)["trustBundle"]) == sorted(both), 10)
        # A pod enrolled now is signed under the new root, over a channel that verifies the
        # CA's new serving certificate.
        self.topo.write_pods(n1, [self.a, self.b, web2])
        d_cert = self.wait_state(n1, WEB2, "valid")
        self.assertIn("fake istiod root 2", d_cert["issuer"])
        n1.wait_log("roots changed; new connections verify against them")
        # Old-root and new-root certificates meet: both roots are trusted on both nodes.
        app = self.b.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(app)
        code, body, err = self.curl(web2, self.b, "/after-rotation")
        self.assertEqual(code, "200", f"{err}\n{n1.logs()[-2000:]}\n{n2.logs()[-2000:]}")
        n2.wait_log(f"mode=mtls peer={WEB2}")

        # A broken file changes nothing: the last good roots stay.
        with open(self.istiod.root_file + ".tmp", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        os.rename(self.istiod.root_file + ".tmp", self.istiod.root_file)
        n1.wait_log("certificate 1 of 1 does not parse; the last good roots stay in force", 10)
        self.assertEqual(len(certs_of(n1)["trustBundle"]), 2)


class ConfigMapRootsTest(unittest.TestCase):
    def test_roots_from_the_configmap(self):
        with Topology("cmroots") as t:
            a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            istiod = FakeIstiod(t)
            istiod.write_table({
                "trusted_node_accounts": [f"{AGENT_NS}/{AGENT_SA}"],
                "tokens": {"token-node1": {"namespace": AGENT_NS, "service_account": AGENT_SA,
                                           "pod_name": "ambit-node1",
                                           "pod_uid": "uid-ambit-node1"}},
                "pods": [{"namespace": AGENT_NS, "name": "ambit-node1", "uid": "uid-ambit-node1",
                          "service_account": AGENT_SA, "node": "node1"},
                         {"namespace": "default", "name": "a", "uid": "uid-a",
                          "service_account": "web", "node": "node1"}]})
            istiod.start()
            kube = FakeApiServer(os.path.join(t.workdir, "apiserver"))
            kube.start()
            self.addCleanup(kube.stop)
            for ns in ("default", AGENT_NS):
                kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            kube.apply(yaml.safe_load(a.yaml()))
            agent = t.add_agent("node1")
            agent.write_config("mesh.yaml", "trustDomain: cluster.local\n")
            token = os.path.join(t.workdir, "istio-token")
            with open(token, "w") as f:
                f.write("token-node1\n")
            agent.start("--kube-api", kube.url, "--kube-token-file", kube.token_file,
                        "--kube-ca-file", kube.ca_file, "--ca-address",
                        f"localhost:{istiod.port}", "--ca-root-configmap",
                        f"{AGENT_NS}/istio-ca-root-cert", "--ca-token-file", token,
                        wait_pods=[a])
            # No ConfigMap yet: no roots, so nothing goes to the CA and the pod has no certificate.
            try:
                failed = wait_for("web's failure without roots",
                                  lambda: (lambda c: c if c and c["error"] else None)(
                                      cert(agent, WEB)), 30, 0.2)
            except AssertionError as e:
                raise AssertionError(f"{e}: {certs_of(agent)}\n{agent.logs()[-4000:]}") from None
            self.assertIn(f"no roots for the external CA from ConfigMap {AGENT_NS}/"
                          "istio-ca-root-cert", failed["error"])
            self.assertEqual(istiod.decisions(), [])
            self.assertEqual(certs_of(agent)["trustBundle"], [])

            def publish():
                kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "istio-ca-root-cert", "namespace": AGENT_NS},
                            "data": {"root-cert.pem": istiod.roots().decode()}})

            publish()
            wait_for("web valid", lambda: (lambda c: c and c["state"] == "valid")(
                cert(agent, WEB)), 60, 0.2)
            self.assertEqual([r["sha256Fingerprint"].replace(":", "").upper()
                              for r in certs_of(agent)["trustBundle"]],
                             fingerprints(istiod.roots()))
            self.assertEqual(istiod.decisions()[-1]["identity"], WEB)

            istiod.proc.send_signal(signal.SIGHUP)
            wait_for("two roots", lambda: len(fingerprints(istiod.roots())) == 2, 10)
            publish()
            agent.wait_log("trust bundle changed (1 -> 2 root(s))", 20)
            self.assertEqual(sorted(r["sha256Fingerprint"].replace(":", "").upper()
                                    for r in certs_of(agent)["trustBundle"]),
                             sorted(fingerprints(istiod.roots())))


class OwnCaImpersonationTest(unittest.TestCase):
    """ambit's CA answers ImpersonatedIdentity as istiod does: for pods on the caller's node."""

    def test_impersonation_on_the_cluster_ca(self):
        with Topology("ownca") as t:
            a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            cacerts = os.path.join(t.workdir, "cacerts")
            make_cacerts(cacerts)
            config = os.path.join(t.workdir, "config-ca")
            os.makedirs(config)
            with open(os.path.join(config, "pods.yaml"), "w") as f:
                f.write("---\n".join(p.yaml() for p in (a, b)))
            tokens = os.path.join(t.workdir, "ca-tokens")
            with open(tokens, "w") as f:
                f.write("n1secret node1\nn2secret node2\n")
            ca = ClusterCa(t, cacerts, "--config-dir", config, "--ca-tokens", tokens).start()
            import svid
            ca_pb2, ca_grpc = svid.ca_stubs()
            root = open(os.path.join(cacerts, "root-cert.pem")).read()

            def create(csr_uri, impersonate, token="n2secret", cluster="Kubernetes"):
                key = ec.generate_private_key(ec.SECP256R1())
                csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                       .add_extension(x509.SubjectAlternativeName(
                           [x509.UniformResourceIdentifier(csr_uri)]), critical=False)
                       .sign(key, hashes.SHA256()))
                req = ca_pb2.IstioCertificateRequest(
                    csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
                    validity_duration=3600)
                if impersonate is not None:
                    req.metadata.fields["ImpersonatedIdentity"].string_value = impersonate
                creds = grpc.ssl_channel_credentials(root_certificates=root.encode())
                md = [("authorization", f"Bearer {token}"), ("clusterid", cluster)]
                with grpc.secure_channel(
                        f"127.0.0.1:{ca.port}", creds,
                        options=[("grpc.ssl_target_name_override", "ambit-ca")]) as ch:
                    return ca_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                        req, metadata=md, timeout=10)

            def refused(code, *args, **kwargs):
                with self.assertRaises(grpc.RpcError) as ctx:
                    create(*args, **kwargs)
                self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
                return ctx.exception.details()

            resp = create(API, API)
            leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            self.assertEqual(san.value.get_values_for_type(x509.UniformResourceIdentifier), [API])
            ca.wait_log(f"issued {API} to node node2")
            self.assertIn("impersonated)", ca.logs())

            details = refused(grpc.StatusCode.PERMISSION_DENIED, WEB, WEB)
            self.assertIn(f"node node2 may not obtain {WEB}", details)
            details = refused(grpc.StatusCode.INVALID_ARGUMENT, WEB, API)
            self.assertIn("they must be the same", details)
            details = refused(grpc.StatusCode.INVALID_ARGUMENT, "spiffe://cluster.local/x",
                              "spiffe://cluster.local/x")
            self.assertIn("not an Istio workload identity", details)
            details = refused(grpc.StatusCode.UNAUTHENTICATED, API, API, cluster="east")
            self.assertIn("cluster 'east'", details)
            # node1 gets its own pod's identity the same way.
            create(WEB, WEB, token="n1secret")

            metrics = ca.wait_metrics('ambit_ca_requests_total{outcome="impersonation_denied"} 1')
            self.assertIn('ambit_ca_requests_total{outcome="impersonation_invalid"} 2', metrics)
            self.assertIn('ambit_ca_requests_total{outcome="issued"} 2', metrics)
            self.assertIn('ambit_ca_requests_total{outcome="unauthenticated"} 1', metrics)
            self.assertEqual(ca.stop(), 0)


if __name__ == "__main__":
    unittest.main()
