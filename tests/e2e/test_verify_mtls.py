"""End to end: `ambitctl verify mtls` in the two-node topology.

web (node1) and api (node2) are enrolled, each on its own ambitd; outsider (node1) is not, so its
bytes cross the wire in plaintext. The accounting is real: ambitd's tc programs on each pod's
eth0, real traffic (mesh HBONE between the tunnels, plaintext from a plain Python client), and
tcpdump on the wire between the nodes as the independent witness.
"""

import calendar
import json
import math
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import MULTI_SERVER  # noqa: E402
from test_peer_authn import peer_authn  # noqa: E402
from topology import Topology, build_dir, run  # noqa: E402

# Sends argv[3] bytes to argv[1]:argv[2], reads the echo; prints JSON.
ECHO_CLIENT = r"""
import json, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout=5)
    payload = b"AMBIT-PLAIN-MARKER-" + b"x" * size
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    print(json.dumps({"ok": got == payload, "bytes": len(got)}))
except OSError as e:
    print(json.dumps({"ok": False, "error": type(e).__name__}))
"""


def ambitctl(agent, *args):
    return run(str(build_dir() / "agent/cli/ambitctl"), *args, "--admin-socket",
               agent.admin_socket, check=False)


class VerifyMtlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("v")
        cls.topo.__enter__()
        t = cls.topo
        try:
            cls.web = t.add_pod("web", namespace="default", service_account="web", node="node1")
            cls.api = t.add_pod("api", namespace="backend", service_account="api", node="node2")
            cls.outsider = t.add_pod("outsider", namespace="default", node="node1")
            cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
            plain = cls.outsider.yaml().replace(
                f"    ambit.dev/netns: {cls.outsider.netns_path}\n", "")
            cls.pods_yaml = "---\n".join(p.yaml() for p in (cls.web, cls.api)) + "---\n" + plain
            for agent in (cls.n1, cls.n2):
                agent.write_config("pods.yaml", cls.pods_yaml)
            cls.n1.start(wait_pods=[cls.web])
            cls.n2.start(wait_pods=[cls.api])
            for agent, ident in ((cls.n1, "ns/default/sa/web"), (cls.n2, "ns/backend/sa/api")):
                agent.wait_log(f"certificate spiffe://cluster.local/{ident} valid")
            cls.server = cls.api.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, "9000",
                                        "9001", "9002"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, bufsize=0)
            line = os.read(cls.server.stdout.fileno(), 100)
            assert b"listening" in line, line
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def send(self, src, dst_ip, port, size, in_cgroup=True):
        r = src.python(ECHO_CLIENT, dst_ip, port, size, in_cgroup=in_cgroup)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def verify(self, agent, *args, want_rc=0):
        r = ambitctl(agent, "verify", "mtls", "-o", "json", *args)
        self.assertEqual(r.returncode, want_rc, r.stdout + r.stderr + agent.logs()[-2000:])
        return json.loads(r.stdout)

    @staticmethod
    def pod(doc, name):
        found = [p for p in doc["pods"] if p["pod"] == name]
        assert len(found) == 1, doc
        return found[0]

    def test_1_mesh_traffic_is_mtls_in_both_families_and_on_the_wire(self):
        pcap = os.path.join(self.topo.workdir, "wire.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap,
                                 f"host {self.web.ip4} or host {self.web.ip6}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)
        self.assertTrue(self.send(self.web, self.api.ip4, 9000, 200000)["ok"])
        self.assertTrue(self.send(self.web, self.api.ip6, 9000, 1000)["ok"])
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        seen = run("tcpdump", "-n", "-r", pcap, "-q", check=False).stdout
        # Neighbour discovery is ICMPv6, which the accounting leaves out as control traffic.
        lines = [l for l in seen.splitlines() if " IP" in l and "ICMP" not in l]
        self.assertTrue(lines, seen[-500:])
        for line in lines:
            self.assertRegex(line, r"\.15008[ :]", f"tcpdump saw non-HBONE: {line}")

        doc = self.verify(self.n1, "--pod", "default/web")
        self.assertFalse(doc["plaintextUnderStrict"])
        self.assertEqual([p["pod"] for p in doc["pods"]], ["default/web"])  # --pod filters
        web = self.pod(doc, "default/web")
        to_api = [f for f in web["flows"] if f["workload"] == "backend/api"]
        self.assertEqual({f["peer"] for f in to_api}, {self.api.ip4, self.api.ip6})
        for f in to_api:
            self.assertTrue(f["mtls"], f)
            self.assertEqual((f["port"], f["portIsLocal"], f["protocol"]), (15008, False, "tcp"))
            self.assertGreaterEqual(f["connectionsOut"], 1, f)
        v4 = [f for f in to_api if f["peer"] == self.api.ip4][0]
        # The 200 kB each way went encrypted: more than that crossed, counted as mTLS.
        self.assertGreater(v4["payloadOut"], 200000)
        self.assertGreater(v4["payloadIn"], 200000)
        self.assertEqual(web["plaintextBytes"], 0, web)
        self.assertIn("every byte between default/web and backend/api since ", "\n".join(
            web["verdicts"]))
        # The other end agrees: api's tunnel was dialled on 15008 by web.
        api = self.pod(self.verify(self.n2, "--pod", "backend/api"), "backend/api")
        from_web = [f for f in api["flows"] if f["workload"] == "default/web"]
        self.assertTrue(from_web and all(f["mtls"] and f["portIsLocal"] for f in from_web), api)
        # ambitctl bpf lists the programs and the map.
        bpf = json.loads(ambitctl(self.n1, "bpf", "-o", "json").stdout)
        attached = {p["name"]: p["attachedTo"] for p in bpf["programs"]}
        self.assertEqual(attached.get("ambit_wire_ingress"),
                         "clsact ingress of each enrolled pod's interfaces")
        maps = {m["name"]: m for m in bpf["maps"]}
        self.assertEqual(maps["ambit_wire"]["type"], "lru_percpu_hash")
        self.assertGreater(maps["ambit_wire"]["entries"], 0)
        # The table says the same for people.
        table = run(str(build_dir() / "agent/cli/ambitctl"), "verify", "mtls", "--admin-socket",
                    self.n1.admin_socket, check=False)
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn("was mTLS", table.stdout)
        self.assertIn("15008 (peer)", table.stdout)

    def test_2_outsider_plaintext_to_permissive_pod(self):
        self.assertTrue(self.send(self.outsider, self.api.ip4, 9001, 5000, in_cgroup=False)["ok"])
        doc = self.verify(self.n2, "--pod", "backend/api")
        api = self.pod(doc, "backend/api")
        plain = [f for f in api["flows"] if f["peer"] == self.outsider.ip4]
        self.assertEqual(len(plain), 1, api)
        f = plain[0]
        self.assertEqual((f["mtls"], f["port"], f["portIsLocal"], f["protocol"]),
                         (False, 9001, True, "tcp"))
        self.assertEqual(f["workload"], "default/outsider")
        self.assertEqual(f["mtlsMode"], "PERMISSIVE")
        self.assertEqual(f["verdict"], "plaintext")
        self.assertGreaterEqual(f["payloadIn"], 5000)
        self.assertGreaterEqual(f["payloadOut"], 5000)  # the app echoed it: delivered
        self.assertEqual(f["connectionsIn"], 1)
        self.assertGreater(api["plaintextBytes"], 10000)
        self.assertTrue(any("plaintext between backend/api and default/outsider on backend/api "
                            "port 9001/tcp" in v for v in api["verdicts"]), api["verdicts"])
        self.assertFalse(doc["plaintextUnderStrict"])

    def test_3_strict_exit_status_and_since(self):
        # Plaintext served while PERMISSIVE, then STRICT: the report over the whole history says
        # plaintext was answered where STRICT applies now, and exits 1.
        self.assertTrue(self.send(self.outsider, self.api.ip4, 9002, 100, in_cgroup=False)["ok"])
        self.verify(self.n2)  # folds that traffic into the current 10 s bucket
        self.n2.write_config("pa.yaml", peer_authn("strict", "backend", "STRICT"))
        deadline = time.time() + 15
        while self.send(self.outsider, self.api.ip4, 9002, 100, in_cgroup=False)["ok"]:
            self.assertLess(time.time(), deadline, "STRICT never applied")
            time.sleep(0.2)
        doc = self.verify(self.n2, want_rc=1)
        self.assertTrue(doc["plaintextUnderStrict"])
        api = self.pod(doc, "backend/api")
        f = [f for f in api["flows"] if f["peer"] == self.outsider.ip4 and f["port"] == 9002][0]
        self.assertEqual((f["verdict"], f["mtlsMode"]), ("plaintext-under-strict", "STRICT"))
        table = ambitctl(self.n2, "verify", "mtls")
        self.assertEqual(table.returncode, 1)
        self.assertIn("FAIL: plaintext was answered on a port where STRICT applies", table.stdout)

        # From the next bucket on, only refused attempts: counted as attempts, not as plaintext
        # that reached the app, and the exit status is 0.
        boundary = (math.floor(time.time() / 10) + 1) * 10
        time.sleep(boundary - time.time() + 1.2)  # --since counts whole seconds
        for _ in range(3):
            self.assertFalse(self.send(self.outsider, self.api.ip4, 9002, 100,
                                       in_cgroup=False)["ok"])
        since = max(1, math.floor(time.time() - boundary))
        doc = self.verify(self.n2, "--pod", "backend/api", "--since", f"{since}s")
        self.assertFalse(doc["plaintextUnderStrict"], doc)
        start = calendar.timegm(time.strptime(doc["windowStart"], "%Y-%m-%dT%H:%M:%SZ"))
        self.assertGreaterEqual(start, boundary)
        api = self.pod(doc, "backend/api")
        refused = [f for f in api["flows"] if f["peer"] == self.outsider.ip4]
        self.assertEqual(len(refused), 1, api)
        f = refused[0]
        self.assertEqual((f["verdict"], f["port"]), ("plaintext-refused", 9002))
        self.assertEqual(f["connectionsIn"], 3)
        self.assertEqual(f["payloadOut"], 0)
        self.assertGreaterEqual(f["resetsOut"], 3)
        self.assertTrue(any("3 plaintext connection attempt(s) from default/outsider" in v and
                            "refused under STRICT (backend/strict)" in v and
                            "no byte reached the app" in v for v in api["verdicts"]), api)
        # The 9001 traffic of before is outside the window.
        self.assertFalse([f for f in api["flows"] if f["port"] == 9001], api)
        self.n2.write_config("pa.yaml", "")

    def test_4_bad_requests_fail_with_a_message(self):
        r = ambitctl(self.n1, "verify", "mtls", "--since", "soon")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--since \"soon\": a positive duration", r.stderr)
        r = ambitctl(self.n1, "verify", "mtls", "--pod", "backend/api")
        self.assertEqual(r.returncode, 1)
        self.assertIn("pod backend/api is not enrolled on this node", r.stderr)
        r = ambitctl(self.n1, "verify", "mtls", "--pod", "Bad/Name!")
        self.assertEqual(r.returncode, 1)
        self.assertIn("VerifyMtlsRequest.pod", r.stderr)
        r = ambitctl(self.n1, "verify", "mtls", "--since", "2h")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no wire history before", r.stderr)

    def test_9_entries_go_with_the_pod(self):
        cookie = None
        for line in self.n1.logs().splitlines():
            if "pod default/web " in line and "netns_cookie=" in line:
                cookie = int(line.split("netns_cookie=")[1].split()[0])
        self.assertIsNotNone(cookie)
        pin = f"{self.n1.pin_root}/ambit_wire"

        def cookies():
            out = run("bpftool", "-j", "map", "dump", "pinned", pin).stdout
            return {e["formatted"]["key"]["netns_cookie"] for e in json.loads(out)}

        self.send(self.web, self.api.ip4, 9000, 100)
        self.assertIn(cookie, cookies())
        filters = run("ip", "netns", "exec", self.web.netns, "tc", "filter", "show", "dev", "eth0",
                      "ingress").stdout
        self.assertIn("handle 0xa3b1 ambit_wire_ingr", filters)
        self.n1.write_config("pods.yaml", self.pods_yaml.replace(self.web.yaml() + "---\n", ""))
        self.n1.wait_log("removed pod default/web")
        deadline = time.time() + 10
        while cookie in cookies():
            self.assertLess(time.time(), deadline, "ambit_wire kept the removed pod's entries")
            time.sleep(0.2)
        filters = run("ip", "netns", "exec", self.web.netns, "tc", "filter", "show", "dev", "eth0",
                      "ingress").stdout
        self.assertNotIn("ambit_wire", filters)
        doc = self.verify(self.n1)
        self.assertEqual([p["pod"] for p in doc["pods"]], [])

    def test_a_cleanup_removes_the_instances_filters_only(self):
        def filters(pod):
            return "".join(run("ip", "netns", "exec", pod.netns, "tc", "filter", "show", "dev",
                               "eth0", hook).stdout for hook in ("ingress", "egress"))

        # web back on node1 (test_9 removed it), so that node1's instance has filters too.
        self.n1.write_config("pods.yaml", self.pods_yaml)
        deadline = time.time() + 10
        while filters(self.web).count("handle 0xa3b1") < 2:
            self.assertLess(time.time(), deadline, filters(self.web))
            time.sleep(0.2)
        self.assertEqual(filters(self.api).count("handle 0xa3b1"), 2, filters(self.api))
        # node2's agent stops and its instance is cleaned up: api's namespace lives on.
        self.n2.stop()
        self.assertEqual(filters(self.api).count("handle 0xa3b1"), 2, "removed by a mere stop")
        r = run(*self.n2.argv("--cleanup"), check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout + r.stderr,
                         r"removed 2 wire-accounting filters in 1 network namespaces")
        self.assertNotIn("ambit_wire", filters(self.api))
        # node1's filters are another instance's: left in place.
        self.assertEqual(filters(self.web).count("handle 0xa3b1"), 2, filters(self.web))


if __name__ == "__main__":
    unittest.main()
