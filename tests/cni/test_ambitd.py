"""ambit-cni with the real ambitd, on the e2e topology (tests/e2e/topology.py): the CNI chain
(Debian's bridge + host-local, then ambit-cni) runs through libcni.py inside the topology's wire
namespace, which plays the node (its br0 is the pods' bridge), so pods get their interface and
address the way a runtime gives them; ambitd runs as in every e2e test.

- CaptureTest: ambitd serving ZDS on its default socket (<run dir>/zds.sock), --netns-dir an
  empty directory so that nothing but the plug-in can hand it a namespace: a pod created through
  the chain is captured before ADD returns (its first connection, made the moment ADD returned,
  crosses the wire as HBONE only: tcpdump sees 15008 and no plaintext), and DEL removes it; once
  ambitd has stopped, ADD fails at once (try again later) and the pod gets no interface.
- PreexistingPodTest: pods created before ambitd starts, by the chain without ambit-cni, are
  found at start-up by their IP under --netns-dir and carry traffic over mTLS; with ambitd down,
  ADD through the full chain fails (try again later) and the runtime's clean-up leaves the pod
  without its interface: it does not start.
Root: namespaces, BPF, cgroups; everything is removed by the topology, also on failure."""

import json
import os
import shutil
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

import libcni  # noqa: E402
from test_cni import PLUGINS, ambit_cni_binary, pod_addresses  # noqa: E402
from test_podnet import AMBIENT, exchange, labelled, workload  # noqa: E402
from topology import CLIENT, SERVER, Pod, Topology, run, wait_listening  # noqa: E402


def pod_yaml(pod):
    """The pod as the API server has it: labelled into the mesh, its uid, no namespace path."""
    return labelled(pod, {AMBIENT: "ambient"}).replace(
        "metadata:\n", f"metadata:\n  uid: uid-{pod.name}\n", 1)


class ChainNode:
    """The topology's wire namespace as the node the runtime runs the CNI chain in."""

    def __init__(self, topo):
        self.topo = topo
        self.bin = os.path.join(topo.workdir, "cni-bin")
        os.makedirs(self.bin, exist_ok=True)
        shutil.copy2(ambit_cni_binary(), os.path.join(self.bin, "ambit-cni"))
        self.ipam_dir = os.path.join(topo.workdir, "ipam")
        self.runtime = libcni.Runtime([self.bin, PLUGINS],
                                      node_netns=f"/var/run/netns/{topo.wire}")

    def conflist(self, zds_socket=None, timeout=5):
        plugins = [{"type": "bridge", "bridge": "br0", "isGateway": False, "ipMasq": False,
                    "ipam": {"type": "host-local",
                             "subnet": f"198.18.{self.topo.subnet}.0/24",
                             "dataDir": self.ipam_dir}}]
        if zds_socket is not None:
            plugins.append({"type": "ambit-cni", "zdsSocket": zds_socket, "timeout": timeout})
        return {"cniVersion": "1.0.0", "name": f"{self.topo.prefix}-net", "plugins": plugins}

    def new_pod(self, name, namespace="default", service_account="default"):
        """A pod object of the topology (cgroup, address) whose namespace exists but has no
        interface yet: the chain gives it one."""
        t = self.topo
        pod = Pod(t, name, len(t.pods) + 2, namespace, service_account, "node1")
        run("ip", "netns", "add", pod.netns)
        t.pods[name] = pod
        run("ip", "-n", pod.netns, "link", "set", "lo", "up")
        os.makedirs(pod.cgroup, exist_ok=True)
        return pod

    def args(self, pod):
        # IP= (host-local's CNI_ARGS key) pins the address the configuration gives the pod.
        return libcni.pod_args(pod.namespace, pod.name, f"uid-{pod.name}") + f";IP={pod.ip4}"

    def add(self, pod, conflist):
        return self.runtime.add(conflist, f"sandbox-{pod.name}", pod.netns_path, self.args(pod))


class CaptureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("cnc")
        cls.topo.__enter__()
        try:
            cls.node = ChainNode(cls.topo)
            cls.a = cls.node.new_pod("a", service_account="web")
            cls.b = cls.node.new_pod("b", service_account="client")
            cls.agent = cls.topo.add_agent()
            cls.agent.write_config("pods.yaml", "---\n".join(pod_yaml(p) for p in (cls.a, cls.b)))
            no_netns = os.path.join(cls.topo.workdir, "no-netns")
            os.makedirs(no_netns)
            cls.agent.start("--netns-dir", no_netns)
            cls.socket = os.path.join(cls.agent.run_dir, "zds.sock")
            cls.agent.wait_log("ZDS: ambit-cni hands pods over at")
            cls.conflist = cls.node.conflist(zds_socket=cls.socket, timeout=10)
            cls.node.add(cls.a, cls.conflist)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_pod_is_captured_before_add_returns(self):
        marker = "AMBIT-CNI-MARKER-5d1e"
        srv = self.a.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "8080", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        pcap = os.path.join(self.topo.workdir, "wire.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap,
                                 f"host {self.a.ip4} and host {self.b.ip4}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)  # tcpdump needs a moment before it captures
        result = self.node.add(self.b, self.conflist)
        # The moment ADD returned, as the runtime would start the pod's containers.
        r = self.b.python(CLIENT, self.a.ip4, 8080, marker)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["reply"], f"echo:{marker}")
        out, _ = srv.communicate(timeout=10)
        self.assertEqual(json.loads(out.strip().splitlines()[-1])["peer"], self.b.ip4)
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        with open(pcap, "rb") as f:
            raw = f.read()
        lines = [l for l in run("tcpdump", "-n", "-r", pcap, "-q").stdout.splitlines()
                 if " IP " in l]
        self.assertTrue(lines, "nothing captured")
        for line in lines:
            self.assertRegex(line, r"\.15008[ :]", f"non-HBONE packet on the wire: {line}")
        self.assertNotIn(marker.encode(), raw)
        logs = self.agent.logs()
        self.assertIn("handed over pod default/b uid=uid-b", logs)
        self.assertNotIn("(found by IP)", logs)
        self.agent.wait_log(f"inbound pod=default/a src={self.b.ip4} dst={self.a.ip4}:8080 "
                            f"mode=mtls peer=spiffe://cluster.local/ns/default/sa/client")
        # DEL: ambitd hears the pod is gone; the chain's clean-up follows.
        self.node.runtime.delete(self.conflist, "sandbox-b", self.b.netns_path,
                                 self.node.args(self.b), result)
        self.agent.wait_log("removed pod default/b")

    def test_then_add_fails_once_ambitd_stopped(self):
        # Runs after the capture test (name order): ambitd stops; its socket is gone or refuses.
        self.agent.stop()
        pod = self.node.new_pod("c")
        start = time.monotonic()
        with self.assertRaises(libcni.CniError) as ctx:
            self.node.add(pod, self.conflist)
        self.assertLess(time.monotonic() - start, 10, "ADD waited although nobody listens")
        err = ctx.exception
        self.assertEqual(err.plugin, "ambit-cni")
        self.assertEqual(err.error["code"], 11, err.error)
        self.assertIn(f"zdsSocket: {self.socket}: connect", err.error["msg"])
        self.assertNotIn(pod.ip4, pod_addresses(pod.netns))


class PreexistingPodTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("cnp")
        cls.topo.__enter__()
        try:
            cls.node = ChainNode(cls.topo)
            plain = cls.node.conflist()  # the chain before ambit was installed
            cls.a = cls.node.new_pod("a", service_account="web")
            cls.c = cls.node.new_pod("c", service_account="client")
            for pod in (cls.a, cls.c):
                result = cls.node.add(pod, plain)
                if result["ips"][0]["address"] != f"{pod.ip4}/24":
                    raise AssertionError(f"host-local gave {result}, not {pod.ip4}")
            cls.agent = cls.topo.add_agent()
            cls.agent.write_config("pods.yaml", "---\n".join(
                labelled(p, {AMBIENT: "ambient"}) for p in (cls.a, cls.c)))
            cls.agent.start(wait_pods=[cls.a, cls.c])
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_pods_from_before_are_found_by_ip_and_use_mtls(self):
        logs = self.agent.logs()
        for pod in (self.a, self.c):
            self.assertIn(f"enrolled pod default/{pod.name} netns={pod.netns_path} (found by IP)",
                          logs)
            self.assertEqual(workload(self.agent, "default", pod.name)["role"], "enrolled")
        reply, seen = exchange(self.a, self.c, 8080)
        self.assertEqual(reply["reply"], "echo:ping")
        self.assertEqual(seen["peer"], self.c.ip4)
        self.agent.wait_log(f"inbound pod=default/a src={self.c.ip4} dst={self.a.ip4}:8080 "
                            f"mode=mtls peer=spiffe://cluster.local/ns/default/sa/client")

    def test_add_fails_while_ambitd_is_not_there(self):
        # The full chain, pointed at a socket no ambitd serves (this one never listened; the
        # same as an agent that is down).
        socket = os.path.join(self.agent.run_dir, "down-zds.sock")
        pod = self.node.new_pod("late")
        with self.assertRaises(libcni.CniError) as ctx:
            self.node.add(pod, self.node.conflist(zds_socket=socket, timeout=2))
        err = ctx.exception
        self.assertEqual(err.plugin, "ambit-cni")
        self.assertEqual(err.error["code"], 11, err.error)
        self.assertIn(f"zdsSocket: {socket}", err.error["msg"])
        # The runtime undid the bridge's work: no interface, no lease; the sandbox never runs.
        self.assertNotIn(pod.ip4, pod_addresses(pod.netns))
        links = json.loads(run("ip", "-n", pod.netns, "-j", "link", "show").stdout)
        self.assertEqual([l["ifname"] for l in links], ["lo"])
        leases = os.listdir(os.path.join(self.node.ipam_dir, f"{self.topo.prefix}-net"))
        self.assertNotIn(pod.ip4, leases)


if __name__ == "__main__":
    unittest.main()
