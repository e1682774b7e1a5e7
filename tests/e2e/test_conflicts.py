"""End to end: configuration that conflicts with itself or with the node, and messages that must
say what is wrong.

- IpConflictTest: a second pod claiming an enrolled pod's address is reported (file, both pods),
  is not enrolled, shows as a conflict in `ambitctl workloads`, and traffic to the address still
  reaches the pod that held it first, with that pod's identity.
- NodeNetnsTest: a pod whose ambit.dev/netns names the node's own network namespace (PID 1's or
  ambitd's, under any path) is refused by namespace identity, with file, pod and field.
- MessagesTest: ambitctl run by an unprivileged user, a deeply nested YAML file and a TLS 1.2
  client on the HBONE port each get a message that names the real cause.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import CLIENT, SERVER, Topology, build_dir, run, wait_listening  # noqa: E402

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
NETNS_FIELD = "field metadata.annotations[ambit.dev/netns]"


def pod_yaml(name, netns_path, ips, node="node1", service_account="default"):
    lines = ["apiVersion: v1", "kind: Pod", "metadata:", f"  name: {name}",
             "  namespace: default", "  annotations:", f"    ambit.dev/netns: {netns_path}",
             "spec:", f"  serviceAccountName: {service_account}", f"  nodeName: {node}",
             "status:", "  podIPs:"] + [f"  - ip: {ip}" for ip in ips]
    return "\n".join(lines) + "\n"


def ctl_json(agent, *args):
    r = run(AMBITCTL, *args, "-o", "json", "--admin-socket", agent.admin_socket, check=False)
    if r.returncode != 0:
        raise AssertionError(f"ambitctl {' '.join(args)}: {r.stderr}")
    return json.loads(r.stdout)


def workload(agent, name):
    for w in ctl_json(agent, "workloads")["workloads"]:
        if w["namespace"] == "default" and w["name"] == name:
            return w
    raise AssertionError(f"no workload default/{name}")


def wait_for(predicate, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class IpConflictTest(unittest.TestCase):
    """a serves, c connects, both enrolled on node1; b (its own netns, another service account)
    then claims a's IPv4 address in a file that sorts before a's."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("ipc")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a")
        cls.b = t.add_pod("b", service_account="impostor")
        cls.c = t.add_pod("c")
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.a, cls.c])
        cls.agent.start(wait_pods=[cls.a, cls.c])
        cls.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/default valid")
        cls.agent.write_config("00-impostor.yaml", pod_yaml(
            "b", cls.b.netns_path, [cls.a.ip4, cls.b.ip6], service_account="impostor"))
        cls.agent.wait_log(f"address {cls.a.ip4} is also claimed by Pod default/a (pods.yaml)")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_conflict_is_reported_with_file_and_both_pods(self):
        line = next(l for l in self.agent.logs().splitlines()
                    if f"address {self.a.ip4} is also claimed" in l)
        self.assertIn("00-impostor.yaml", line)
        self.assertIn("Pod default/b", line)
        self.assertIn("Pod default/a (pods.yaml)", line)
        self.assertIn("first seen by this agent", line)  # no creationTimestamp: first sight
        self.assertNotIn("enrolled pod default/b ", self.agent.logs())

    def test_workloads_show_the_conflict(self):
        b = workload(self.agent, "b")
        self.assertEqual(b["status"], f"conflict: IP {self.a.ip4} held by default/a")
        self.assertEqual(b["role"], "refused")
        self.assertIsNone(b["redirect"])
        self.assertIn("default/a", b["error"])
        a = workload(self.agent, "a")
        self.assertEqual(a["status"], "ok")
        self.assertEqual(a["role"], "enrolled")
        table = run(AMBITCTL, "workloads", "--admin-socket", self.agent.admin_socket).stdout
        self.assertIn("STATUS", table.splitlines()[0].split())
        self.assertIn(f"conflict: IP {self.a.ip4} held by default/a", table)

    def test_traffic_to_the_address_still_reaches_its_holder(self):
        srv = self.a.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "8080", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        r = self.c.python(CLIENT, self.a.ip4, 8080, "ping")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["reply"], "echo:ping")
        srv.communicate(timeout=10)
        # Over mTLS, and a's side accepted it as a's own pod: the impostor's identity played no
        # part in either direction.
        self.agent.wait_log(f"inbound pod=default/a src={self.c.ip4} dst={self.a.ip4}:8080 "
                            f"mode=mtls peer=spiffe://cluster.local/ns/default/sa/default")
        self.assertNotIn("sa/impostor", self.agent.logs())


class NodeNetnsTest(unittest.TestCase):
    """Pods naming PID 1's network namespace, ambitd's own by /proc/PID and by a /var/run/netns
    alias; and one ordinary pod that must still be enrolled."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("nns")
        cls.topo.__enter__()
        t = cls.topo
        cls.ok = t.add_pod("ok")
        cls.alias = f"{t.prefix}-hostalias"
        cls.alias_path = f"/var/run/netns/{cls.alias}"
        # A bind mount of the namespace this test and ambitd share (the host's): another path
        # to ambitd's own namespace.
        run("ip", "netns", "attach", cls.alias, str(os.getpid()))
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.ok])
        cls.agent.write_config("host.yaml", pod_yaml("host", "/proc/1/ns/net", ["198.18.250.1"]))
        cls.agent.write_config("alias.yaml", pod_yaml("alias", cls.alias_path, ["198.18.250.2"]))
        cls.agent.start(wait_pods=[cls.ok])
        cls.agent.write_config("self.yaml", pod_yaml(
            "self", f"/proc/{cls.agent.proc.pid}/ns/net", ["198.18.250.3"]))
        cls.agent.wait_log("self.yaml: Pod default/self: ")

    @classmethod
    def tearDownClass(cls):
        try:
            cls.topo.close()
        finally:
            # Only removes the bind mount and its file; the host's namespace is untouched.
            run("ip", "netns", "del", cls.alias, check=False)

    def refusal(self, name):
        lines = [l for l in self.agent.logs().splitlines() if f": Pod default/{name}: " in l]
        self.assertEqual(len(lines), 1, f"refusal of {name} logged once: {lines}")
        return lines[0]

    def test_host_namespace_by_pid1_path(self):
        try:
            os.stat("/proc/1/ns/net")
        except PermissionError:
            # PID 1 is closed even to root here (a sandbox's non-dumpable init): ambitd cannot
            # open the path either, so the pod fails to enroll, and ambitd said why it could
            # not check PID 1 by identity.
            self.agent.wait_log("the network namespace of PID 1 cannot be identified")
            w = workload(self.agent, "host")
            self.assertNotEqual(w["role"], "enrolled")
            self.assertIn("/proc/1/ns/net", w["error"])
            return
        line = self.refusal("host")
        self.assertIn(f"host.yaml: Pod default/host: {NETNS_FIELD}: /proc/1/ns/net: ", line)
        self.assertIn("the host's network namespace (that of PID 1)", line)

    def test_own_namespace_by_alias_is_refused_by_identity(self):
        line = self.refusal("alias")
        self.assertIn(f"alias.yaml: Pod default/alias: {NETNS_FIELD}: {self.alias_path}: ", line)
        self.assertIn("ambitd's own network namespace", line)

    def test_agents_own_namespace(self):
        line = self.refusal("self")
        self.assertIn("ambitd's own network namespace", line)

    def test_workloads_show_refusals_and_the_rest_is_enrolled(self):
        for name in ("alias", "self"):
            w = workload(self.agent, name)
            self.assertEqual(w["role"], "refused", name)
            self.assertTrue(w["status"].startswith("refused:"), w)
            self.assertIn(NETNS_FIELD, w["error"])
            self.assertIsNone(w["redirect"])
        self.assertEqual(workload(self.agent, "ok")["role"], "enrolled")
        logs = self.agent.logs()
        for name in ("host", "alias", "self"):
            self.assertNotIn(f"enrolled pod default/{name} ", logs)

    def test_refusal_is_not_repeated_on_reload(self):
        before = self.agent.logs().count(": Pod default/alias: ")
        self.agent.write_config("unrelated.yaml", "apiVersion: example.com/v1\nkind: Unrelated\n"
                                "metadata:\n  name: x\n")
        self.agent.wait_log("kind Unrelated (apiVersion example.com/v1)")  # reloaded
        time.sleep(2.5)  # past the enrollment retry period too
        self.assertEqual(self.agent.logs().count(": Pod default/alias: "), before)


class MessagesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("msg")
        cls.topo.__enter__()
        t = cls.topo
        cls.a = t.add_pod("a")
        cls.c = t.add_pod("c")  # not enrolled: a plain client on the wire
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.a])
        cls.agent.start(wait_pods=[cls.a])
        cls.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/default valid")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_unprivileged_ambitctl_is_told_permission_denied(self):
        self.assertTrue(os.path.exists(self.agent.admin_socket))
        r = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", AMBITCTL,
                "workloads", "--admin-socket", self.agent.admin_socket, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("permission denied", r.stderr)
        self.assertIn(self.agent.admin_socket, r.stderr)
        self.assertNotIn("not running", r.stderr)
        # And root, on the same socket, gets its answer.
        self.assertEqual(workload(self.agent, "a")["role"], "enrolled")

    def test_deeply_nested_yaml_names_the_nesting_and_the_line(self):
        self.agent.write_config("deep.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n"
                                "  labels: " + "[" * 20000 + "]" * 20000 + "\n")
        self.agent.wait_log("deep.yaml:4:")
        line = next(l for l in self.agent.logs().splitlines() if "deep.yaml:4:" in l)
        self.assertIn("nesting too deep", line)
        self.assertNotIn("bad file", line)
        self.assertIsNone(self.agent.proc.poll(), "ambitd survived the file")
        self.assertEqual(workload(self.agent, "a")["role"], "enrolled")
        os.unlink(os.path.join(self.agent.config_dir, "deep.yaml"))

    def test_tls12_client_is_told_tls13_is_required(self):
        # openssl s_client, and Python's ssl capped at TLS 1.2: two real TLS 1.2 clients.
        r = self.c.run(["openssl", "s_client", "-tls1_2", "-connect", f"{self.a.ip4}:15008",
                        "-alpn", "h2"], in_cgroup=False, input="")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("alert protocol version", r.stdout + r.stderr)
        needle = f"src={self.c.ip4}:"
        wait_for(lambda: any(needle in l and "TLS 1.3 is required; the client offered TLS 1.2 "
                             "at most" in l for l in self.agent.logs().splitlines()),
                 "the tunnel's refusal of the openssl client")
        py = self.c.python(r"""
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.set_alpn_protocols(["h2"])
s = socket.create_connection((sys.argv[1], 15008), timeout=5)
try:
    ctx.wrap_socket(s).do_handshake()
    print("handshake completed")
except ssl.SSLError as e:
    print("refused:", e.reason)
""", self.a.ip4, in_cgroup=False)
        self.assertIn("refused: TLSV1_ALERT_PROTOCOL_VERSION", py.stdout, py.stderr)
        wait_for(lambda: sum("TLS 1.3 is required" in l
                             for l in self.agent.logs().splitlines()) >= 2,
                 "the tunnel's refusal of the Python client")
        for l in self.agent.logs().splitlines():
            if f"src={self.c.ip4}" in l and "session closed" in l:
                self.assertIn("TLS 1.3 is required; the client offered TLS 1.2 at most", l)
                self.assertNotIn("TLS_AES_128_GCM_SHA256", l)


if __name__ == "__main__":
    unittest.main()
