"""End to end: ambitd reading workloads, services and authorization from istiod's xDS
(--xds-address).

istiod cannot run here (it needs a Kubernetes API server and its control plane), so
tests/xds/fake_istiod.py stands in for it: real gRPC over TLS (python3-grpcio), Envoy's
DeltaAggregatedResources with Istio's resources from the repository's protos, scripted deltas,
removals, a resource that must be NACKed, a held type and dropped streams. Everything else is
real: ambitd and ambit-tunnel on the test topology, pods found by their IPs, curl between pod
namespaces, ambitctl. The config directory holds only mesh.yaml, as the ConfigMap does.
"""

import json
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "xds"))
import fake_istiod as fi  # noqa: E402
from topology import ECHO_HTTP_APP, Topology, build_dir, run  # noqa: E402

AMBITCTL = str(build_dir() / "agent" / "cli" / "ambitctl")
WEB = "cluster.local/ns/frontend/sa/web"
OTHER = "cluster.local/ns/frontend/sa/other"


def wait_until(what, fn, timeout=20, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def uid(pod):
    return f"Kubernetes//Pod/{pod.namespace}/{pod.name}"


def only_web():
    return fi.authorization("only-web", "backend", "ALLOW", "WORKLOAD_SELECTOR",
                            rules=[[[{"principals": [{"exact": WEB}]}]]])


class XdsSourceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("x")
        cls.topo.__enter__()
        try:
            cls._set_up()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def workload(cls, pod, **kw):
        return fi.workload(uid(pod), pod.name, pod.namespace, pod.service_account, pod.node,
                           [pod.ip4, pod.ip6], **kw)

    @classmethod
    def _set_up(cls):
        t = cls.topo
        cls.web = t.add_pod("web", namespace="frontend", service_account="web")
        cls.other = t.add_pod("other", namespace="frontend", service_account="other")
        cls.api = t.add_pod("api", namespace="backend", service_account="api")
        # Not in the mesh (istiod sends it without HBONE): its connections arrive in plaintext.
        cls.plain = t.add_pod("plain", namespace="legacy", service_account="plain")
        cls.agent = t.add_agent("node1")
        cls.agent.write_config("mesh.yaml", "trustDomain: cluster.local\n")
        cls.istiod = fi.FakeIstiod(os.path.join(t.workdir, "istiod"), token="xds-secret").start()
        cls.istiod.set(cls.workload(cls.web))
        cls.istiod.set(cls.workload(cls.other))
        cls.istiod.set(cls.workload(cls.api, policies=["backend/only-web"],
                                    services=["backend/api.backend.svc.cluster.local"],
                                    workload_name="api-deploy", canonical_name="api-svc"))
        cls.istiod.set(cls.workload(cls.plain, hbone=False))
        cls.istiod.set(fi.service("api", "backend", ["198.19.200.1"]))
        cls.istiod.set(only_web())

        # The second type is held back: readiness must wait for it.
        cls.istiod.hold(fi.AUTHORIZATION)
        cls.agent.start("--xds-address", cls.istiod.address,
                        "--xds-root-cert", cls.istiod.root_cert,
                        "--xds-token-file", cls.istiod.token_file, "--cluster-id", "test-cluster")
        wait_until("Address acknowledged", lambda: any(
            r["type_url"] == fi.ADDRESS and r["response_nonce"] for r in cls.istiod.requests()))
        cls.early_ready = wait_until("readiness endpoint", cls.agent.try_ready, 15)
        time.sleep(1)
        cls.still_early = cls.agent.try_ready()
        cls.istiod.release(fi.AUTHORIZATION)
        for pod in (cls.web, cls.other, cls.api):
            cls.agent.wait_log(f"pod {pod.namespace}/{pod.name} ", timeout=30)
        cls.late_ready = wait_until("ready", lambda: (lambda r: r if r and r[0] == 200 else None)(
            cls.agent.try_ready()), 30)
        cls.apps = []
        for pod in (cls.api, cls.other):
            app = pod.popen(["/usr/bin/python3", "-u", "-c", ECHO_HTTP_APP, "8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert b"listening" in app.stdout.readline()
            cls.apps.append(app)

    @classmethod
    def tearDownClass(cls):
        try:
            if getattr(cls, "istiod", None) is not None:
                cls.istiod.stop()
        finally:
            cls.topo.close()

    def setUp(self):
        # Every test starts from the initial configuration.
        self.istiod.set(only_web())
        self.wait_curl(self.web, self.api, True)
        self.wait_curl(self.other, self.api, False)

    # --- helpers ---

    def curl(self, client, server):
        r = client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                        f"http://{server.ip4}:8080/"], timeout=10)
        return r.stdout.strip() == "200"

    def wait_curl(self, client, server, ok, timeout=20):
        wait_until(f"{client.name} -> {server.name} {'allowed' if ok else 'denied'}",
                   lambda: self.curl(client, server) == ok, timeout)

    def ctl(self, *args, ok=True):
        r = run(AMBITCTL, *args, "--admin-socket", self.agent.admin_socket, check=False)
        if ok:
            self.assertEqual(r.returncode, 0, f"ambitctl {' '.join(args)}: {r.stderr}")
        return r

    def check(self, client, server):
        return json.loads(self.ctl("check", f"{client.namespace}/{client.name}",
                                   f"{server.ip4}:8080", "-o", "json").stdout)

    def metric(self, name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.agent.metrics().splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not want and line.startswith(f"{name} ")):
                return float(line.split()[-1])
        return None

    # --- tests ---

    def test_handshake_as_ztunnel(self):
        first = [r for r in self.istiod.requests() if r["stream"] == 1][:2]
        self.assertEqual(sorted(r["type_url"] for r in first), sorted([fi.ADDRESS, fi.AUTHORIZATION]))
        for r in first:
            self.assertEqual(r["response_nonce"], "")
            self.assertEqual(r["subscribe"], [])  # a wildcard subscription
            self.assertEqual(r["initial_resource_versions"], {})
            self.assertTrue(r["node_id"].startswith("ztunnel~"), r["node_id"])
            self.assertEqual(r["node_metadata"]["NODE_NAME"], "node1")
            self.assertEqual(r["node_metadata"]["CLUSTER_ID"], "test-cluster")
            self.assertEqual(r["authorization"], "Bearer xds-secret")
            self.assertEqual(r["clusterid"], "test-cluster")
        # Every response was acknowledged with its nonce.
        acks = [r for r in self.istiod.requests() if r["response_nonce"]]
        self.assertTrue(acks)
        self.assertTrue(all(r["error_detail"] is None for r in acks
                            if r["stream"] == 1 and r["response_nonce"] in ("n1", "n2")))

    def test_readiness_waits_for_both_types(self):
        for status, body in (self.early_ready, self.still_early):
            self.assertEqual(status, 503, body)
            self.assertIn(f"waiting for the first {fi.AUTHORIZATION} from istiod", body)
            self.assertNotIn(f"waiting for the first {fi.ADDRESS}", body)
        self.assertEqual(self.late_ready[0], 200, self.late_ready[1])

    def test_policies_from_istiod_decide_with_their_names(self):
        self.assertTrue(self.curl(self.web, self.api))
        self.assertFalse(self.curl(self.other, self.api))
        self.assertEqual(self.check(self.other, self.api)["decision"], "deny")
        allowed = self.check(self.web, self.api)
        self.assertEqual(allowed["decision"], "allow", allowed)
        self.assertEqual(allowed["policy"], "backend/only-web")
        # A DENY pushed as a delta takes web out; removing it lets web back in.
        self.istiod.set(fi.authorization("deny-web", "backend", "DENY", "NAMESPACE",
                                         rules=[[[{"principals": [{"exact": WEB}]}]]]))
        self.wait_curl(self.web, self.api, False)
        self.assertEqual(self.check(self.web, self.api)["policy"], "backend/deny-web")
        self.assertIn("deny-web", self.ctl("policies").stdout)
        self.istiod.remove(fi.AUTHORIZATION, "backend/deny-web")
        self.wait_curl(self.web, self.api, True)

    def test_nacked_resource_keeps_the_last_good_version(self):
        bad = only_web()
        bad.action = 5  # no such Action
        start = len(self.istiod.requests())
        self.istiod.set(bad, fi.AUTHORIZATION)
        nack = wait_until("NACK", lambda: [r for r in self.istiod.requests()[start:]
                                           if r["error_detail"]])
        self.assertEqual(nack[0]["type_url"], fi.AUTHORIZATION)
        self.assertIn("Authorization backend/only-web: field action: unknown value 5",
                      nack[0]["error_detail"])
        self.agent.wait_log("NACK type.googleapis.com/istio.security.Authorization")
        # The ALLOW for web is still the one in force.
        time.sleep(1)
        self.assertTrue(self.curl(self.web, self.api))
        self.assertFalse(self.curl(self.other, self.api))

    def test_abusive_responses_are_nacked_and_change_nothing(self):
        start = len(self.istiod.requests())
        # Bytes that are no Authorization, an Any of the wrong type, a type never subscribed to.
        self.istiod.push_raw(fi.AUTHORIZATION, {
            "backend/garbage": ("1", fi.AUTHORIZATION, b"\xff\xff\xff"),
            "backend/wrong": ("1", fi.ADDRESS, b""),
        })
        self.istiod.push_raw("type.googleapis.com/envoy.config.cluster.v3.Cluster", {})
        nacks = wait_until("three NACKs", lambda: (lambda n: n if len(n) >= 2 else None)(
            [r for r in self.istiod.requests()[start:] if r["error_detail"]]))
        details = " | ".join(r["error_detail"] for r in nacks)
        self.assertIn("Authorization backend/garbage", details)
        self.assertIn("not a valid istio.security.Authorization", details)
        self.assertIn("resource 'backend/wrong': holds a 'type.googleapis.com/istio.workload."
                      "Address'", details)
        self.assertIn("was not subscribed to", details)
        self.assertTrue(self.curl(self.web, self.api))
        self.assertFalse(self.curl(self.other, self.api))
        self.assertEqual(self.agent.ready()[0], 200)

    def test_strict_peer_authentication_as_istiod_converts_it(self):
        self.assertTrue(self.curl(self.plain, self.other))
        self.istiod.set(fi.authorization(
            "istio_converted_static_strict", "istio-system", "DENY", "GLOBAL",
            rules=[[[{"not_principals": [{"presence": True}]}]]]))
        try:
            self.wait_curl(self.plain, self.other, False)
            self.assertTrue(self.curl(self.web, self.other))  # mTLS still passes
            self.assertEqual(self.check(self.plain, self.other)["policy"],
                             "istio-system/istio_converted_static_strict")
        finally:
            self.istiod.remove(fi.AUTHORIZATION, "istio-system/istio_converted_static_strict")
        self.wait_curl(self.plain, self.other, True)

    def test_workload_removal(self):
        self.istiod.remove(fi.ADDRESS, uid(self.web))
        try:
            r = wait_until("web gone", lambda: (lambda r: r if r.returncode != 0 else None)(
                self.ctl("check", "frontend/web", f"{self.api.ip4}:8080", ok=False)))
            self.assertIn("no pod frontend/web", r.stderr)
        finally:
            self.istiod.set(self.workload(self.web))
        wait_until("web back", lambda: self.ctl("check", "frontend/web", f"{self.api.ip4}:8080",
                                                ok=False).returncode == 0)

    def test_reconnect_sends_initial_versions_and_keeps_config(self):
        streams = {r["stream"] for r in self.istiod.requests()}
        self.istiod.drop_streams()
        # While istiod is away the configuration stays in force.
        self.assertTrue(self.curl(self.web, self.api))
        self.assertFalse(self.curl(self.other, self.api))
        new = wait_until("a new stream", lambda: [
            r for r in self.istiod.requests()
            if r["stream"] not in streams and not r["response_nonce"]] if len(
            [r for r in self.istiod.requests() if r["stream"] not in streams
             and not r["response_nonce"]]) >= 2 else None)
        by_type = {r["type_url"]: r for r in new}
        held = by_type[fi.ADDRESS]["initial_resource_versions"]
        for pod in (self.web, self.other, self.api, self.plain):
            self.assertEqual(held.get(uid(pod)),
                             self.istiod.resources[fi.ADDRESS][uid(pod)][0], held)
        self.assertIn("backend/api.backend.svc.cluster.local", held)
        self.assertIn("backend/only-web", by_type[fi.AUTHORIZATION]["initial_resource_versions"])
        self.assertEqual(self.agent.ready()[0], 200)
        # Deltas flow on the new stream.
        self.istiod.set(fi.authorization("deny-web", "backend", "DENY", "NAMESPACE",
                                         rules=[[[{"principals": [{"exact": WEB}]}]]]))
        self.wait_curl(self.web, self.api, False)
        self.istiod.remove(fi.AUTHORIZATION, "backend/deny-web")
        self.wait_curl(self.web, self.api, True)

    def test_rejected_token_keeps_the_configuration(self):
        self.istiod.token = "rotated"
        try:
            self.istiod.drop_streams()
            self.agent.wait_log("authentication failure", timeout=20)
            # istiod refuses us: the last configuration stays in force, and ready (both types
            # arrived before).
            self.assertTrue(self.curl(self.web, self.api))
            self.assertFalse(self.curl(self.other, self.api))
            self.assertEqual(self.metric("ambit_xds_connected"), 0.0)
        finally:
            self.istiod.token = "xds-secret"
        # The token file is read again for the next connection.
        wait_until("reconnected", lambda: self.metric("ambit_xds_connected") == 1.0, 60)

    def test_workload_metadata_and_metrics(self):
        doc = json.loads(self.ctl("workloads", "-o", "json").stdout)
        text = json.dumps(doc)
        self.assertIn("backend", text)
        self.assertEqual(self.metric("ambit_xds_connected"), 1.0)
        self.assertGreaterEqual(self.metric("ambit_xds_resources", type_url=fi.ADDRESS), 5.0)
        self.assertGreaterEqual(self.metric("ambit_xds_acks_total", type_url=fi.AUTHORIZATION),
                                1.0)


if __name__ == "__main__":
    unittest.main()
