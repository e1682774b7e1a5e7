"""End to end: previews and inspection before a change (issue 20).

Two nodes. frontend/web (node1, enrolled) calls backend/api (node2) over mTLS (HBONE);
default/outsider (node1, not enrolled) calls it in plaintext. Every command runs against node2's
agent with real traffic: `ambitctl strict-readiness` must name the outsider and not web, and its
suggested PeerAuthentication, applied, must keep the outsider's port open and close the rest;
`ambitctl certs` must show the fingerprint `openssl s_client` sees on api's 15008, and
`ambitctl certs --pem` the very chain it presents; `ambitctl policy diff` must name the live
plaintext connection an ALLOW policy would close (and not the mTLS one), the workload that flips
to default-deny, and the rules that can never match, while the generation in force stays as it
was and both connections live on.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svid  # noqa: E402
from apps import HOLD, MULTI_SERVER, PROBE  # noqa: E402
from topology import Topology, build_dir, run  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
API_ID = "spiffe://cluster.local/ns/backend/sa/api"
PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.S)


class TwoNodes:
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology(cls.PREFIX)
        cls.topo.__enter__()
        t = cls.topo
        cls.web = t.add_pod("web", namespace="frontend", service_account="web", node="node1")
        # Its service account is what the test SVID of openssl s_client names (entitled on node1).
        cls.outsider = t.add_pod("outsider", namespace="default", service_account="plain",
                                 node="node1")
        cls.api = t.add_pod("api", namespace="backend", service_account="api", node="node2")
        tokens = os.path.join(t.workdir, "tokens")
        with open(tokens, "w") as f:
            f.write("t1 node1\n")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        # The outsider names no netns: it is not captured, and its connections cross in plaintext.
        plain = cls.outsider.yaml().replace(
            f"    ambit.dev/netns: {cls.outsider.netns_path}\n", "")
        pods = "---\n".join(p.yaml() for p in (cls.web, cls.api)) + "---\n" + plain
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", pods)
        cls.n1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens, wait_pods=[cls.web])
        cls.n2.start(wait_pods=[cls.api])
        cls.n1.wait_log("certificate spiffe://cluster.local/ns/frontend/sa/web valid")
        cls.n2.wait_log(f"certificate {API_ID} valid")
        cls.server = cls.api.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, "9000", "9001",
                                    "9002"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   bufsize=0)
        assert b"listening" in os.read(cls.server.stdout.fileno(), 100)

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def ctl(self, *args, agent=None, code=0):
        agent = agent or self.n2
        r = run(AMBITCTL, *args, "--admin-socket", agent.admin_socket, check=False)
        if code is not None:
            self.assertEqual(r.returncode, code, f"ambitctl {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def probe(self, pod, port):
        enrolled = pod is not self.outsider
        r = pod.python(PROBE, self.api.ip4, port, in_cgroup=enrolled)
        return json.loads(r.stdout)["ok"]


class StrictReadinessTest(TwoNodes, unittest.TestCase):
    PREFIX = "sr"

    def readiness(self, target, code):
        return json.loads(self.ctl("strict-readiness", target, "-o", "json", code=code).stdout)

    def api_ports(self, doc):
        [w] = [w for w in doc["workloads"] if w["name"] == "api"]
        self.assertEqual(w["namespace"], "backend")
        return w, {p["port"]: p for p in w["ports"]}

    def wait_ports(self, target, code, want, timeout=10):
        """The answer once every port in `want` shows up (the tunnel records as it decides)."""
        deadline = time.time() + timeout
        while True:
            doc = self.readiness(target, code=None)
            ports = self.api_ports(doc)[1]
            if want <= set(ports) or time.time() > deadline:
                return doc

    def test_1_mtls_traffic_alone_is_ready(self):
        # Only mesh traffic so far: web over HBONE on 9001.
        self.assertTrue(self.probe(self.web, 9001))
        self.n2.wait_log("mode=hbone")
        doc = self.readiness("backend", code=0)
        self.assertFalse(doc["wouldRefuse"])
        w, ports = self.api_ports(doc)
        self.assertEqual(ports, {}, "mTLS traffic was recorded as plaintext")
        self.assertEqual(w["mtlsMode"], "PERMISSIVE")
        pa = list(yaml.safe_load_all(doc["suggestedPeerAuthentication"]))
        self.assertEqual(len(pa), 1)
        self.assertEqual(pa[0]["metadata"], {"name": "default", "namespace": "backend"})
        self.assertEqual(pa[0]["spec"], {"mtls": {"mode": "STRICT"}})

    def test_2_plaintext_client_is_named_and_exempted(self):
        for _ in range(3):
            self.assertTrue(self.probe(self.outsider, 9000))
        self.assertTrue(self.probe(self.web, 9001))
        before = time.time()
        r = self.ctl("strict-readiness", "backend", "-o", "json", code=1)
        doc = json.loads(r.stdout)
        self.assertTrue(doc["wouldRefuse"])
        w, ports = self.api_ports(doc)
        self.assertTrue(w["wouldRefuse"])
        self.assertEqual(sorted(ports), [9000], "only the outsider's plaintext port")
        p = ports[9000]
        self.assertTrue(p["wouldRefuse"])
        self.assertEqual(p["mtlsMode"], "PERMISSIVE")
        [client] = p["clients"]
        self.assertEqual(client["address"], self.outsider.ip4)
        self.assertEqual(client["workload"], "default/outsider")
        self.assertGreaterEqual(client["connections"], 3)
        self.assertEqual(client["refused"], 0)
        self.assertLessEqual(client["firstSeen"], client["lastSeen"])
        self.assertLess(abs(time.mktime(time.strptime(client["lastSeen"], "%Y-%m-%dT%H:%M:%SZ"))
                            - time.timezone - before), 60)
        # The suggestion: namespace-wide STRICT, and api's 9000 still PERMISSIVE.
        docs = list(yaml.safe_load_all(doc["suggestedPeerAuthentication"]))
        self.assertEqual([d["kind"] for d in docs], ["PeerAuthentication"] * 2)
        self.assertEqual(docs[0]["spec"], {"mtls": {"mode": "STRICT"}})
        self.assertEqual(docs[1]["metadata"]["namespace"], "backend")
        self.assertEqual(docs[1]["spec"]["selector"], {"matchLabels": {"app": "api"}})
        self.assertEqual(docs[1]["spec"]["mtls"], {"mode": "STRICT"})
        self.assertEqual(docs[1]["spec"]["portLevelMtls"], {9000: {"mode": "PERMISSIVE"}})
        # The same answer for the one pod, and in a table for people.
        self.assertTrue(self.readiness("backend/api", code=1)["wouldRefuse"])
        table = self.ctl("strict-readiness", "backend/api", code=1).stdout
        self.assertRegex(table, rf"backend/api\s+9000\s+PERMISSIVE\s+{re.escape(self.outsider.ip4)}"
                                r"\s+default/outsider\s+\d+\s+0\s+\S+\s+WOULD REFUSE")
        self.assertIn("portLevelMtls:", table)
        # Metrics say the same: one plaintext source on api:9000.
        metrics = self.n2.metrics()
        self.assertRegex(metrics, r'ambit_plaintext_clients\{pod="backend/api",port="9000"\} 1\n')
        m = re.search(r'ambit_plaintext_connections_total\{pod="backend/api",port="9000"\} (\d+)',
                      metrics)
        self.assertIsNotNone(m, metrics)
        self.assertGreaterEqual(int(m.group(1)), 3)
        self.assertNotIn('ambit_plaintext_clients{pod="backend/api",port="9001"}', metrics)

    def test_3_suggestion_applied_keeps_the_client_and_closes_the_rest(self):
        self.assertTrue(self.probe(self.outsider, 9000))
        doc = self.readiness("backend", code=1)
        self.n2.write_config("strict.yaml", doc["suggestedPeerAuthentication"])
        deadline = time.time() + 10
        while self.probe(self.outsider, 9002) and time.time() < deadline:
            time.sleep(0.2)
        self.assertFalse(self.probe(self.outsider, 9002), "9002 still takes plaintext")
        self.assertTrue(self.probe(self.outsider, 9000), "the exempted port refuses plaintext")
        self.assertTrue(self.probe(self.web, 9002), "mTLS refused under the suggested policy")
        doc = self.wait_ports("backend", None, {9000, 9002})
        _, ports = self.api_ports(doc)
        self.assertEqual(ports[9002]["mtlsMode"], "STRICT")
        self.assertFalse(ports[9002]["wouldRefuse"])
        [refused] = ports[9002]["clients"]
        self.assertEqual(refused["address"], self.outsider.ip4)
        self.assertEqual(refused["refused"], refused["connections"])
        self.assertGreaterEqual(refused["refused"], 1)
        self.assertEqual(ports[9000]["mtlsMode"], "PERMISSIVE")
        table = self.ctl("strict-readiness", "backend", code=1).stdout
        self.assertRegex(table, r"9002\s+STRICT\s+\S+\s+default/outsider\s+\d+\s+\d+\s+\S+\s+"
                                r"refused already")
        self.n2.write_config("strict.yaml", "")
        deadline = time.time() + 10
        while not self.probe(self.outsider, 9002) and time.time() < deadline:
            time.sleep(0.2)

    def test_bad_targets_fail_with_a_reason(self):
        r = self.ctl("strict-readiness", "backend/nope", code=1)
        self.assertIn("pod backend/nope is not in the configuration", r.stderr)
        r = self.ctl("strict-readiness", "frontend/web", code=1)
        self.assertIn("not served by this node (node2) but by node \"node1\"", r.stderr)
        r = self.ctl("strict-readiness", "Bad_NS", code=1)
        self.assertIn("namespace must be a Kubernetes namespace name", r.stderr)
        r = self.ctl("strict-readiness", "a/b/c", code=1)
        self.assertIn("is not NAMESPACE or NAMESPACE/POD", r.stderr)
        self.ctl("strict-readiness", code=2)
        # A namespace with no pod here: ready, and said so.
        doc = self.readiness("elsewhere", code=0)
        self.assertEqual(doc["workloads"], [])
        self.assertIn("no pod of namespace elsewhere is enrolled on this node", doc["notes"])


class CertificatePemTest(TwoNodes, unittest.TestCase):
    PREFIX = "cp"

    def s_client_chain(self):
        """The PEM blocks api's 15008 presents to a mesh client, as openssl s_client shows them."""
        certdir = svid.issue(self.n1, "spiffe://cluster.local/ns/default/sa/plain", "t1",
                             tempfile.mkdtemp(dir=self.topo.workdir))
        r = self.outsider.run(["openssl", "s_client", "-connect", f"{self.api.ip4}:15008",
                               "-alpn", "h2", "-tls1_3", "-cert", f"{certdir}/cert.pem",
                               "-key", f"{certdir}/key.pem", "-CAfile", f"{certdir}/root.pem",
                               "-showcerts"], in_cgroup=False, input="", timeout=20)
        out = r.stdout + r.stderr
        self.assertRegex(out, r"Verify return code: 0 \(ok\)")
        return PEM_BLOCK.findall(out)

    def test_fingerprint_is_what_s_client_sees(self):
        doc = json.loads(self.ctl("certs", "-o", "json").stdout)
        [cert] = [c for c in doc["certificates"] if c["identity"] == API_ID]
        fp = cert["sha256Fingerprint"]
        self.assertRegex(fp, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        chain = self.s_client_chain()
        self.assertGreaterEqual(len(chain), 1)
        seen = run("openssl", "x509", "-noout", "-fingerprint", "-sha256", input=chain[0]).stdout
        self.assertEqual(seen.strip().split("=", 1)[1], fp)
        table = self.ctl("certs").stdout
        self.assertIn("SHA256 FINGERPRINT", table)
        self.assertIn(fp, table)

    def test_pem_is_the_presented_chain_and_never_a_key(self):
        r = self.ctl("certs", "--pem", API_ID)
        self.assertNotIn("PRIVATE KEY", r.stdout)
        blocks = PEM_BLOCK.findall(r.stdout)
        self.assertEqual(r.stdout, "".join(blocks), "anything but PEM certificates in --pem")
        self.assertEqual(blocks, self.s_client_chain())
        text = run("openssl", "x509", "-noout", "-text", input=r.stdout).stdout
        self.assertIn(f"URI:{API_ID}", text)
        # Every identity when none is named (one here), and JSON with the fingerprint.
        self.assertEqual(self.ctl("certs", "--pem").stdout, r.stdout)
        doc = json.loads(self.ctl("certs", "--pem", API_ID, "-o", "json").stdout)
        [c] = doc["chains"]
        self.assertEqual(c["chainPem"], r.stdout)
        self.assertRegex(c["sha256Fingerprint"], r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")
        # The other node holds web's certificate, not api's.
        r = self.ctl("certs", "--pem", API_ID, agent=self.n1, code=1)
        self.assertIn(f"no certificate for {API_ID} on this node", r.stderr)
        self.assertIn("spiffe://cluster.local/ns/frontend/sa/web", r.stderr)
        r = self.ctl("certs", API_ID, code=1)
        self.assertIn("IDENTITY is for --pem", r.stderr)


def policy(name, rules, namespace="backend", action="ALLOW", selector=None, extra=""):
    lines = ["apiVersion: security.istio.io/v1", "kind: AuthorizationPolicy", "metadata:",
             f"  name: {name}", f"  namespace: {namespace}", "spec:"]
    if selector:
        lines += ["  selector:", "    matchLabels:"] + [f"      {k}: {v}" for k, v in selector.items()]
    lines += [f"  action: {action}", "  rules:"] + ["  " + l for l in rules.strip("\n").splitlines()]
    return "\n".join(lines) + "\n" + extra


ONLY_WEB = policy("only-web", """
- from:
  - source:
      principals: ["cluster.local/ns/frontend/sa/web"]
""", selector={"app": "api"})
LINT = "---\n".join([
    policy("http-at-node", """
- to:
  - operation:
      methods: ["GET"]
""", namespace="frontend", selector={"app": "web"}),
    policy("spiffe-written", """
- from:
  - source:
      principals: ["spiffe://cluster.local/ns/frontend/sa/web"]
""", namespace="frontend", action="DENY"),
    policy("nobody-here", """
- from:
  - source:
      namespaces: ["nosuch"]
      principals: ["cluster.local/ns/frontend/sa/ghost"]
""", namespace="frontend", action="DENY"),
])
BROKEN = policy("broken", "- {}", action="BOGUS")


class PolicyDiffTest(TwoNodes, unittest.TestCase):
    PREFIX = "pd"

    def hold(self, pod, port):
        proc = pod.popen(["/usr/bin/python3", "-c", HOLD, self.api.ip4, str(port)],
                         in_cgroup=pod is not self.outsider, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        self.assertEqual(proc.stdout.readline().strip(), "connected")
        self.assertTrue(self.echo(proc))
        return proc

    def echo(self, proc):
        proc.stdin.write("x\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip() == "echo"

    def diff_dir(self, files):
        d = tempfile.mkdtemp(dir=self.topo.workdir)
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        return d

    def generation(self):
        return json.loads(self.ctl("status", "-o", "json", code=None).stdout)["generation"]

    def wait_connections(self, n):
        deadline = time.time() + 10
        while time.time() < deadline:
            conns = json.loads(self.ctl("connections", "-o", "json").stdout)["connections"]
            inbound = [c for c in conns if c["direction"] == "inbound"]
            if len(inbound) >= n:
                return inbound
            time.sleep(0.2)
        self.fail(f"fewer than {n} inbound connections listed: {conns}")

    def test_diff_names_what_would_change_and_applies_nothing(self):
        plain = self.hold(self.outsider, 9002)
        mtls = self.hold(self.web, 9001)
        live = self.wait_connections(2)
        [plain_id] = [c["id"] for c in live if c["mode"] == "plaintext"
                      and c["source"]["address"].startswith(self.outsider.ip4 + ":")]
        before = self.generation()
        d = self.diff_dir({"allow.yaml": ONLY_WEB, "lint.yaml": LINT, "broken.yaml": BROKEN,
                           "README.txt": "not YAML, not sent"})
        r = self.ctl("policy", "diff", "--config", d, "-o", "json")
        doc = json.loads(r.stdout)
        self.assertEqual(doc["authorizationPolicies"], 4)
        self.assertGreaterEqual(doc["connectionsChecked"], 2)
        # The outsider's plaintext connection carries no identity: only-web would close it.
        [closed] = doc["closed"]
        self.assertEqual(closed["id"], plain_id)
        self.assertEqual(closed["pod"], "backend/api")
        self.assertTrue(closed["source"].startswith(self.outsider.ip4 + ":"), closed)
        self.assertEqual(closed["mode"], "plaintext")
        self.assertEqual(closed["allowedBy"], "default")
        self.assertIn("backend/only-web", closed["reason"])
        # api goes default-deny; web gets http-at-node (an ALLOW) and goes default-deny too.
        flipped = {f"{w['namespace']}/{w['name']}": w for w in doc["flipped"]}
        self.assertEqual(set(flipped), {"backend/api", "frontend/web"})
        self.assertEqual((flipped["backend/api"]["before"], flipped["backend/api"]["after"]),
                         ("default-allow", "default-deny"))
        self.assertEqual(flipped["backend/api"]["allowPolicies"], ["backend/only-web"])
        kinds = sorted((f["policy"], f["kind"]) for f in doc["findings"])
        self.assertEqual(kinds, [
            ("AuthorizationPolicy frontend/http-at-node", "http-without-waypoint"),
            ("AuthorizationPolicy frontend/nobody-here", "unknown-namespace"),
            ("AuthorizationPolicy frontend/nobody-here", "unknown-service-account"),
            ("AuthorizationPolicy frontend/spiffe-written", "spiffe-prefix"),
        ])
        for f in doc["findings"]:
            self.assertEqual(f["file"], "lint.yaml")
        self.assertTrue(any("broken.yaml" in p and "BOGUS" in p for p in doc["problems"]),
                        doc["problems"])
        # Nothing applied: the same generation, and both connections still carry bytes.
        time.sleep(0.5)
        self.assertEqual(self.generation(), before)
        self.assertEqual(doc["generation"]["desired"], before["desired"])
        self.assertTrue(self.echo(plain), "the diff closed the plaintext connection")
        self.assertTrue(self.echo(mtls))
        self.assertTrue(self.probe(self.outsider, 9000), "the diff's policy was applied")
        # The table for people, and --exit-code for scripts.
        table = self.ctl("policy", "diff", "--config", d, "--exit-code", code=1).stdout
        self.assertIn("would be closed (1 of", table)
        self.assertRegex(table, r"backend\s+api\s+default-allow\s+default-deny")
        self.assertIn("spiffe-prefix", table)
        plain.kill()
        mtls.kill()

    def test_strict_peer_authentication_closes_plaintext_only(self):
        plain = self.hold(self.outsider, 9002)
        mtls = self.hold(self.web, 9001)
        live = self.wait_connections(2)
        plain_ids = {c["id"] for c in live if c["mode"] == "plaintext"}
        self.assertTrue(plain_ids)
        d = self.diff_dir({"pa.yaml": """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: backend
spec:
  mtls:
    mode: STRICT
"""})
        doc = json.loads(self.ctl("policy", "diff", "--config", d, "-o", "json").stdout)
        self.assertEqual(doc["peerAuthentications"], 1)
        self.assertEqual({c["id"] for c in doc["closed"]}, plain_ids, "mTLS would be closed")
        self.assertIn("plaintext refused: PeerAuthentication backend/strict requires mTLS",
                      doc["closed"][0]["reason"])
        self.assertEqual(doc["flipped"], [])
        self.assertEqual(doc["findings"], [])
        self.ctl("policy", "diff", "--config", d, "--exit-code", code=1)
        plain.kill()
        mtls.kill()

    def test_bounds_and_bad_input_fail_closed_with_a_reason(self):
        big = self.diff_dir({f"p{i}.yaml": "# " + "x" * (1 << 20) + "\n" for i in range(4)})
        r = self.ctl("policy", "diff", "--config", big, code=1)
        self.assertIn("more than 3 MiB of YAML", r.stderr)
        r = self.ctl("policy", "diff", "--config", os.path.join(big, "nope"), code=1)
        self.assertIn("cannot read config directory", r.stderr)
        r = self.ctl("policy", "diff", "--config", self.diff_dir({"a.txt": "x"}), code=1)
        self.assertIn("holds no .yaml or .yml file", r.stderr)
        self.ctl("policy", "diff", code=1)
        # A caller other than ambitctl is held to the same bound by ambitd itself.
        r = subprocess.run([sys.executable, "-c", RAW_DIFF, self.n2.admin_socket],
                           capture_output=True, text=True, timeout=60)
        self.assertIn("INVALID_ARGUMENT", r.stdout + r.stderr)
        self.assertIn("at most 1000 files", r.stdout + r.stderr)


# A PolicyDiff call over the admin socket with grpcio and stubs built from our proto: 1001 tiny
# files, past the file bound ambitctl never crosses.
RAW_DIFF = r"""
import os, sys, tempfile
import grpc
from grpc_tools import protoc
root = os.path.join(%r, "..", "..", "proto")
out = tempfile.mkdtemp()
assert protoc.main(["protoc", "-I" + root, "--python_out=" + out, "--grpc_python_out=" + out,
                    "ambit/admin/v1/admin.proto"]) == 0
sys.path.insert(0, out)
from ambit.admin.v1 import admin_pb2, admin_pb2_grpc
import shutil
shutil.rmtree(out, ignore_errors=True)  # loaded: the generated files are needed no more
req = admin_pb2.PolicyDiffRequest(
    files=[admin_pb2.PolicyFile(name=f"f{i}.yaml", content=b"# x\n") for i in range(1001)])
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    try:
        admin_pb2_grpc.AdminStub(ch).PolicyDiff(req, timeout=20)
        print("accepted")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
""" % os.path.dirname(os.path.abspath(__file__))


if __name__ == "__main__":
    unittest.main(verbosity=2)
