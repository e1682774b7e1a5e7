"""End to end: ambitctl against a running ambitd (issue 6, admin API and CLI).

One agent, two enrolled pods, a Service, a STRICT PeerAuthentication, a DENY policy, an AUDIT
policy (which the node tunnel cannot enforce: a load warning) and a rejected policy. Every command
is run in JSON form with its content checked against the topology, and in table form for its
headers; and against a socket where no agent runs.
"""

import ipaddress
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (ABI_VERSION, Topology, build_dir, deny_port_policy, run,  # noqa: E402
                      strict_peer_authentication)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")

POLICIES = deny_port_policy("backend", "no-9001", 9001) + """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-all
  namespace: backend
spec:
  selector:
    matchLabels:
      app: b
  action: AUDIT
  rules:
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bad-policy
  namespace: backend
spec:
  action: BOGUS
---
""" + strict_peer_authentication("backend")


class AdminTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("adm")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web")
        cls.b = t.add_pod("b", namespace="backend", service_account="api")
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.a, cls.b])
        cls.agent.write_config("services.yaml", f"""\
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: backend
spec:
  clusterIP: 198.18.{t.subnet}.200
  selector:
    app: b
  ports:
  - name: http
    port: 80
    targetPort: 9000
""")
        cls.agent.write_config("policies.yaml", POLICIES)
        cls.agent.write_config("namespaces.yaml", """\
apiVersion: v1
kind: Namespace
metadata:
  name: backend
  labels:
    istio.io/use-waypoint: backend-waypoint
""")
        cls.agent.start(wait_pods=[cls.a, cls.b])
        cls.agent.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def ctl(self, *args, ok=True):
        r = run(AMBITCTL, *args, "--admin-socket", self.agent.admin_socket, check=False)
        if ok:
            self.assertEqual(r.returncode, 0, f"ambitctl {' '.join(args)}: {r.stderr}")
        return r

    def json(self, *args):
        return json.loads(self.ctl(*args, "-o", "json").stdout)

    def workload(self, doc, namespace, name):
        for w in doc["workloads"]:
            if w["namespace"] == namespace and w["name"] == name:
                return w
        self.fail(f"no workload {namespace}/{name} in {doc}")

    def test_filters_and_wide(self):
        def names(doc, key="workloads"):
            return sorted(f"{w['namespace']}/{w['name']}" for w in doc[key])
        everything = names(self.json("workloads"))
        self.assertIn("default/a", everything)
        self.assertIn("backend/b", everything)
        self.assertEqual(names(self.json("workloads", "-A")), everything)
        self.assertEqual(names(self.json("workloads", "-n", "backend")),
                         [n for n in everything if n.startswith("backend/")])
        self.assertEqual(names(self.json("workloads", "--namespace=default")),
                         [n for n in everything if n.startswith("default/")])
        # An address in any spelling, v4 or v6, picks the one pod that has it.
        self.assertEqual(names(self.json("workloads", "--address", self.b.ip4)), ["backend/b"])
        self.assertEqual(names(self.json("workloads", "--address",
                                         ipaddress.ip_address(self.a.ip6).exploded)),
                         ["default/a"])
        self.assertEqual(self.ctl("workloads", "-n", "nowhere").stdout.splitlines()[0],
                         "No workloads in namespace nowhere in the configuration.")
        services = self.json("services", "-n", "backend")["services"]
        self.assertEqual([s["name"] for s in services], ["api"])
        self.assertEqual(self.json("services", "-n", "default")["services"], [])
        self.assertEqual(
            [s["name"] for s in self.json("services", "--address",
                                          f"198.18.{self.topo.subnet}.200")["services"]], ["api"])
        policies = self.json("policies", "-n", "backend")["policies"]
        self.assertTrue(policies)
        self.assertEqual({p["namespace"] for p in policies}, {"backend"})
        certs = self.json("certs", "-n", "backend")["certificates"]
        self.assertEqual([c["identity"] for c in certs], ["spiffe://cluster.local/ns/backend/sa/api"])
        # Certificates in the one format: RFC 3339 with milliseconds, serials as openssl's.
        self.assertRegex(certs[0]["notAfter"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertRegex(certs[0]["serial"], r"^([0-9A-F]{2})+$")
        # -o wide: the table's columns and more.
        narrow = self.ctl("workloads").stdout.splitlines()[0]
        wide = self.ctl("workloads", "-o", "wide").stdout.splitlines()[0]
        self.assertIn("MTLS POLICY", wide)
        self.assertNotIn("MTLS POLICY", narrow)
        wide_policies = self.ctl("policies", "-o", "wide").stdout.splitlines()[0]
        self.assertIn("SOURCE", wide_policies)
        # Bad selections are refused with the flag named.
        r = self.ctl("workloads", "-n", "x", "-A", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("exclude each other", r.stderr)
        r = self.ctl("workloads", "--address", "web", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--address 'web' is not an IP address", r.stderr)

    def test_version_asks_the_agent(self):
        doc = self.json("version")
        self.assertEqual(doc["agentVersion"], doc["clientVersion"])  # built together
        self.assertEqual(doc["agentSocket"], self.agent.admin_socket)
        # The environment names the agent when no flag does.
        r = run(AMBITCTL, "version", "-o", "json", check=False,
                env={**os.environ, "AMBIT_ADMIN_SOCKET": self.agent.admin_socket})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["agentVersion"], doc["clientVersion"])

    def test_workloads(self):
        doc = self.json("workloads")
        a = self.workload(doc, "default", "a")
        b = self.workload(doc, "backend", "b")
        self.assertEqual(a["ips"], [self.a.ip4, self.a.ip6])
        self.assertEqual(b["ips"], [self.b.ip4, self.b.ip6])
        self.assertEqual(a["identity"], "spiffe://cluster.local/ns/default/sa/web")
        self.assertEqual(b["identity"], "spiffe://cluster.local/ns/backend/sa/api")
        for w in (a, b):
            self.assertEqual(w["node"], "node1")
            self.assertEqual(w["role"], "enrolled")
            self.assertGreater(w["redirect"]["netnsCookie"], 0)
            for listener in ("outbound-v4", "outbound-v6", "inbound-plain-v4",
                             "inbound-plain-v6", "hbone-v4", "hbone-v6"):
                self.assertIn(listener, w["redirect"]["listeners"])
        self.assertNotEqual(a["redirect"]["slot"], b["redirect"]["slot"])
        self.assertEqual(a["mtls"], "PERMISSIVE")
        self.assertIsNone(a["mtlsPolicy"])
        self.assertEqual(b["mtls"], "STRICT")
        self.assertEqual(b["mtlsPolicy"], "backend/strict")
        self.assertEqual(b["waypoint"], "backend/backend-waypoint")  # the namespace's label
        self.assertIsNone(a["waypoint"])
        table = self.ctl("workloads").stdout
        header = table.splitlines()[0].split()
        for col in ("NAMESPACE", "POD", "IPS", "NODE", "IDENTITY", "ROLE", "MTLS", "WAYPOINT",
                    "REDIRECT"):
            self.assertIn(col, header)
        self.assertIn(self.b.ip4, table)

    def test_policies(self):
        doc = self.json("policies")
        by_name = {(p["kind"], p["namespace"], p["name"]): p for p in doc["policies"]}
        deny = by_name[("AuthorizationPolicy", "backend", "no-9001")]
        self.assertEqual(deny["action"], "DENY")
        self.assertEqual(deny["scope"], "namespace")
        self.assertFalse(deny["dryRun"])
        self.assertEqual(deny["warnings"], [])
        audit = by_name[("AuthorizationPolicy", "backend", "audit-all")]
        self.assertEqual(audit["action"], "AUDIT")
        self.assertEqual(audit["scope"], "selector {app=b}")
        self.assertTrue(any("not enforced by the node tunnel" in w for w in audit["warnings"]),
                        audit)
        pa = by_name[("PeerAuthentication", "backend", "strict")]
        self.assertEqual(pa["action"], "STRICT")
        self.assertEqual(pa["scope"], "namespace")
        self.assertNotIn(("AuthorizationPolicy", "backend", "bad-policy"), by_name)
        rejected = [r for r in doc["rejected"] if "bad-policy" in r["error"]]
        self.assertTrue(rejected, doc["rejected"])
        self.assertIn("BOGUS", rejected[0]["error"])
        self.assertEqual(rejected[0]["file"], "policies.yaml")
        table = self.ctl("policies").stdout
        for col in ("KIND", "NAMESPACE", "NAME", "SCOPE"):
            self.assertIn(col, table.splitlines()[0])
        self.assertIn("Rejected (not in force):", table)
        self.assertIn("bad-policy", table)
        self.assertRegex(table, r"Configuration generation \d+, enforced by the data plane")
        self.assertEqual(doc["generation"]["desired"], doc["generation"]["applied"])

    def test_check(self):
        # backend's namespace label binds b to a waypoint that does not exist: the tunnel refuses
        # traffic to b before any policy, and check says so (as `workloads` shows the binding).
        denied = self.json("check", "default/a", "backend/b:9001")
        self.assertEqual(denied["decision"], "deny")
        self.assertEqual(denied["policy"], "waypoint backend/backend-waypoint")
        self.assertIn("which has no pod (no Gateway backend/backend-waypoint in the configuration)",
                      denied["reason"])
        self.assertEqual(denied["waypoint"], "backend/backend-waypoint")
        self.assertEqual(denied["mtls"], {"mode": "STRICT", "plaintext": "reject",
                                          "refusedPlaintextSource": False})
        self.assertEqual([h["decision"] for h in denied["hops"]], ["deny", "not_reached"])
        v6 = self.json("check", "default/a", f"[{self.b.ip6}]:9000")
        self.assertEqual(v6["policy"], "waypoint backend/backend-waypoint")
        # default has no waypoint: b -> a is the node tunnel's L4 answer.
        allowed = self.json("check", "backend/b", f"{self.a.ip4}:9000")
        self.assertEqual(allowed["decision"], "allow")
        self.assertIsNone(allowed["policy"])
        self.assertIsNone(allowed["waypoint"])
        self.assertEqual([h["kind"] for h in allowed["hops"]], ["tunnel"])
        # The same shape as the offline checker's JSON, plus which configuration generation
        # decided and whether the data plane enforces it, and the hops on the way.
        self.assertLessEqual({"decision", "provider", "afterExtAuthzAllow", "policy", "reason",
                              "mtls", "generation"}, set(denied))
        g = denied["generation"]
        self.assertEqual(g["desired"], g["applied"])
        self.assertGreater(g["applied"], 0)
        self.assertFalse(g["failClosed"])
        table = self.ctl("check", "default/a", "backend/b:9001").stdout
        self.assertIn("decision: deny", table)
        self.assertIn("policy:   waypoint backend/backend-waypoint", table)
        table = self.ctl("check", "backend/b", "default/a:9000").stdout
        self.assertIn("decision: allow", table)
        self.assertIn("from spiffe://cluster.local/ns/backend/sa/api", table)
        # For scripts: --exit-code exits 1 on deny, 0 on allow.
        self.assertEqual(self.ctl("check", "default/a", "backend/b:9001", "--exit-code",
                                  ok=False).returncode, 1)
        self.assertEqual(self.ctl("check", "backend/b", "default/a:9000", "--exit-code",
                                  ok=False).returncode, 0)
        r = self.ctl("check", "default/nope", "backend/b:9001", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no pod default/nope", r.stderr)
        r = self.ctl("check", "default/a", "backend/b", ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is not TO:PORT", r.stderr)

    def test_bpf(self):
        doc = self.json("bpf")
        self.assertEqual(doc["pinRoot"], self.agent.pin_root)
        self.assertEqual(doc["abiVersion"], ABI_VERSION)
        # Where each program is attached: the cgroup hooks at the test's cgroup, sk_lookup in
        # the pods' network namespaces.
        attached = {p["name"]: p["attachedTo"] for p in doc["programs"]}
        self.assertEqual(attached["ambit_connect4"], f"cgroup {self.agent.cgroup}")
        self.assertEqual(attached["ambit_sk_lookup"], "netns of each enrolled pod")
        # Every drop reason, counted and explained, even at zero.
        self.assertIsNone(doc["dropsError"])
        drops = {d["reason"]: d for d in doc["drops"]}
        self.assertEqual(set(drops), {"connect_no_storage", "orig_dst_update_failed",
                                      "no_listener", "sk_assign_failed", "probe_update_failed"})
        for d in drops.values():
            self.assertGreaterEqual(d["count"], 0)
            self.assertTrue(d["meaning"] and d["program"], d)
        self.assertTrue(doc["programs"])
        for p in doc["programs"]:
            self.assertGreater(p["id"], 0)
            self.assertGreater(p["verifiedInsns"], 0)
        maps = {m["name"]: m for m in doc["maps"]}
        self.assertIn("ambit_pods", maps)
        self.assertEqual(maps["ambit_pods"]["entries"], 2)  # the two enrolled pods
        self.assertGreater(maps["ambit_pods"]["maxEntries"], 2)
        # A sockmap slot in use per inbound listener: plaintext and HBONE, IPv4 and IPv6, of
        # each pod.
        self.assertEqual(maps["ambit_listen_v2"]["entries"], 8)
        self.assertEqual(maps["ambit_listen_v2"]["type"], "sockmap")
        self.assertTrue(any(l["type"] == "netns" for l in doc["links"]), doc["links"])
        table = self.ctl("bpf").stdout
        self.assertIn("VERIFIED INSNS", table)
        self.assertIn("MAX ENTRIES", table)
        self.assertIn("Drops (the programs failed closed):", table)
        self.assertIn("no_listener", table)
        self.assertIn("MEANING", table)

    def test_services(self):
        doc = self.json("services")
        svc = [s for s in doc["services"] if s["name"] == "api"][0]
        self.assertEqual(svc["namespace"], "backend")
        self.assertEqual(svc["clusterIps"], [f"198.18.{self.topo.subnet}.200"])
        self.assertEqual(svc["ports"], ["80->9000/TCP"])
        self.assertEqual(svc["endpoints"], ["backend/b"])
        header = self.ctl("services").stdout.splitlines()[0]
        for col in ("NAMESPACE", "NAME", "CLUSTER IPS", "PORTS", "ENDPOINTS"):
            self.assertIn(col, header)

    def test_log_levels(self):
        levels = {l["component"]: l["level"] for l in self.json("log")["levels"]}
        self.assertEqual(levels["default"], "info")
        self.ctl("log", "--level", "debug", "--component", "authz")
        levels = {l["component"]: l["level"] for l in self.json("log")["levels"]}
        self.assertEqual(levels["authz"], "debug")
        self.assertEqual(levels["agent"], "info")
        self.agent.wait_log("log level of authz set to debug")
        self.ctl("log", "--level", "info", "--component", "authz")
        r = self.ctl("log", "--level", "loud", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a log level", r.stderr)
        # A misspelled component is refused, with the names that exist; nothing changes.
        r = self.ctl("log", "--level", "debug", "--component", "authzz", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("unknown log component 'authzz'", r.stderr)
        self.assertIn("authz", r.stderr.split("components:")[1])
        self.assertNotIn("authzz", {l["component"] for l in self.json("log")["levels"]})
        self.assertIn("COMPONENT", self.ctl("log").stdout.splitlines()[0])

    def test_config_dump(self):
        deadline = time.time() + 10
        while True:
            doc = json.loads(self.ctl("config-dump").stdout)
            ids = {c["identity"] for c in doc["certificates"]["certificates"]}
            if len(ids) == 2 or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(ids, {"spiffe://cluster.local/ns/default/sa/web",
                               "spiffe://cluster.local/ns/backend/sa/api"})
        self.assertEqual({w["name"] for w in doc["workloads"]}, {"a", "b"})
        self.assertIn("no-9001", {p["name"] for p in doc["policies"]["policies"]})
        self.assertEqual(doc["services"][0]["name"], "api")
        self.assertTrue(doc["bpf"]["programs"])
        self.assertTrue(doc["logLevels"])
        self.assertIsInstance(doc["connections"], list)  # the data plane answered

    def test_help_and_agent_not_running(self):
        missing = os.path.join(self.topo.workdir, "no-agent.sock")
        for cmd in (["workloads"], ["policies"], ["check", "default/a", "backend/b:80"], ["bpf"],
                    ["services"], ["log"], ["config-dump"], ["connections"]):
            h = run(AMBITCTL, *cmd[:1], "--help", check=False)
            self.assertEqual(h.returncode, 0, h.stderr)
            self.assertIn("Usage", h.stdout + h.stderr)
            r = run(AMBITCTL, *cmd, "--admin-socket", missing, check=False)
            self.assertEqual(r.returncode, 1, f"{cmd}: {r.stdout} {r.stderr}")
            self.assertIn("ambitd is not running here", r.stderr)


if __name__ == "__main__":
    unittest.main()
