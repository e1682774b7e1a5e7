"""End to end: the telemetry Istio users already chart (issue 18).

Two agents with --cluster-id test-cluster. node1 runs default/web-5d4f8b7c9-x2x7q, a pod of
Deployment web (ReplicaSet web-5d4f8b7c9 with its pod-template-hash, labels app=web,
version=v1); node2 runs backend/api-6b9f7c4d8-kq2zp, a pod of Deployment api (canonical name
from service.istio.io/canonical-name, no version label) behind Service backend/api, and
backend/db-0, a pod of StatefulSet db. node2 writes its access log with ztunnel's keys.

Real traffic through the Service over HBONE; both agents' /metrics are scraped and the full
Istio label set of each reporter is compared exactly; db is removed from the configuration and
its series must vanish from both agents; `ambitctl config-dump --format ztunnel` is parsed and
its key sets checked against tests/e2e/fixtures/ztunnel_config_dump_keys.json, written from
ztunnel's serialization.
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, build_dir, run, wait_listening  # noqa: E402
from test_telemetry import CLIENT, SERVER, parse_metrics, total  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/backend/sa/api"
CLUSTER = "test-cluster"
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "ztunnel_config_dump_keys.json")
TCP_FAMILIES = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")


def owned_pod_yaml(pod, generate_name, owner_kind, owner_name, labels):
    """The pod's YAML as the API server shows a controller's pod: generateName, an
    ownerReferences entry with controller: true, and `labels` instead of the topology's."""
    text = pod.yaml()
    text = text.replace(f"    app: {pod.name}\n",
                        "".join(f"    {k}: \"{v}\"\n" for k, v in labels.items()))
    meta = (f"  generateName: {generate_name}\n" if generate_name else "") + (
        "  ownerReferences:\n"
        "  - apiVersion: apps/v1\n"
        f"    kind: {owner_kind}\n"
        f"    name: {owner_name}\n"
        "    uid: 5c1f7d2e-0000-4000-8000-000000000001\n"
        "    controller: true\n"
        "    blockOwnerDeletion: true\n")
    return text.replace(f"  namespace: {pod.namespace}\n",
                        f"  namespace: {pod.namespace}\n{meta}", 1)


class IstioTelemetryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("itel")
        cls.topo.__enter__()
        t = cls.topo
        cls.web = t.add_pod("web-5d4f8b7c9-x2x7q", namespace="default", service_account="web",
                            node="node1")
        cls.api = t.add_pod("api-6b9f7c4d8-kq2zp", namespace="backend", service_account="api",
                            node="node2")
        cls.db = t.add_pod("db-0", namespace="backend", service_account="db", node="node2")
        cls.vip = f"198.18.{t.subnet}.200"
        cls.pod_yaml = {
            "web": owned_pod_yaml(cls.web, "web-5d4f8b7c9-", "ReplicaSet", "web-5d4f8b7c9",
                                  {"app": "web", "version": "v1",
                                   "pod-template-hash": "5d4f8b7c9"}),
            "api": owned_pod_yaml(cls.api, "api-6b9f7c4d8-", "ReplicaSet", "api-6b9f7c4d8",
                                  {"app": "api",
                                   "service.istio.io/canonical-name": "api-canonical",
                                   "pod-template-hash": "6b9f7c4d8"}),
            "db": owned_pod_yaml(cls.db, "db-", "StatefulSet", "db", {"app": "db"}),
        }
        service = f"""\
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: backend
spec:
  clusterIP: {cls.vip}
  selector:
    app: api
  ports:
  - name: tcp-api
    port: 80
    targetPort: 7000
"""
        policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-web
  namespace: backend
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/web"]
    to:
    - operation:
        ports: ["7000", "7100"]
"""
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", "---\n".join(cls.pod_yaml.values()))
            agent.write_config("services.yaml", service)
            agent.write_config("policies.yaml", policy)
        cls.n1.start("--cluster-id", CLUSTER, wait_pods=[cls.web])
        cls.n2.start("--cluster-id", CLUSTER, "--access-log-format", "ztunnel",
                     wait_pods=[cls.api, cls.db])
        cls.n1.wait_log(f"certificate {WEB} valid")
        cls.n2.wait_log(f"certificate {API} valid")
        cls.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/db valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def exchange(self, server_pod, port, host, host_port, n, m):
        """A connection from web to host:host_port (served by server_pod on port) moving n + 16
        bytes up and m down, closed; returns once both ends are done."""
        srv = server_pod.popen(["/usr/bin/python3", "-c", SERVER, str(port), "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            cli = self.web.popen(["/usr/bin/python3", "-c", CLIENT, host, str(host_port), str(n),
                                  str(m)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            line = cli.stdout.readline()
            self.assertEqual(line.split(), ["done", str(m)], cli.stderr.read() if not line else "")
            cli.communicate("close\n", timeout=30)
            self.assertEqual(cli.returncode, 0)
            srv.wait(timeout=30)
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()

    def series(self, agent, name, **want):
        """The label sets of `name`'s samples that include `want`, with their values."""
        return [(labels, v) for n, labels, v in parse_metrics(agent.metrics())
                if n == name and all(labels.get(k) == w for k, w in want.items())]

    def wait_closed(self, agent, labels, before):
        deadline = time.time() + 10
        while True:
            after = parse_metrics(agent.metrics())
            closed = sum(v for n, l, v in after if n == TCP_FAMILIES[1] and l == labels)
            closed -= sum(v for n, l, v in before if n == TCP_FAMILIES[1] and l == labels)
            if closed >= 1 or time.time() > deadline:
                return after
            time.sleep(0.1)

    def test_1_full_istio_label_set_on_both_reporters_and_ztunnel_access_log(self):
        n, m = 40000, 3000
        before1, before2 = parse_metrics(self.n1.metrics()), parse_metrics(self.n2.metrics())
        self.exchange(self.api, 7000, self.vip, 80, n, m)
        source = {
            "reporter": "source",
            "source_workload": "web",
            "source_canonical_service": "web",
            "source_canonical_revision": "v1",
            "source_workload_namespace": "default",
            "source_principal": WEB,
            "source_app": "web",
            "source_version": "v1",
            "source_cluster": CLUSTER,
            "destination_service": "api.backend.svc.cluster.local",
            "destination_service_namespace": "backend",
            "destination_service_name": "api",
            "destination_workload": "api",
            "destination_canonical_service": "api-canonical",
            "destination_canonical_revision": "latest",
            "destination_workload_namespace": "backend",
            "destination_principal": API,
            "destination_app": "api-canonical",
            "destination_version": "latest",
            "destination_cluster": CLUSTER,
            "request_protocol": "tcp",
            "connection_security_policy": "mutual_tls",
            "response_flags": "-",
        }
        destination = dict(source, reporter="destination")
        for agent, before, labels in ((self.n1, before1, source),
                                      (self.n2, before2, destination)):
            after = self.wait_closed(agent, labels, before)
            # Exactly this label set: no label missing, none extra, every value as Istio's.
            delta = {}
            for name in TCP_FAMILIES:
                now = [v for n_, l, v in after if n_ == name and l == labels]
                was = [v for n_, l, v in before if n_ == name and l == labels]
                self.assertEqual(len(now), 1, f"{name} {labels}: {[l for n_, l, _ in after if n_ == name]}")
                delta[name] = now[0] - (was[0] if was else 0)
            self.assertEqual(delta, {"istio_tcp_connections_opened_total": 1,
                                     "istio_tcp_connections_closed_total": 1,
                                     "istio_tcp_received_bytes_total": n + 16,
                                     "istio_tcp_sent_bytes_total": m}, labels["reporter"])

        # node2's access log line with ztunnel's keys, bytes from its own pod's point of view.
        deadline = time.time() + 10
        while True:
            lines = [l.split(" access: ", 1)[1] for l in self.n2.logs().splitlines()
                     if " access: connection complete " in l and "dst.addr=" in l
                     and f":7000 " in l]
            if lines or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(lines), 1, self.n2.logs()[-3000:])
        fields = dict(re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', lines[0]))
        fields = {k: json.loads(v) if v.startswith('"') else v for k, v in fields.items()}
        self.assertEqual(list(fields), [
            "src.addr", "src.workload", "src.namespace", "src.identity", "src.cluster",
            "dst.addr", "dst.service", "dst.workload", "dst.namespace", "dst.identity",
            "dst.cluster", "direction", "bytes_sent", "bytes_recv", "duration"])
        self.assertTrue(fields["src.addr"].startswith(f"{self.web.ip4}:"), fields)
        self.assertEqual(fields["src.workload"], "web-5d4f8b7c9-x2x7q")
        self.assertEqual(fields["src.namespace"], "default")
        self.assertEqual(fields["src.identity"], WEB)
        self.assertEqual(fields["src.cluster"], CLUSTER)
        self.assertEqual(fields["dst.addr"], f"{self.api.ip4}:7000")
        self.assertEqual(fields["dst.service"], "api.backend.svc.cluster.local")
        self.assertEqual(fields["dst.workload"], "api-6b9f7c4d8-kq2zp")
        self.assertEqual(fields["dst.namespace"], "backend")
        self.assertEqual(fields["dst.identity"], API)
        self.assertEqual(fields["dst.cluster"], CLUSTER)
        self.assertEqual(fields["direction"], "inbound")
        # The destination's pod sent the response and received the request.
        self.assertEqual(int(fields["bytes_sent"]), m)
        self.assertEqual(int(fields["bytes_recv"]), n + 16)
        self.assertRegex(fields["duration"], r"^\d+ms$")

    def test_2_config_dump_in_ztunnel_layout(self):
        r = run(AMBITCTL, "--admin-socket", self.n1.admin_socket, "config-dump", "--format",
                "ztunnel", check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("PRIVATE KEY", r.stdout)
        dump = json.loads(r.stdout)
        with open(FIXTURE) as f:
            keys = json.load(f)

        def check(kind, obj):
            spec = keys[kind]
            self.assertIsInstance(obj, dict, kind)
            missing = set(spec["required"]) - set(obj)
            extra = set(obj) - set(spec["required"]) - set(spec["optional"])
            self.assertFalse(missing, f"{kind} lacks {missing}: {obj}")
            self.assertFalse(extra, f"{kind} has keys ztunnel does not: {extra}")

        check("top", dump)
        check("version", dump["version"])
        for e, values in keys["enums"].items():
            kind, field = e.split(".")
            items = dump[kind + "s"] if kind + "s" in dump else []
            for item in items:
                self.assertIn(item[field], values, f"{kind}.{field}")
        workloads = {w["name"]: w for w in dump["workloads"]}
        self.assertEqual(set(workloads), {"web-5d4f8b7c9-x2x7q", "api-6b9f7c4d8-kq2zp", "db-0"})
        for w in dump["workloads"]:
            check("workload", w)
            if "waypoint" in w:
                check("gatewayAddress", w["waypoint"])
        web = workloads["web-5d4f8b7c9-x2x7q"]
        self.assertEqual(web["uid"], f"{CLUSTER}//Pod/default/web-5d4f8b7c9-x2x7q")
        self.assertEqual(web["workloadIps"], [self.web.ip4, self.web.ip6])
        self.assertEqual(web["workloadName"], "web")
        self.assertEqual(web["canonicalName"], "web")
        self.assertEqual(web["canonicalRevision"], "v1")
        self.assertEqual(web["clusterId"], CLUSTER)
        self.assertEqual(web["trustDomain"], "cluster.local")
        self.assertEqual(web["serviceAccount"], "web")
        self.assertEqual(web["node"], "node1")
        self.assertEqual(web["protocol"], "HBONE")
        api = workloads["api-6b9f7c4d8-kq2zp"]
        self.assertEqual(api["workloadName"], "api")
        self.assertEqual(api["canonicalName"], "api-canonical")
        self.assertEqual(api["canonicalRevision"], "latest")
        self.assertEqual(api["services"], ["backend/api.backend.svc.cluster.local"])
        self.assertEqual(workloads["db-0"]["workloadName"], "db")

        self.assertEqual(len(dump["services"]), 1)
        svc = dump["services"][0]
        check("service", svc)
        self.assertEqual(svc["hostname"], "api.backend.svc.cluster.local")
        self.assertEqual(svc["vips"], [f"/{self.vip}"])
        self.assertEqual(svc["ports"], {"80": 7000})
        self.assertEqual(list(svc["endpoints"]), [api["uid"]])
        for e in svc["endpoints"].values():
            check("endpoint", e)

        policies = {f'{p["namespace"]}/{p["name"]}': p for p in dump["policies"]}
        self.assertIn("backend/allow-web", policies)
        for p in dump["policies"]:
            check("policy", p)
            for rule in p["rules"]:
                for clause in rule:
                    for match in clause:
                        check("rbacMatch", match)
        allow = policies["backend/allow-web"]
        self.assertEqual((allow["scope"], allow["action"], allow["dryRun"]),
                         ("Namespace", "Allow", False))
        self.assertEqual(allow["rules"], [[
            [{"principals": [{"Exact": "cluster.local/ns/default/sa/web"}]}],
            [{"destinationPorts": [7000, 7100]}]]])

        certs = {c["identity"]: c for c in dump["certificates"]}
        self.assertIn(WEB, certs)
        for c in dump["certificates"]:
            check("certificate", c)
            for cert in c["certChain"] + c["rootCerts"]:
                check("cert", cert)
        self.assertEqual(certs[WEB]["state"], "Available")
        self.assertEqual(len(certs[WEB]["certChain"]), 1)
        self.assertTrue(certs[WEB]["rootCerts"])

        # Another layout is refused with a message naming the choices.
        r = run(AMBITCTL, "--admin-socket", self.n1.admin_socket, "config-dump", "--format",
                "envoy", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--format must be ambit or ztunnel", r.stderr)

    def test_3_series_of_a_removed_workload_vanish(self):
        self.exchange(self.db, 7100, self.db.ip4, 7100, 100, 100)
        self.exchange(self.api, 7000, self.vip, 80, 100, 100)
        for agent in (self.n1, self.n2):
            deadline = time.time() + 10
            while not self.series(agent, TCP_FAMILIES[1], destination_workload="db"):
                self.assertLess(time.time(), deadline, agent.metrics())
                time.sleep(0.1)
        # db-0 leaves the configuration (its StatefulSet scaled to zero).
        for agent in (self.n1, self.n2):
            agent.write_config("pods.yaml", "---\n".join(
                self.pod_yaml[k] for k in ("web", "api")))
        for agent in (self.n1, self.n2):
            deadline = time.time() + 15
            while True:
                left = [l for n, l, _ in parse_metrics(agent.metrics())
                        if n.startswith("istio_tcp_") and (
                            l.get("destination_workload") == "db"
                            or l.get("source_workload") == "db")]
                if not left:
                    break
                self.assertLess(time.time(), deadline, f"stale series stayed: {left}")
                time.sleep(0.2)
            # The workloads still configured keep theirs.
            self.assertTrue(self.series(agent, TCP_FAMILIES[0], destination_workload="api"))


if __name__ == "__main__":
    unittest.main()
