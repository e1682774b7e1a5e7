"""End to end: what ambitd needs to run inside an ordinary pod (docs/ARCHITECTURE.md#processes).

- NetnsByIpTest: pods that name no network namespace (as the API server's pods do), enrolled by
  Istio's istio.io/dataplane-mode=ambient label on the pod or on its namespace, are found by their
  IP among the namespace files under --netns-dir (here /var/run/netns, where the topology's pods
  are) and carry traffic over mTLS; a pod whose IP no namespace holds stays un-enrolled with the
  reason in `ambitctl workloads` and the log, and is enrolled once its namespace appears; an IP
  held by two namespaces is an error naming both, never a guess.
- NodeNetnsByIpTest: ambitd running in a namespace of the test's ("the node's"): a labelled pod
  whose IP is the node's (a hostNetwork pod) is refused, never enrolled.
- HostProcTest: ambitd in a mount namespace of its own whose /proc/sys is read-only, as in a
  container: without --host-proc enrolling fails with the path named; with the real procfs
  mounted elsewhere and named by --host-proc, the pod is enrolled and traffic flows.
- BpffsContainerTest: with --bpffs on an empty tmpfs, ambitd in a container (a cgroup namespace of
  its own; or a mount namespace other than the host PID 1's) refuses to mount a bpffs of its own
  and says to mount the host's.
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
AMBIENT = "istio.io/dataplane-mode"


def labelled(pod, labels=None, ips=None):
    """The pod's YAML without the ambit.dev/netns annotation, with extra labels (and other IPs)."""
    lines = []
    for line in pod.yaml().splitlines():
        if "annotations:" in line or "ambit.dev/netns" in line:
            continue
        lines.append(line)
        if line == f"    app: {pod.name}":
            lines += [f"    {k}: {v}" for k, v in (labels or {}).items()]
    text = "\n".join(lines) + "\n"
    if ips is not None:
        head = text[:text.index("status:")]
        text = head + "status:\n  podIPs:\n" + "".join(f"  - ip: {ip}\n" for ip in ips)
    return text


def namespace_yaml(name, labels):
    return "\n".join(["apiVersion: v1", "kind: Namespace", "metadata:", f"  name: {name}",
                      "  labels:"] + [f"    {k}: {v}" for k, v in labels.items()]) + "\n"


def ctl_json(agent, *args):
    r = run(AMBITCTL, *args, "-o", "json", "--admin-socket", agent.admin_socket, check=False)
    if r.returncode != 0:
        raise AssertionError(f"ambitctl {' '.join(args)}: {r.stderr}")
    return json.loads(r.stdout)


def workload(agent, namespace, name):
    for w in ctl_json(agent, "workloads")["workloads"]:
        if w["namespace"] == namespace and w["name"] == name:
            return w
    raise AssertionError(f"no workload {namespace}/{name}")


def wait_for(predicate, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def exchange(server_pod, client_pod, port):
    """One request from client_pod to server_pod's IPv4 address; the server's view of it."""
    srv = server_pod.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", str(port), "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_listening(srv)
    r = client_pod.python(CLIENT, server_pod.ip4, port, "ping")
    if r.returncode != 0:
        srv.kill()
        raise AssertionError(f"client {client_pod.name} -> {server_pod.ip4}:{port}: {r.stderr}")
    out, _ = srv.communicate(timeout=10)
    return json.loads(r.stdout), json.loads(out.strip().splitlines()[-1])


def namespace_holding(name, ip):
    """A network namespace of the test's own whose (non-loopback) interface holds ip: a veth
    pair with both ends inside it (this kernel may lack the dummy device)."""
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")
    run("ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    run("ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "d0")
    run("ip", "-n", name, "link", "set", "d0", "up")


def start_wrapped(agent, wrapper, *extra):
    """Starts the agent's ambitd under `wrapper` (a list ending where ambitd's argv begins)."""
    agent.log = open(agent.log_path, "a")
    agent.proc = subprocess.Popen(wrapper + agent.argv(*extra), stdout=agent.log,
                                  stderr=subprocess.STDOUT)
    agent.topo.procs.append(agent.proc)
    return agent.proc


class NetnsByIpTest(unittest.TestCase):
    """a (labelled itself) serves, c (in a namespace labelled ambient) connects; ghost's IP is in
    no namespace until the test creates one; twin's IP is in two namespaces."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("nbi")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", namespace="default", service_account="web")
            cls.c = t.add_pod("c", namespace="frontend", service_account="client")
            cls.ghost_ip = f"198.18.{t.subnet}.240"
            cls.twin_ip = f"198.18.{t.subnet}.241"
            # Two namespaces of the test's own holding one address.
            cls.twins = [f"{t.prefix}-twin{i}" for i in (1, 2)]
            for ns in cls.twins:
                namespace_holding(ns, cls.twin_ip)
            cls.ghost_ns = f"{t.prefix}-ghost"
            cls.agent = t.add_agent()
            cls.agent.write_config("pods.yaml", "---\n".join([
                labelled(cls.a, {AMBIENT: "ambient"}),
                namespace_yaml("frontend", {AMBIENT: "ambient"}),
                labelled(cls.c),
                # Labelled, but its namespace is nowhere yet.
                labelled(cls.a, {AMBIENT: "ambient"}, ips=[cls.ghost_ip]).replace(
                    "name: a\n", "name: ghost\n"),
                labelled(cls.a, {AMBIENT: "ambient"}, ips=[cls.twin_ip]).replace(
                    "name: a\n", "name: twin\n"),
            ]))
            cls.agent.start(wait_pods=[cls.a, cls.c])
            cls.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.topo.close()
        finally:
            for ns in getattr(cls, "twins", []) + [getattr(cls, "ghost_ns", "")]:
                if ns:
                    run("ip", "netns", "del", ns, check=False)

    def test_pods_without_annotation_are_found_by_ip(self):
        logs = self.agent.logs()
        for pod, ns in ((self.a, "default"), (self.c, "frontend")):
            self.assertIn(f"enrolled pod {ns}/{pod.name} netns={pod.netns_path} (found by IP)",
                          logs)
            w = workload(self.agent, ns, pod.name)
            self.assertEqual(w["role"], "enrolled", w)
            self.assertEqual(w["status"], "ok", w)

    def test_traffic_between_pods_found_by_ip_is_mtls(self):
        reply, seen = exchange(self.a, self.c, 8080)
        self.assertEqual(reply["reply"], "echo:ping")
        self.assertEqual(seen["peer"], self.c.ip4)  # delivered with the client's own address
        self.agent.wait_log(f"inbound pod=default/a src={self.c.ip4} dst={self.a.ip4}:8080 "
                            f"mode=mtls peer=spiffe://cluster.local/ns/frontend/sa/client")

    def test_an_ip_held_by_two_namespaces_is_an_error_naming_both(self):
        def reported():
            return "network namespaces" in (workload(self.agent, "default", "twin").get("error")
                                            or "")
        wait_for(reported, "twin's error")
        w = workload(self.agent, "default", "twin")
        self.assertNotEqual(w["role"], "enrolled")
        for ns in self.twins:
            self.assertIn(f"/var/run/netns/{ns}", w["error"])
        self.assertIn("not guessing", w["error"])
        self.assertNotIn("enrolled pod default/twin ", self.agent.logs())
        self.assertIn(f"is held by 2 network namespaces", self.agent.logs())

    def test_a_pod_found_nowhere_waits_with_its_reason_then_enrolls(self):
        w = workload(self.agent, "default", "ghost")
        self.assertEqual(w["role"], "pending", w)
        self.assertIn(f"no network namespace under /var/run/netns holds IP {self.ghost_ip}",
                      w["error"])
        self.assertIn(f"holds IP {self.ghost_ip}", self.agent.logs())
        # Its namespace appears (as a CNI plugin would create it): the next scan finds it.
        namespace_holding(self.ghost_ns, self.ghost_ip)
        self.agent.wait_log(f"enrolled pod default/ghost netns=/var/run/netns/{self.ghost_ns} "
                            "(found by IP)", timeout=20)
        self.assertEqual(workload(self.agent, "default", "ghost")["role"], "enrolled")


class NodeNetnsByIpTest(unittest.TestCase):
    """ambitd runs in a namespace the test made ("the node's", nsenter: nothing else changes);
    a labelled pod claims the node's address."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("nni")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.ok = t.add_pod("ok")
            cls.node_ns = f"{t.prefix}-node"
            cls.node_ip = f"198.18.{t.subnet}.250"
            namespace_holding(cls.node_ns, cls.node_ip)
            cls.agent = t.add_agent()
            cls.agent.write_config("pods.yaml", "---\n".join([
                labelled(cls.ok, {AMBIENT: "ambient"}),
                labelled(cls.ok, {AMBIENT: "ambient"}, ips=[cls.node_ip]).replace(
                    "name: ok\n", "name: hostnet\n"),
            ]))
            start_wrapped(cls.agent, ["nsenter", f"--net=/var/run/netns/{cls.node_ns}"])
            cls.agent.wait_log("enrolled pod default/ok ")
            cls.agent.wait_log("Pod default/hostnet: ")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.topo.close()
        finally:
            if getattr(cls, "node_ns", None):
                run("ip", "netns", "del", cls.node_ns, check=False)

    def test_the_nodes_own_address_is_refused(self):
        line = next(l for l in self.agent.logs().splitlines() if "Pod default/hostnet: " in l)
        self.assertIn(f"IP {self.node_ip} is held by", line)
        self.assertIn("ambitd's own network namespace", line)
        self.assertIn("hostNetwork", line)
        w = workload(self.agent, "default", "hostnet")
        self.assertEqual(w["role"], "refused", w)
        self.assertIsNone(w["redirect"])
        self.assertNotIn("enrolled pod default/hostnet ", self.agent.logs())
        self.assertEqual(workload(self.agent, "default", "ok")["role"], "enrolled")


class HostProcTest(unittest.TestCase):
    """ambitd in its own mount namespace: /proc/sys read-only (as a container has it), the real
    procfs bind-mounted at <workdir>/hostproc."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("hpr")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", service_account="web")
            cls.c = t.add_pod("c", service_account="client")
            cls.host_proc = os.path.join(t.workdir, "hostproc")
            os.makedirs(cls.host_proc)
            cls.agent = t.add_agent()
            t.write_pods(cls.agent, [cls.a, cls.c])
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def container_like(self):
        # The mounts exist only in ambitd's private mount namespace and go with it.
        script = (f"mount --bind /proc {self.host_proc} && "
                  "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
                  'exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]

    def test_1_without_host_proc_the_read_only_path_is_named(self):
        start_wrapped(self.agent, self.container_like())
        self.agent.wait_log("enroll pod default/a ")
        line = next(l for l in self.agent.logs().splitlines() if "enroll pod default/a " in l)
        self.assertIn("write /proc/sys/net/ipv4/tcp_fwmark_accept in pod network namespace", line)
        self.assertIn("read-only", line)
        self.assertIn("--host-proc", line)
        self.assertNotIn("enrolled pod default/a ", self.agent.logs())
        w = workload(self.agent, "default", "a")
        self.assertIn("/proc/sys/net/ipv4/tcp_fwmark_accept", w["error"])
        self.agent.stop()

    def test_2_with_host_proc_pods_enroll_and_traffic_flows(self):
        start_wrapped(self.agent, self.container_like(), "--host-proc", self.host_proc)
        self.agent.wait_log("enrolled pod default/a ")
        self.agent.wait_log("enrolled pod default/c ")
        self.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
        self.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid")
        # The sysctls reached the pod's namespace (read from the host's side).
        for name in ("tcp_fwmark_accept", "fwmark_reflect"):
            value = run("ip", "netns", "exec", self.a.netns, "cat",
                        f"/proc/sys/net/ipv4/{name}").stdout.strip()
            self.assertEqual(value, "1", name)
        reply, seen = exchange(self.a, self.c, 8081)
        self.assertEqual(reply["reply"], "echo:ping")
        # Delivered with the client's own address: the fwmark return path works.
        self.assertEqual(seen["peer"], self.c.ip4)
        self.agent.wait_log(f"inbound pod=default/a src={self.c.ip4} dst={self.a.ip4}:8081 "
                            "mode=mtls peer=spiffe://cluster.local/ns/default/sa/client")


class BpffsContainerTest(unittest.TestCase):
    """--bpffs names an empty tmpfs in ambitd's own mount namespace."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("bfs")
        cls.topo.__enter__()
        cls.agent = cls.topo.add_agent()
        cls.bpffs = os.path.join(cls.topo.workdir, "bpffs")
        os.makedirs(cls.bpffs)

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def refused(self, unshare_flags, *extra):
        script = f'mount -t tmpfs none {self.bpffs} && exec "$@"'
        proc = start_wrapped(self.agent, ["unshare", "--mount", "--propagation", "private"] +
                             unshare_flags + ["sh", "-c", script, "sh"],
                             "--bpffs", self.bpffs, *extra)
        try:
            code = proc.wait(timeout=30)
        finally:
            self.agent.stop()
        self.assertEqual(code, 1, self.agent.logs()[-2000:])
        line = next(l for l in self.agent.logs().splitlines()[::-1] if "not starting" in l)
        self.assertIn(f"--bpffs {self.bpffs} is not a bpffs mount, and ambitd will not mount one",
                      line)
        self.assertIn("mount the host's /sys/fs/bpf", line)
        self.assertIn("hostPath", line)
        self.assertIn("HostToContainer", line)
        # Nothing of the instance was left behind.
        self.assertFalse(os.path.exists(self.agent.pin_root))
        return line

    def test_container_cgroup_namespace_is_refused(self):
        line = self.refused(["--cgroup"])
        self.assertIn("cgroup namespace other than the host's", line)

    def test_mount_namespace_other_than_the_host_init_is_refused(self):
        # A host procfs whose PID 1 is in the test's (the host's) mount namespace: ambitd, in a
        # mount namespace of its own, is not in it.
        fake = os.path.join(self.topo.workdir, "fakeproc")
        os.makedirs(os.path.join(fake, "1", "ns"), exist_ok=True)
        link = os.path.join(fake, "1", "ns", "mnt")
        if not os.path.islink(link):
            os.symlink(f"/proc/{os.getpid()}/ns/mnt", link)
        line = self.refused([], "--host-proc", fake)
        self.assertIn("its mount namespace is not that of the host's PID 1", line)


if __name__ == "__main__":
    unittest.main()
