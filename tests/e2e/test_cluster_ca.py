"""End to end: one cluster CA (`ambitd --ca-only`) for the node agents of several nodes.

Real processes: one `ambitd --ca-only` signing with an operator's cacerts (made here with Python's
cryptography, as an operator's tooling would), two node agents (`ambitd --ca-address`) on the
e2e topology's two nodes, pods on both talking over mTLS (STRICT) with certificates from the one
root; an outside gRPC client (grpcio, stubs from our proto) asking the CA as a node would.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kube"))
from fake_apiserver import FakeApiServer  # noqa: E402
from topology import (CLIENT, SERVER, Topology, build_dir, free_port, run,  # noqa: E402
                      strict_peer_authentication, wait_listening)
import svid  # noqa: E402

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
# The node agents' service account, as deploy/ names it; ambitd's --ca-token-users default.
AGENT_USER = "system:serviceaccount:ambit-system:ambit"
NODE_EXTRA = "authentication.kubernetes.io/node-name"


def make_cacerts(directory):
    """Istio's cacerts layout: an intermediate (ca-cert.pem, ca-key.pem) under a root the
    operator keeps elsewhere (root-cert.pem), cert-chain.pem = intermediate + root. Returns the
    root's SHA-256 fingerprint (hex, upper case, as ambitctl prints it)."""
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambit-e2e"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca_cert(subject, issuer, key, signer, days, path_length):
        usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
                .add_extension(usage, True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                .sign(signer, hashes.SHA256()))

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert(name("cluster root"), name("cluster root"), root_key, root_key, 3650, None)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert(name("cluster intermediate"), name("cluster root"), inter_key, root_key, 365,
                    0)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    files = {"root-cert.pem": pem(root), "ca-cert.pem": pem(inter),
             "cert-chain.pem": pem(inter) + pem(root),
             "ca-key.pem": inter_key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()).decode()}
    for file, text in files.items():
        with open(os.path.join(directory, file), "w") as f:
            f.write(text)
    os.chmod(os.path.join(directory, "ca-key.pem"), 0o600)
    return root.fingerprint(hashes.SHA256()).hex().upper()


class ClusterCa:
    """`ambitd --ca-only` as a test process: started, read and stopped by its PID."""

    def __init__(self, topo, cacerts, *args):
        self.topo = topo
        self.log_path = os.path.join(topo.workdir, "ambitd-ca.log")
        self.readiness_port = free_port()
        self.metrics_port = free_port()
        self.cacerts = cacerts
        self.argv = [str(build_dir() / "agent/main/ambitd"), "--ca-only",
                     "--ca-listen", "127.0.0.1:0", "--cacerts-dir", cacerts,
                     "--metrics-address", f"127.0.0.1:{self.metrics_port}",
                     "--readiness-address", f"127.0.0.1:{self.readiness_port}"] + list(args)
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.topo.procs.append(self.proc)
        self.wait_log("cluster CA ready")
        self.port = svid.ca_port(self)
        return self

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, needle, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.logs():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"CA exited ({self.proc.returncode}) waiting for {needle!r}:"
                                     f"\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in the CA's log within {timeout}s:\n"
                             f"{self.logs()[-3000:]}")

    def http_get(self, port, path):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def wait_metrics(self, needle, timeout=5):
        """/metrics once it holds `needle`."""
        deadline = time.time() + timeout
        while True:
            status, body = self.http_get(self.metrics_port, "/metrics")
            if status == 200 and needle in body:
                return body
            if time.time() > deadline:
                raise AssertionError(f"no {needle!r} in the CA's /metrics:\n{body}")
            time.sleep(0.2)

    def stop(self):
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self.log.close()
        return rc

    def create(self, identity, token, timeout=10):
        """CreateCertificate for a fresh CSR asking for `identity`, as a node would."""
        ca_pb2, ca_grpc = svid.ca_stubs()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(identity)]), critical=False)
               .sign(key, hashes.SHA256()))
        root = open(os.path.join(self.cacerts, "root-cert.pem")).read()
        creds = grpc.ssl_channel_credentials(root_certificates=root.encode())
        md = [("authorization", f"Bearer {token}")] if token else []
        with grpc.secure_channel(f"127.0.0.1:{self.port}", creds,
                                 options=[("grpc.ssl_target_name_override", "ambit-ca")]) as ch:
            return ca_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
                ca_pb2.IstioCertificateRequest(
                    csr=csr.public_bytes(serialization.Encoding.PEM).decode()),
                metadata=md, timeout=timeout)


def scratch_dirs():
    return {d for d in os.listdir("/tmp") if d.startswith("ambit-ca-config.")}


def ambitctl(agent, *args):
    return run(str(build_dir() / "agent/cli/ambitctl"), *args, "--admin-socket",
               agent.admin_socket, check=False)


def certs_of(agent):
    r = ambitctl(agent, "certs", "-o", "json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


def wait_valid(agent, identity, timeout=20):
    deadline = time.time() + timeout
    doc = {}
    while time.time() < deadline:
        doc = certs_of(agent)
        for c in doc.get("certificates", []):
            if c["identity"] == identity and c["state"] == "valid":
                return doc
        time.sleep(0.2)
    raise AssertionError(f"{identity} never valid on {agent.node}: {doc}\n{agent.logs()[-3000:]}")


class ClusterCaCase(unittest.TestCase):
    """Shared set-up: pods a (node1, default/web) and b (node2, backend/api, STRICT); the CA and
    the node agents started by the subclass."""

    def setUp(self):
        self.topo = Topology("k")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        t = self.topo
        self.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        self.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        self.cacerts = os.path.join(t.workdir, "cacerts")
        self.root_fingerprint = make_cacerts(self.cacerts)
        self.root = os.path.join(self.cacerts, "root-cert.pem")

    def start_nodes(self, tokens):
        """Both node agents, each asking the cluster CA with its own token file."""
        self.nodes = {}
        for node, pod in (("node1", self.a), ("node2", self.b)):
            agent = self.topo.add_agent(node)
            self.topo.write_pods(agent, [self.a, self.b])
            agent.write_config("strict.yaml", strict_peer_authentication("backend"))
            token_file = os.path.join(self.topo.workdir, f"token-{node}")
            with open(token_file, "w") as f:
                f.write(tokens[node] + "\n")
            agent.token_file = token_file
            agent.start("--ca-address", f"localhost:{self.ca.port}", "--ca-root-cert", self.root,
                        "--ca-token-file", token_file, wait_pods=[pod])
            self.nodes[node] = agent
        return self.nodes["node1"], self.nodes["node2"]

    def assert_cross_node_mtls(self, n1, n2):
        """a (node1) reaches b (node2) through the tunnels; b's namespace is STRICT, so the bytes
        arrived over mTLS, with both certificates from the one root."""
        for agent, identity in ((n1, WEB), (n2, API)):
            doc = wait_valid(agent, identity)
            fingerprints = [r["sha256Fingerprint"].replace(":", "").upper()
                            for r in doc["trustBundle"]]
            self.assertEqual(fingerprints, [self.root_fingerprint], doc["trustBundle"])
        srv = self.b.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "7070", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        r = self.a.python(CLIENT, self.b.ip4, 7070, "across-nodes")
        self.assertEqual(r.returncode, 0, r.stderr + n1.logs()[-2000:] + n2.logs()[-2000:])
        self.assertEqual(json.loads(r.stdout)["reply"], "echo:across-nodes")
        out, _ = srv.communicate(timeout=10)
        self.assertEqual(json.loads(out.splitlines()[-1])["peer"], self.a.ip4)
        n2.wait_log(f"mode=mtls peer={WEB}")
        for node, identity in (("node1", WEB), ("node2", API)):
            self.ca.wait_log(f"issued {identity} to node {node}")

    def assert_grpc_code(self, code, fn):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception.details()


class CaOnlyDirectoryTest(ClusterCaCase):
    """The CA reads the pods' placement from a configuration directory and its callers' tokens
    from a static file."""

    def start_ca(self, *args, pods=()):
        ca_config = os.path.join(self.topo.workdir, "config-ca")
        os.makedirs(ca_config)
        with open(os.path.join(ca_config, "pods.yaml"), "w") as f:
            f.write("---\n".join(p.yaml() for p in (self.a, self.b) + tuple(pods)))
        tokens = os.path.join(self.topo.workdir, "ca-tokens")
        with open(tokens, "w") as f:
            f.write("n1secret node1\nn2secret node2\nn2rotated node2\n")
        self.ca_config = ca_config
        self.ca = ClusterCa(self.topo, self.cacerts, "--config-dir", ca_config, "--ca-tokens",
                            tokens, *args).start()

    def test_two_nodes_one_root(self):
        self.start_ca()
        self.assertEqual(self.ca.http_get(self.ca.readiness_port, "/healthz/ready")[0], 200)
        n1, n2 = self.start_nodes({"node1": "n1secret", "node2": "n2secret"})
        self.assert_cross_node_mtls(n1, n2)
        # node1 may not obtain b's identity: b runs on node2.
        details = self.assert_grpc_code(grpc.StatusCode.PERMISSION_DENIED,
                                        lambda: self.ca.create(API, "n1secret"))
        self.assertIn(f"node node1 may not obtain {API}", details)
        self.assertTrue(self.ca.create(API, "n2secret").cert_chain)
        self.assert_grpc_code(grpc.StatusCode.UNAUTHENTICATED,
                              lambda: self.ca.create(WEB, "guess"))
        # The counters reach /metrics within a second.
        metrics = self.ca.wait_metrics('ambit_ca_requests_total{outcome="denied"} 1')
        self.assertIn('ambit_ca_requests_total{outcome="unauthenticated"} 1', metrics)
        self.assertRegex(metrics, r'ambit_ca_requests_total\{outcome="issued"\} [3-9]')
        self.assertIn("ambit_ready 1", metrics)
        self.assertNotIn("ambit_dataplane_up", metrics)  # no data plane here to speak of
        # A pod placed on node2 later entitles node2 at once (the directory is watched).
        c = self.topo.add_pod("c", namespace="shop", service_account="cart", node="node2")
        with open(os.path.join(self.ca_config, "pods.yaml"), "w") as f:
            f.write("---\n".join(p.yaml() for p in (self.a, self.b, c)))
        self.ca.wait_log("placement: 3 pods")
        self.assertTrue(self.ca.create("spiffe://cluster.local/ns/shop/sa/cart", "n2secret"))
        self.assertEqual(self.ca.stop(), 0)
        self.assertIn("CA stopping", self.ca.logs())

    def test_a_node_past_the_cas_rate_waits_for_it(self):
        # Five identities on node2 against a CA that gives a node 1 certificate at once and 2 a
        # second: refused requests wait in node2's ambitd for the CA's "retry in" and are asked
        # again, in order, instead of each backing off in the data plane.
        more = [self.topo.add_pod(f"r{i}", namespace="rated", service_account=f"sa{i}",
                                  node="node2") for i in range(4)]
        self.start_ca("--ca-node-burst", "1", "--ca-node-rate", "2", pods=more)
        agent = self.topo.add_agent("node2")
        self.topo.write_pods(agent, [self.b] + more)
        token_file = os.path.join(self.topo.workdir, "token-node2")
        with open(token_file, "w") as f:
            f.write("n2secret\n")
        started = time.time()
        agent.start("--ca-address", f"localhost:{self.ca.port}", "--ca-root-cert", self.root,
                    "--ca-token-file", token_file, wait_pods=[self.b])
        for identity in [API] + [f"spiffe://cluster.local/ns/rated/sa/sa{i}" for i in range(4)]:
            wait_valid(agent, identity, timeout=30)
        elapsed = time.time() - started
        logs = agent.logs()
        self.assertIn("the CA answered", logs)
        self.assertRegex(logs, r"waits \d+(\.\d+)?m?s: the CA answered")
        self.assertNotIn("certificate request failed", logs)
        # 4 past the burst at 2 a second: about 2 s, far from a per-identity doubling back-off.
        self.assertLess(elapsed, 20, logs[-3000:])
        self.assertIn("rate limit for node node2", self.ca.logs() + logs)

    def test_node_token_file_is_read_for_every_request(self):
        self.start_ca()
        n1, n2 = self.start_nodes({"node1": "n1secret", "node2": "n2secret"})
        wait_valid(n2, API)
        # The kubelet replaced the token: first with one the CA refuses, then with a good one.
        # A pod scheduled meanwhile gets its certificate once the file holds the good token,
        # without a restart of the node agent.
        with open(n2.token_file + ".tmp", "w") as f:
            f.write("expired-token\n")
        os.rename(n2.token_file + ".tmp", n2.token_file)
        c = self.topo.add_pod("c", namespace="shop", service_account="cart", node="node2")
        for agent in (n2,):
            self.topo.write_pods(agent, [self.a, self.b, c])
        with open(os.path.join(self.ca_config, "pods.yaml"), "w") as f:
            f.write("---\n".join(p.yaml() for p in (self.a, self.b, c)))
        self.ca.wait_log("placement: 3 pods")
        n2.wait_log("pod shop/c ")
        self.ca.wait_log("unknown bearer token")
        cart = "spiffe://cluster.local/ns/shop/sa/cart"
        self.assertNotIn(f"issued {cart}", self.ca.logs())
        with open(n2.token_file + ".tmp", "w") as f:
            f.write("n2rotated\n")
        os.rename(n2.token_file + ".tmp", n2.token_file)
        wait_valid(n2, cart, timeout=40)
        self.ca.wait_log(f"issued {cart} to node node2")

    def test_refuses_to_start_without_cacerts(self):
        empty = os.path.join(self.topo.workdir, "no-cacerts")
        os.makedirs(empty)
        config = os.path.join(self.topo.workdir, "config-ca")
        os.makedirs(config)
        tokens = os.path.join(self.topo.workdir, "ca-tokens")
        with open(tokens, "w") as f:
            f.write("n1secret node1\n")
        for cacerts in ([], ["--cacerts-dir", empty]):
            r = subprocess.run([str(build_dir() / "agent/main/ambitd"), "--ca-only",
                                "--ca-listen", "127.0.0.1:0", "--config-dir", config,
                                "--ca-tokens", tokens, "--metrics-address", "",
                                "--readiness-address", ""] + cacerts,
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("--ca-only needs --cacerts-dir", r.stdout + r.stderr)
            self.assertIn("would split the mesh", r.stdout + r.stderr)


class CaTokenReviewTest(ClusterCaCase):
    """The cluster CA as deploy/ca runs it: pods' placement from the API server, callers'
    projected service-account tokens checked by a TokenReview (the test API server answering),
    and no configuration directory."""

    def test_token_review(self):
        state = os.path.join(self.topo.workdir, "apiserver")
        api = FakeApiServer(state)
        api_port = api.start()
        self.addCleanup(api.stop)
        api.apply("---\n".join(p.yaml() for p in (self.a, self.b)))
        for token, node in (("tok-node1", "node1"), ("tok-node2", "node2")):
            api.add_token_review(token, AGENT_USER, {NODE_EXTRA: [node]}, audiences=["ambit-ca"])
        # Tokens the API server knows, each wrong in one way for the CA.
        api.add_token_review("tok-wrong-audience", AGENT_USER, {NODE_EXTRA: ["node1"]},
                             audiences=["https://kubernetes.default.svc.cluster.local"])
        api.add_token_review("tok-app", "system:serviceaccount:default:web",
                             {NODE_EXTRA: ["node1"]}, audiences=["ambit-ca"])
        api.add_token_review("tok-unbound", AGENT_USER, {}, audiences=["ambit-ca"])
        api.add_token_review("tok-late", AGENT_USER, {NODE_EXTRA: ["node2"]},
                             audiences=["ambit-ca"])
        self.ca = ClusterCa(self.topo, self.cacerts, "--ca-token-review",
                            "--kube-api", f"https://127.0.0.1:{api_port}",
                            "--kube-token-file", os.path.join(state, "token"),
                            "--kube-ca-file", os.path.join(state, "ca.crt"),
                            "--config-dir", os.path.join(self.topo.workdir, "absent")).start()
        self.ca.wait_log("placement: 2 pods, 2 identities on 2 nodes")
        self.assertEqual(self.ca.http_get(self.ca.readiness_port, "/healthz/ready")[0], 200)
        # The CA watches pods only: its ClusterRole allows nothing else.
        listed = {r.path for r in api.requests() if r.method == "GET"}
        self.assertEqual(listed, {"/api/v1/pods"}, listed)

        n1, n2 = self.start_nodes({"node1": "tok-node1", "node2": "tok-node2"})
        self.assert_cross_node_mtls(n1, n2)
        reviews = [r for r in api.requests()
                   if r.method == "POST" and r.path == "/apis/authentication.k8s.io/v1/tokenreviews"]
        self.assertTrue(reviews, "no TokenReview reached the API server")

        # node1's own token, for an identity of a pod on node2.
        details = self.assert_grpc_code(grpc.StatusCode.PERMISSION_DENIED,
                                        lambda: self.ca.create(API, "tok-node1"))
        self.assertIn(f"node node1 may not obtain {API}", details)
        self.assertTrue(self.ca.create(API, "tok-node2").cert_chain)
        refusals = {
            "tok-wrong-audience": (grpc.StatusCode.UNAUTHENTICATED, "audiences"),
            "never-issued": (grpc.StatusCode.UNAUTHENTICATED, "did not authenticate the token"),
            "tok-app": (grpc.StatusCode.PERMISSION_DENIED,
                        "'system:serviceaccount:default:web' is not a node agent"),
            "tok-unbound": (grpc.StatusCode.UNAUTHENTICATED, "pod-bound"),
        }
        for token, (code, text) in refusals.items():
            details = self.assert_grpc_code(code, lambda: self.ca.create(WEB, token))
            self.assertIn(text, details, token)
        self.assert_grpc_code(grpc.StatusCode.UNAUTHENTICATED, lambda: self.ca.create(WEB, None))
        # Decisions are kept briefly: asking again with the same tokens reviews nothing more.
        before = len([r for r in api.requests() if r.method == "POST"])
        self.assertTrue(self.ca.create(API, "tok-node2").cert_chain)
        self.assert_grpc_code(grpc.StatusCode.PERMISSION_DENIED,
                              lambda: self.ca.create(WEB, "tok-app"))
        self.assertEqual(len([r for r in api.requests() if r.method == "POST"]), before)
        self.ca.wait_metrics("ambit_ca_token_reviews_total")
        # The token never appears in the CA's log, whatever became of it.
        for token in ("tok-node1", "tok-node2", "tok-wrong-audience", "tok-app", "never-issued"):
            self.assertNotIn(token, self.ca.logs())

        # The API server gone: a token the CA has not reviewed yet is refused, saying why, and
        # the caller is told to retry (UNAVAILABLE), never let in.
        api.stop()
        details = self.assert_grpc_code(grpc.StatusCode.UNAVAILABLE,
                                        lambda: self.ca.create(API, "tok-late"))
        self.assertIn("token review failed", details)
        self.assertNotIn(f"issued {API} to node node2 (ipv4:127.0.0.1", self.ca.logs()[-400:])
        self.ca.wait_metrics('ambit_ca_requests_total{outcome="unauthenticated"} 7')
        self.assertEqual(self.ca.stop(), 0)

    def test_nothing_signed_before_the_pods_are_listed(self):
        state = os.path.join(self.topo.workdir, "apiserver")
        api = FakeApiServer(state)
        api.start()
        api.add_token_review("tok-node1", AGENT_USER, {NODE_EXTRA: ["node1"]},
                             audiences=["ambit-ca"])
        api.apply(self.a.yaml())
        # The CA's first request, its pod list, is refused with a Retry-After: for that long the
        # CA knows no placement.
        api.fail_next(1, 503, retry_after=8)
        scratch_before = scratch_dirs()
        self.addCleanup(api.stop)
        self.ca = ClusterCa(self.topo, self.cacerts, "--ca-token-review",
                            "--kube-api", f"https://127.0.0.1:{api.port}",
                            "--kube-token-file", os.path.join(state, "token"),
                            "--kube-ca-file", os.path.join(state, "ca.crt"),
                            "--config-dir", os.path.join(self.topo.workdir, "absent")).start()
        status, body = self.ca.http_get(self.ca.readiness_port, "/healthz/ready")
        self.assertEqual(status, 503, body)
        self.assertIn("placement is not loaded yet", body)
        self.assertIn("waiting for the first list of pods", body)
        # The token itself is fine (reviews still pass); the request cannot be judged yet.
        details = self.assert_grpc_code(grpc.StatusCode.UNAVAILABLE,
                                        lambda: self.ca.create(WEB, "tok-node1"))
        self.assertIn("not loaded which pods run on which node", details)
        self.ca.wait_log("placement: 1 pods", timeout=40)
        self.assertEqual(self.ca.http_get(self.ca.readiness_port, "/healthz/ready")[0], 200)
        self.assertTrue(self.ca.create(WEB, "tok-node1").cert_chain)
        self.assertEqual(self.ca.stop(), 0)
        # The empty directory standing in for the absent configuration directory went with it.
        self.assertEqual(scratch_dirs(), scratch_before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
