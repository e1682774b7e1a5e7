"""End to end: pods enrolled through ZDS, ambitd in ztunnel's role (docs/ARCHITECTURE.md#zds).

The pods' YAML names no network namespace (no ambit.dev/netns) and --netns-dir is an empty
directory, so only ZDS can say where a pod is. tests/zds/fake_istio_cni.py stands in for
istio-cni's node agent (ambitd --zds-connect connects to it) and, in client mode, for a CNI
plug-in on ambitd's --zds-listen socket.

- IstioCniTest: two nodes (a on node1, b on node2), each ambitd connected to its own fake
  istio-cni. The snapshot hands both pods over; pods without the ambient label count as in the
  mesh (istio-cni sends only ambient pods; a has no label, b has it so that a's node knows b is
  in the mesh). A connection made right after the ack is captured:
  a -> b arrives with a's address, over HBONE only (tcpdump on the wire, no plaintext).
  `ambitctl workloads` says how the netns was found. A del removes the pod; the proxy's session
  dropped and a new snapshot without the pod removes it; a pod the configuration lacks is acked
  with an error naming it after --zds-ack-timeout.
- ZdsListenTest: the --zds-listen socket (mode 0600) driven as ambit-cni drives it: connect, read
  the hello, add, ack once captured; a pod the configuration has outside the mesh is acked at
  once. Hostile packets (no fd, two fds, a regular file, a socket, the node's own namespace,
  garbage, truncated, 10 000 adds, a reader that never reads its acks) get named errors, never
  crash ambitd and leak no descriptor (/proc/<pid>/fd).
"""

import json
import os
import socket
import stat
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "zds"))
import fake_istio_cni as zds  # noqa: E402
from test_faults import stop_capture  # noqa: E402
from topology import (CLIENT, SERVER, Topology, build_dir, fd_count, run,  # noqa: E402
                      wait_listening)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
TRUST = "spiffe://cluster.local"
MARKER = "AMBIT-ZDS-PLAINTEXT-7c2e"


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


def zds_yaml(pod, labels=None, ips=True):
    """The pod's YAML without ambit.dev/netns (only ZDS can say where it is)."""
    lines = [l for l in pod.yaml().splitlines() if "ambit.dev/netns" not in l]
    text = "\n".join(lines) + "\n"
    text = text.replace("  annotations:\nspec:\n", "spec:\n")  # none left
    if labels:
        extra = "".join(f"    {k}: {v}\n" for k, v in labels.items())
        text = text.replace(f"    app: {pod.name}\n", f"    app: {pod.name}\n{extra}")
    if not ips:
        text = text.split("status:\n")[0]
    return text


def workloads(agent):
    r = run(AMBITCTL, "workloads", "-o", "json", "--admin-socket", agent.admin_socket,
            check=False)
    assert r.returncode == 0, r.stderr
    return {f"{w['namespace']}/{w['name']}": w for w in json.loads(r.stdout)["workloads"]}


def enrolled(agent, key):
    w = workloads(agent).get(key)
    return w is not None and w.get("role") == "enrolled"


def netns_source(agent, key):
    w = workloads(agent).get(key) or {}
    return (w.get("redirect") or {}).get("netnsSource")


class IstioCniTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("z")
        cls.topo.__enter__()
        try:
            cls._set_up()
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def _set_up(cls):
        t = cls.topo
        cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        cls.n1, cls.n2 = t.add_agent("node1"), t.add_agent("node2")
        empty = os.path.join(t.workdir, "no-netns")
        os.makedirs(empty)
        # a has no ambient label: handed over by istio-cni, it is in the mesh all the same. b
        # carries it, as every ambient pod does: that is how a's node knows b is in the mesh.
        pods = zds_yaml(cls.a) + "---\n" + zds_yaml(cls.b, {"istio.io/dataplane-mode": "ambient"})
        cls.cni = {}
        for agent in (cls.n1, cls.n2):
            agent.write_config("pods.yaml", pods)
            path = os.path.join(t.workdir, f"ztunnel-{agent.node}.sock")
            cls.cni[agent.node] = zds.FakeIstioCni(path)
            agent.start("--netns-dir", empty, "--zds-connect", path, "--zds-ack-timeout", "2s")
            # One after the other: the first generates the CA both sign with.
            agent.wait_log("readiness on", 30)
        for agent, pod in ((cls.n1, cls.a), (cls.n2, cls.b)):
            fake = cls.cni[agent.node]
            try:
                fake.accept(timeout=40)
            except OSError as e:
                raise AssertionError(f"{agent.node}'s ambitd did not connect to istio-cni: "
                                     f"{e}\n{agent.logs()[-3000:]}")
            fake.pods[f"uid-{pod.name}"] = (pod.name, pod.namespace, pod.service_account,
                                          pod.netns_path)
            answers, snap = fake.send_snapshot()
            assert answers == {f"uid-{pod.name}": ""}, answers
            assert snap == "", snap
        cls.n1.wait_log(f"certificate {TRUST}/ns/default/sa/web valid", 30)
        cls.n2.wait_log(f"certificate {TRUST}/ns/backend/sa/api valid", 30)

    @classmethod
    def tearDownClass(cls):
        for fake in cls.cni.values():
            fake.close()
        cls.topo.close()

    def test_1_captured_at_ack_and_encrypted(self):
        self.assertTrue(enrolled(self.n1, "default/a"))
        self.assertTrue(enrolled(self.n2, "backend/b"))
        self.assertEqual(netns_source(self.n1, "default/a"), "ZDS from istio-cni")
        self.assertEqual(netns_source(self.n2, "backend/b"), "ZDS from istio-cni")
        self.assertIn("(ZDS from istio-cni)", self.n1.logs())
        pcap = os.path.join(self.topo.workdir, "zds.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap, "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)
        server = self.b.popen(["/usr/bin/python3", "-u", "-c", SERVER, "0.0.0.0", "8080"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(server)
        r = self.a.python(CLIENT, self.b.ip4, 8080, MARKER)
        self.assertEqual(r.returncode, 0, f"{r.stderr}\nnode1:\n{self.n1.logs()[-3000:]}\n"
                                          f"node2:\n{self.n2.logs()[-3000:]}")
        self.assertEqual(json.loads(r.stdout)["reply"], f"echo:{MARKER}")
        seen = json.loads(server.stdout.readline())
        self.assertEqual(seen["peer"], self.a.ip4)  # authorized, delivered with a's address
        lines, raw = stop_capture(dump, pcap)
        self.assertTrue(any(".15008" in l for l in lines), lines[:10])
        self.assertFalse(any(".8080" in l for l in lines), [l for l in lines if ".8080" in l])
        self.assertNotIn(MARKER.encode(), raw)

    def test_2_unknown_pod_acked_with_an_error_after_the_timeout(self):
        fake = self.cni["node1"]
        t0 = time.time()
        error = fake.pod_added("uid-ghost", "ghost", "default", self.a.netns_path, "web",
                               timeout=10)
        took = time.time() - t0
        self.assertIn("pod default/ghost (uid uid-ghost) is not in the configuration of node "
                      "node1", error)
        self.assertGreaterEqual(took, 1.9)
        self.assertLess(took, 6)
        fake.pods.pop("uid-ghost")
        self.assertEqual(fake.pod_deleted("uid-ghost"), "")

    def test_3_del_removes(self):
        fake = self.cni["node2"]
        self.assertEqual(fake.pod_deleted("uid-b"), "")
        wait_for("b removed", lambda: not enrolled(self.n2, "backend/b"), 10)
        self.n2.wait_log("removed pod backend/b")
        # Handed over again: enrolled again, acked once captured.
        self.assertEqual(fake.pod_added("uid-b", "b", "backend", self.b.netns_path, "api"), "")
        self.assertTrue(enrolled(self.n2, "backend/b"))

    def test_4_reconnect_with_a_snapshot_missing_a_pod_removes_it(self):
        fake = self.cni["node1"]
        self.assertTrue(enrolled(self.n1, "default/a"))
        fake.drop()
        fake.accept()  # ambitd reconnects (back-off from 100 ms)
        # Still enrolled while the new snapshot is being sent: no snapshot yet, nothing removed.
        self.assertTrue(enrolled(self.n1, "default/a"))
        saved = dict(fake.pods)
        fake.pods.clear()
        answers, snap = fake.send_snapshot()
        self.assertEqual(snap, "")
        wait_for("a removed", lambda: not enrolled(self.n1, "default/a"), 10)
        self.assertIn("snapshot no longer names pod default/a", self.n1.logs())
        # A keep after SnapshotSent is an error; a new add enrolls it again.
        self.assertIn("after snapshot_sent", fake.conn.keep("uid-a"))
        fake.pods.update(saved)
        self.assertEqual(fake.pod_added("uid-a", "a", "default", self.a.netns_path, "web"), "")
        self.assertTrue(enrolled(self.n1, "default/a"))
        wait_for("metrics", lambda: 'ambit_zds_requests_total{type="snapshot_sent",outcome="ok"}'
                 in self.n1.metrics(), 5)
        self.assertIn('ambit_zds_sessions{source="istio-cni"} 1', self.n1.metrics())


class ZdsListenTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("l")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.c = t.add_pod("c", namespace="default", service_account="web", node="node1")
            cls.d = t.add_pod("d", namespace="default", service_account="web", node="node1")
            cls.agent = t.add_agent("node1")
            empty = os.path.join(t.workdir, "no-netns")
            os.makedirs(empty)
            # c is in the mesh by its label, with no addresses in its object yet (the CNI is
            # assigning them); d is outside the mesh.
            cls.agent.write_config("pods.yaml", zds_yaml(
                cls.c, {"istio.io/dataplane-mode": "ambient"}, ips=False) + "---\n" + zds_yaml(
                    cls.d))
            cls.agent.start("--netns-dir", empty, "--zds-ack-timeout", "2s")
            cls.sock = os.path.join(cls.agent.run_dir, "zds.sock")
            wait_for("zds.sock", lambda: os.path.exists(cls.sock), 15)
            cls.agent.wait_log("ZDS: ambit-cni hands pods over at")
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def conn(self):
        return zds.ZdsConn.connect(self.sock, answer_timeout=10)

    def test_1_add_acked_once_captured(self):
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o600)
        c = self.conn()
        try:
            self.assertEqual(c.add("uid-c", "c", "default", self.c.netns_path), "")
        finally:
            c.close()
        w = workloads(self.agent)["default/c"]
        self.assertEqual(w["role"], "enrolled")
        self.assertEqual(w["redirect"]["netnsSource"], "ZDS from ambit-cni")
        # No podIPs in the object: the namespace's own addresses.
        self.assertIn(self.c.ip4, w["ips"])
        # d is outside the mesh: acked at once, not enrolled.
        c = self.conn()
        try:
            t0 = time.time()
            self.assertEqual(c.add("uid-d", "d", "default", self.d.netns_path), "")
            self.assertLess(time.time() - t0, 1.5)
        finally:
            c.close()
        self.assertNotEqual(workloads(self.agent)["default/d"]["role"], "enrolled")
        # A closed session removes nothing (incremental).
        time.sleep(0.3)
        self.assertTrue(enrolled(self.agent, "default/c"))

    def test_2_hostile_packets(self):
        pid = self.agent.proc.pid
        # Settle first (sessions of earlier tests closed), then count.
        time.sleep(0.5)
        base = fd_count(pid)
        c = self.conn()
        add = zds.add_request("uid-h", "d", "default")
        netns = os.open(self.d.netns_path, os.O_RDONLY)
        reg = open(os.path.join(self.topo.workdir, "regular"), "w+")
        a, b = socket.socketpair()
        own = os.open("/proc/self/ns/net", os.O_RDONLY)  # the node's, as ambitd's
        try:
            cases = [
                ("no fd", add, [], "add carries 0 descriptors"),
                ("two fds", add, [netns, netns], "add carries 2 descriptors"),
                ("regular file", add, [reg.fileno()], "not a network namespace"),
                ("socket", add, [a.fileno()], "not a network namespace"),
                ("node's own netns", add, [own], "refused"),
                ("garbage", b"\xff\xff\xff\xff\x0f", [], "undecodable"),
                ("truncated", b"\x0a" + b"\x00" * 3000, [], "longer than 1024 bytes"),
                ("del with fd", zds.del_request("x"), [netns], "only add may carry one"),
                ("no payload", b"", [netns], "no payload"),
            ]
            for name, data, fds, error in cases:
                got = c.request(data, fds)
                self.assertIn(error, got, name)
            # 10 000 adds of one uid: each replaces the last, nothing grows.
            for i in range(10000):
                c.send_raw(zds.add_request("uid-many", "d", "default"), [netns])
                self.assertEqual(c.read_ack(), "", i)
            self.assertEqual(c.delete("uid-many"), "")
            # Past the registry's bound: refused with a named error, then all removed again.
            refused = ""
            for i in range(520):
                got = c.request(zds.add_request(f"uid-n{i}", "d", "default"), [netns])
                if got:
                    refused = got
                    break
            self.assertIn("ZDS workloads already", refused)
            for j in range(i):
                self.assertEqual(c.delete(f"uid-n{j}"), "")
        finally:
            c.close()
            os.close(netns)
            os.close(own)
            reg.close()
            a.close()
            b.close()
        # A reader that never reads its acks is dropped; ambitd goes on.
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        slow.connect(self.sock)
        slow.setblocking(False)
        sent = 0
        deadline = time.time() + 20
        dropped = False
        while time.time() < deadline and sent < 200000:
            try:
                slow.send(zds.del_request("x"))
                sent += 1
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
        slow.close()
        self.assertTrue(dropped or "does not read its answers" in self.agent.logs(),
                        f"sent {sent}")
        self.assertIsNone(self.agent.proc.poll())
        # Every descriptor received went back.
        wait_for("descriptors back to the baseline", lambda: fd_count(pid) == base, 10)
        self.assertTrue(enrolled(self.agent, "default/c"))
        # Published with the heartbeat (every second).
        wait_for("sessions gauge back to 0",
                 lambda: 'ambit_zds_sessions{source="ambit-cni"} 0' in self.agent.metrics(), 5)
        metrics = self.agent.metrics()
        self.assertIn('ambit_zds_requests_total{type="invalid",outcome="invalid"}', metrics)
        self.assertIn('ambit_zds_requests_total{type="add",outcome="ok"}', metrics)


if __name__ == "__main__":
    unittest.main()
