"""End to end: ambitd reading its configuration from a Kubernetes API server (--kube-api).

The API server is tests/kube/fake_apiserver.py, run in this process: it serves the topology's
pods and the policies over HTTPS with the real list/watch protocol, and the tests drive it
(dropped watches, compaction, token rotation, delays, 429s). ambitd's config directory holds only
mesh.yaml, as the ConfigMap does in a cluster. Connections are real curl between pod namespaces.
"""

import copy
import json
import os
import re
import subprocess
import sys
import time
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "kube"))
from fake_apiserver import FakeApiServer  # noqa: E402
from topology import ECHO_HTTP_APP, Topology, build_dir, rss_kib, run  # noqa: E402

AMBITCTL = str(build_dir() / "agent" / "cli" / "ambitctl")


def policy(name, principal, action="ALLOW", namespace="backend"):
    return {
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "action": action,
                 "rules": [{"from": [{"source": {"principals": [principal]}}]}]},
    }


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


class KubeSourceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("k")
        cls.topo.__enter__()
        try:
            cls._set_up()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _set_up(cls):
        t = cls.topo
        cls.web = t.add_pod("web", namespace="frontend", service_account="web", node="node1")
        cls.other = t.add_pod("other", namespace="frontend", service_account="other",
                              node="node1")
        cls.api = t.add_pod("api", namespace="backend", service_account="api", node="node1")
        cls.agent = t.add_agent("node1")
        cls.agent.write_config("mesh.yaml", "trustDomain: cluster.local\n")
        cls.server_dir = os.path.join(t.workdir, "apiserver")
        cls.kube = FakeApiServer(cls.server_dir, bookmark_interval=1.0)
        cls.kube.start()
        for ns in ("frontend", "backend"):
            cls.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for pod in (cls.web, cls.other, cls.api):
            cls.kube.apply(yaml.safe_load(pod.yaml()))
        # Pods of other nodes: peers the model knows, never enrolled here.
        for i in range(20):
            cls.kube.apply({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": f"peer-{i}", "namespace": "frontend"},
                            "spec": {"nodeName": "node9", "serviceAccountName": "web"},
                            "status": {"podIP": f"198.19.0.{i + 2}"}})
        cls.kube.apply(policy("only-web", WEB))

        # Readiness before the initial sync: every list waits 2 s at the server.
        cls.kube.set_delay(2.0)
        cls.agent.start("--kube-api", cls.kube.url, "--kube-token-file", cls.kube.token_file,
                        "--kube-ca-file", cls.kube.ca_file)
        cls.early_ready = wait_until("readiness endpoint up", cls.agent.try_ready, 15)
        cls.kube.set_delay(0)
        cls.agent.wait_log(f"pod {cls.api.namespace}/{cls.api.name} ", timeout=30)
        cls.agent.wait_log(f"pod {cls.web.namespace}/{cls.web.name} ", timeout=30)
        cls.late_ready = wait_until("ready", lambda: (lambda r: r if r[0] == 200 else None)(
            cls.agent.try_ready()), 30)
        cls.app = cls.api.popen(["/usr/bin/python3", "-u", "-c", ECHO_HTTP_APP, "8080"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert b"listening" in cls.app.stdout.readline()

    @classmethod
    def tearDownClass(cls):
        try:
            if getattr(cls, "kube", None) is not None:
                cls.kube.stop()
        finally:
            cls.topo.close()

    def setUp(self):
        self.kube.set_delay(0)
        self.kube.apply(policy("only-web", WEB))
        self.wait_curl(self.web, True)

    # --- helpers ---

    def curl(self, pod):
        r = pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                     f"http://{self.api.ip4}:8080/"], timeout=10)
        return r.stdout.strip() == "200"

    def wait_curl(self, pod, ok, timeout=20):
        wait_until(f"{pod.name} -> api {'allowed' if ok else 'denied'}",
                   lambda: self.curl(pod) == ok, timeout)

    def metric(self, name, resource):
        m = re.search(rf'^{name}{{resource="{resource}"}} (\S+)$', self.agent.metrics(), re.M)
        return float(m.group(1)) if m else None

    def requests_since(self, start, path):
        return [r for r in self.kube.request_log()
                if r["time"] >= start and r["path"] == path]

    # --- tests ---

    def test_readiness_fails_until_the_initial_sync(self):
        status, body = self.early_ready
        self.assertEqual(status, 503, body)
        self.assertIn("waiting for the first list of", body)
        self.assertEqual(self.late_ready[0], 200, self.late_ready[1])
        for resource in ("pods", "namespaces", "services", "authorizationpolicies",
                         "peerauthentications", "requestauthentications", "gateways"):
            self.assertEqual(self.metric("ambit_kube_synced", resource), 1.0, resource)
        self.assertIsNotNone(self.metric("ambit_kube_last_sync_age_seconds", "pods"))

    def test_policy_change_through_the_api(self):
        self.assertTrue(self.curl(self.web))
        self.assertFalse(self.curl(self.other))
        self.kube.apply(policy("only-web", OTHER))
        self.wait_curl(self.web, False)
        self.assertTrue(self.curl(self.other))
        self.kube.delete("AuthorizationPolicy", "backend", "only-web")
        self.wait_curl(self.web, True)
        self.assertTrue(self.curl(self.other))

    def test_invalid_policy_keeps_the_last_good_one(self):
        bad = policy("only-web", OTHER)
        bad["spec"]["action"] = "EXPLODE"
        self.kube.apply(bad)
        self.agent.wait_log("apiserver: AuthorizationPolicy backend/only-web: field spec.action")
        self.agent.wait_log("apiserver: warning: AuthorizationPolicy backend/only-web: is invalid; "
                            "its last good version stays in force")
        # The ALLOW for web is still the one in force.
        self.assertTrue(self.curl(self.web))
        self.assertFalse(self.curl(self.other))

    def test_disconnect_mid_watch_rewatches_from_the_last_version(self):
        restarts = self.metric("ambit_kube_watch_restarts_total", "authorizationpolicies")
        start = time.time()
        self.assertGreater(self.kube.drop_watches(), 0)
        self.kube.apply(policy("only-web", OTHER))
        self.wait_curl(self.web, False)
        path = "/apis/security.istio.io/v1/authorizationpolicies"
        seen = self.requests_since(start, path)
        watches = [r for r in seen if r["query"].get("watch") == "true"]
        self.assertTrue(watches, seen)
        # Re-watched from where it was, with bookmarks; no relist was needed.
        self.assertTrue(all(r["query"].get("resourceVersion") not in (None, "", "0")
                            for r in watches), watches)
        self.assertTrue(all(r["query"].get("allowWatchBookmarks") == "true" for r in watches))
        self.assertEqual([r for r in seen if r["query"].get("watch") != "true"], [])
        wait_until("restart counted", lambda: self.metric(
            "ambit_kube_watch_restarts_total", "authorizationpolicies") > restarts)

    def test_compaction_relists(self):
        lists = self.metric("ambit_kube_lists_total", "authorizationpolicies")
        start = time.time()
        # The watches come back while the server holds every request for a second; meanwhile
        # the history they would resume from is compacted away.
        self.kube.set_delay(1.0)
        self.kube.drop_watches()
        self.kube.apply(policy("only-web", OTHER))
        self.kube.compact()
        self.kube.set_delay(0)
        self.wait_curl(self.web, False)
        path = "/apis/security.istio.io/v1/authorizationpolicies"
        relists = [r for r in self.requests_since(start, path) if "watch" not in r["query"]]
        self.assertTrue(relists, self.requests_since(start, path))
        self.assertEqual(relists[0]["query"].get("limit"), "500")
        wait_until("relist counted", lambda: self.metric(
            "ambit_kube_lists_total", "authorizationpolicies") > lists)
        self.agent.wait_log("expired; listing again")

    def test_token_rotation_keeps_syncing(self):
        self.kube.rotate_token()
        self.kube.drop_watches()  # the next requests must carry the new token
        start = time.time()
        self.kube.apply(policy("only-web", OTHER))
        self.wait_curl(self.web, False)
        path = "/apis/security.istio.io/v1/authorizationpolicies"
        statuses = [r["status"] for r in self.requests_since(start, path)]
        self.assertNotIn(401, statuses)

    def test_slow_server_still_syncs(self):
        self.kube.set_delay(1.5)
        self.kube.drop_watches()
        self.kube.apply(policy("only-web", OTHER))
        self.wait_curl(self.web, False, timeout=30)
        self.kube.set_delay(0)

    def test_restart_applies_nothing_before_the_initial_sync(self):
        self.assertFalse(self.curl(self.other))
        self.agent.stop()
        self.kube.set_delay(4.0)
        try:
            self.agent.start("--kube-api", self.kube.url, "--kube-token-file",
                             self.kube.token_file, "--kube-ca-file", self.kube.ca_file)
            status, body = wait_until("readiness endpoint up", self.agent.try_ready, 15)
            self.assertEqual(status, 503, body)
            self.assertIn("waiting for the first list of", body)
            # The pods stay enrolled under the policy in force: an empty (partial) configuration
            # would have un-enrolled them and let `other` through in plaintext.
            self.assertFalse(self.curl(self.other))
            self.assertTrue(self.curl(self.web))
            self.assertIn("waiting for the first list of", self.agent.try_ready()[1])
        finally:
            self.kube.set_delay(0)
        wait_until("ready again", lambda: (self.agent.try_ready() or (0,))[0] == 200, 30)

    def test_429_retry_after_is_honoured(self):
        self.kube.clear_requests()
        self.kube.fail_next(4, 429, retry_after=2)
        self.kube.drop_watches()
        self.kube.apply(policy("only-web", OTHER))
        self.wait_curl(self.web, False, timeout=40)

        def retried():
            log = self.kube.request_log()
            failed = [r for r in log if r["status"] == 429]
            if len(failed) == 4 and all(any(r["path"] == f["path"] and r["time"] > f["time"]
                                            for r in log) for f in failed):
                return log
            return None
        log = wait_until("every 429 retried", retried, timeout=20)
        failed = [r for r in log if r["status"] == 429]
        for f in failed:
            after = [r for r in log if r["path"] == f["path"] and r["time"] > f["time"]]
            self.assertTrue(after, f"no retry of {f['path']}")
            waited = after[0]["time"] - f["time"]
            self.assertGreaterEqual(waited, 2.0, f"{f['path']} retried after {waited:.2f}s")


class KubeScaleTest(unittest.TestCase):
    """10 000 pods through the API server: synced, and ambitd's memory stays sane."""

    PODS = 10000

    def test_ten_thousand_pods(self):
        with Topology("s") as t:
            local = t.add_pod("api", namespace="backend", service_account="api", node="node1")
            agent = t.add_agent("node1")
            agent.write_config("mesh.yaml", "trustDomain: cluster.local\n")
            kube = FakeApiServer(os.path.join(t.workdir, "apiserver"))
            kube.start()
            try:
                kube.apply({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "backend"}})
                kube.apply(yaml.safe_load(local.yaml()))
                objs = []
                for i in range(self.PODS):
                    objs.append({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"p-{i}", "namespace": f"ns-{i % 50}",
                                     "uid": f"uid-{i}",
                                     "labels": {"app": f"app-{i % 200}",
                                                "pod-template-hash": "5d8f7c9b6"}},
                        "spec": {"nodeName": f"node-{i % 100 + 2}",
                                 "serviceAccountName": f"sa-{i % 200}"},
                        "status": {"podIP": f"198.19.{i // 250}.{i % 250 + 2}",
                                   "podIPs": [{"ip": f"198.19.{i // 250}.{i % 250 + 2}"}]}})
                kube.apply(objs)
                started = time.time()
                agent.start("--kube-api", kube.url, "--kube-token-file", kube.token_file,
                            "--kube-ca-file", kube.ca_file, wait_pods=[local])

                def ready():
                    try:
                        return agent.ready()[0] == 200
                    except OSError:
                        return False
                wait_until("ready", ready, timeout=120, interval=0.5)
                sync_s = time.time() - started
                pages = [r for r in kube.request_log()
                         if r["path"] == "/api/v1/pods" and "watch" not in r["query"]]
                self.assertGreaterEqual(len(pages), self.PODS // 500, "paginated list")
                self.assertTrue(all(r["query"].get("limit") == "500" for r in pages))
                # A change after the sync still arrives.
                kube.delete("Pod", "ns-7", "p-7")
                kube.apply({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": "late", "namespace": "backend"},
                            "spec": {"nodeName": "node-3", "serviceAccountName": "x"},
                            "status": {"podIP": "198.19.250.2"}})
                def workloads():
                    r = run(AMBITCTL, "workloads", "--admin-socket", agent.admin_socket,
                            check=False)
                    return r.stdout if "late" in r.stdout else None
                out = wait_until("late pod known", workloads, timeout=30)
                self.assertNotIn("ns-7/p-7 ", out)
                time.sleep(2)
                rss = rss_kib(agent.proc.pid)
                sys.stderr.write(f"\n10 000 pods via the API server: ready in {sync_s:.1f}s, "
                                 f"ambitd RSS {rss / 1024:.1f} MiB\n")
                self.assertLess(rss, 400 * 1024, f"ambitd RSS {rss} KiB at {self.PODS} pods")
            finally:
                kube.stop()


if __name__ == "__main__":
    unittest.main()
