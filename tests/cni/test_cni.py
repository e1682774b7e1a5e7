"""ambit-cni as a runtime runs it: Debian's containernetworking-plugins (bridge + host-local),
then ambit-cni, chained in one network configuration list and executed by libcni.py (the
stand-in for containerd's/CRI-O's libcni) inside a network namespace the test creates as the
"node" (the bridge is made there, never in the host namespace), for pods whose namespaces the
test creates under /var/run/netns/<prefix>-*. ambitd's side is zds_peer.py, scripted per test.
Root: creates namespaces. Everything is removed in tearDown/tearDownClass, also on failure."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import libcni
import zds_peer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins
PREFIX = f"ambitcni{os.getpid()}"
SUBNET = "198.18.200.0/24"


def build_dir():
    return os.environ.get("AMBIT_BUILD_DIR", os.path.join(ROOT, "build"))


def ambit_cni_binary():
    path = os.path.join(build_dir(), "agent", "main", "ambit-cni")
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{path} is missing: build the ambit-cni target first")
    return path


def require_root():
    if os.geteuid() != 0:
        raise AssertionError("needs root (network namespaces); run as root")


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def netns_path(name):
    return f"/var/run/netns/{name}"


class Node:
    """The node: a network namespace where the plug-ins run, a CNI bin dir with ambit-cni and
    the reference plug-ins on CNI_PATH, and the ZDS peer's socket."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="ambit-cni-test-")
        self.name = f"{PREFIX}-node"
        self.pods = []
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        self.bin = os.path.join(self.tmp, "bin")
        os.mkdir(self.bin)
        shutil.copy2(ambit_cni_binary(), os.path.join(self.bin, "ambit-cni"))
        self.ipam_dir = os.path.join(self.tmp, "ipam")
        self.socket = os.path.join(self.tmp, "zds.sock")
        self.runtime = libcni.Runtime([self.bin, PLUGINS], node_netns=netns_path(self.name))
        self.peer = None

    def start_peer(self):
        self.peer = zds_peer.ZdsPeer(self.socket)
        return self.peer

    def stop_peer(self):
        if self.peer is not None:
            self.peer.close()
            self.peer = None

    def conflist(self, version="1.0.0", timeout=3, socket=None, **ambit_keys):
        ambit = {"type": "ambit-cni", "zdsSocket": socket or self.socket, "timeout": timeout}
        ambit.update(ambit_keys)
        return {
            "cniVersion": version, "name": f"{PREFIX}-net",
            "plugins": [
                {"type": "bridge", "bridge": "cni-ambit0", "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": self.ipam_dir}},
                ambit,
            ],
        }

    def new_pod(self):
        name = f"{PREFIX}-p{len(self.pods)}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        return name

    def close(self):
        self.stop_peer()
        for p in self.pods:
            sh("ip", "netns", "del", p, check=False)
        sh("ip", "netns", "del", self.name, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def pod_addresses(pod):
    out = sh("ip", "-n", pod, "-j", "addr", "show").stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("family") == "inet"]


def check_result_shape(test, result, version):
    """The result types of the spec for each version: 1.0.0 without ips[].version, the older
    ones with it."""
    test.assertEqual(result["cniVersion"], version)
    test.assertLessEqual(set(result), {"cniVersion", "interfaces", "ips", "routes", "dns"})
    test.assertTrue(result["ips"])
    for ip in result["ips"]:
        test.assertIn("address", ip)
        if version == "1.0.0":
            test.assertNotIn("version", ip)
        else:
            test.assertEqual(ip["version"], "4")
    for iface in result.get("interfaces", []):
        test.assertIn("name", iface)


class ChainTest(unittest.TestCase):
    """bridge + host-local + ambit-cni against the scripted ZDS peer."""

    @classmethod
    def setUpClass(cls):
        require_root()
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def setUp(self):
        self.peer = self.node.start_peer()
        self.rt = self.node.runtime

    def tearDown(self):
        self.node.stop_peer()

    def add_pod(self, conflist, namespace="shop", name="web", uid=None):
        pod = self.node.new_pod()
        uid = uid or f"uid-{pod}"
        args = libcni.pod_args(namespace, name, uid)
        return pod, uid, args

    def test_add_captures_then_del_releases(self):
        for version in ("0.3.1", "0.4.0", "1.0.0"):
            with self.subTest(version=version):
                self.peer.requests.clear()
                conf = self.node.conflist(version)
                pod, uid, args = self.add_pod(conf)
                result = self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
                # ambit-cni's result is the bridge's, unchanged.
                self.assertEqual(result, self.rt.results[0])
                check_result_shape(self, result, version)
                address = result["ips"][0]["address"].split("/")[0]
                self.assertIn(address, pod_addresses(pod))
                # ambitd got the pod and its namespace (the same inode as the pod's).
                self.assertEqual(len(self.peer.requests), 1)
                req = self.peer.requests[0]
                self.assertEqual(req.kind, "add")
                self.assertEqual(req.message.add.uid, uid)
                self.assertEqual(req.message.add.workload_info.name, "web")
                self.assertEqual(req.message.add.workload_info.namespace, "shop")
                st = os.stat(netns_path(pod))
                self.assertEqual(req.fd_inodes, [(st.st_dev, st.st_ino)])
                if version != "0.3.1":
                    self.rt.check(conf, f"c-{pod}", netns_path(pod), args, result)
                self.peer.requests.clear()
                self.rt.delete(conf, f"c-{pod}", netns_path(pod), args, result)
                self.assertEqual([r.kind for r in self.peer.requests], ["del"])
                # `del` is a Python keyword: the field is reached with getattr.
                self.assertEqual(getattr(self.peer.requests[0].message, "del").uid, uid)
                self.assertEqual(pod_addresses(pod), [])
                self.assertNotIn(address, os.listdir(os.path.join(self.node.ipam_dir,
                                                                  conf["name"])))

    def assert_cni_error(self, ctx, code, *says):
        err = ctx.exception
        self.assertEqual(err.plugin, "ambit-cni", err)
        self.assertNotEqual(err.rc, 0)
        self.assertIsNotNone(err.error, f"stdout is not an error object: {err.stdout!r}")
        self.assertEqual(err.error["code"], code, err.error)
        self.assertIn("cniVersion", err.error)
        for s in says:
            self.assertIn(s, err.error["msg"])
        return err.error

    def assert_torn_down(self, conf, pod):
        self.assertEqual(pod_addresses(pod), [])
        leases = os.listdir(os.path.join(self.node.ipam_dir, conf["name"]))
        self.assertFalse([f for f in leases if f.startswith("198.")], leases)

    def test_error_ack_fails_add(self):
        self.peer.answer = ("error", "pod shop/web: no such pod in the configuration")
        conf = self.node.conflist()
        pod, _, args = self.add_pod(conf)
        with self.assertRaises(libcni.CniError) as ctx:
            self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
        self.assert_cni_error(ctx, 999, "no such pod in the configuration", "shop/web")
        # The runtime's clean-up ran: the pod never starts with the interface.
        self.assert_torn_down(conf, pod)

    def test_no_socket_fails_with_try_again(self):
        self.node.stop_peer()
        conf = self.node.conflist(socket=os.path.join(self.node.tmp, "absent.sock"))
        pod, _, args = self.add_pod(conf)
        start = time.monotonic()
        with self.assertRaises(libcni.CniError) as ctx:
            self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
        self.assert_cni_error(ctx, 11, "zdsSocket", "absent.sock", "No such file")
        self.assertLess(time.monotonic() - start, 10)
        self.assert_torn_down(conf, pod)

    def test_silent_agent_times_out(self):
        for answer in ("silent", "close"):
            with self.subTest(answer=answer):
                self.peer.answer = answer
                conf = self.node.conflist(timeout=1)
                pod, _, args = self.add_pod(conf)
                with self.assertRaises(libcni.CniError) as ctx:
                    self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
                self.assert_cni_error(ctx, 11, "zdsSocket")
                took = [t for p, c, t in self.rt.calls if p == "ambit-cni" and c == "ADD"][-1]
                if answer == "silent":
                    self.assertGreaterEqual(took, 0.9)
                    self.assertLess(took, 5)
                self.assert_torn_down(conf, pod)

    def test_slow_ack_within_timeout_succeeds(self):
        self.peer.answer = ("delay", 0.5)
        conf = self.node.conflist(timeout=3)
        pod, _, args = self.add_pod(conf)
        result = self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
        self.assertEqual(result, self.rt.results[0])
        self.rt.delete(conf, f"c-{pod}", netns_path(pod), args, result)

    def test_hello_is_checked(self):
        for hello, code in (("none", 11), ("garbage", 999), ("v0", 999)):
            with self.subTest(hello=hello):
                self.peer.hello = hello
                self.peer.requests.clear()
                conf = self.node.conflist(timeout=1)
                pod, _, args = self.add_pod(conf)
                with self.assertRaises(libcni.CniError) as ctx:
                    self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
                self.assert_cni_error(ctx, code)
                self.assertEqual(
                    [r for r in self.peer.requests if r.kind == "add"], [],
                    "nothing is sent to a peer that did not say hello V1")

    def test_excluded_and_non_pods_pass_through(self):
        conf = self.node.conflist(excludeNamespaces=["kube-system", "infra"])
        for namespace in ("kube-system", "infra"):
            pod, uid, args = self.add_pod(conf, namespace=namespace)
            result = self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
            self.assertEqual(result, self.rt.results[0])
            self.rt.delete(conf, f"c-{pod}", netns_path(pod), args, result)
        pod = self.node.new_pod()
        result = self.rt.add(conf, f"c-{pod}", netns_path(pod), "IgnoreUnknown=1")
        self.assertEqual(result, self.rt.results[0])
        self.rt.delete(conf, f"c-{pod}", netns_path(pod), "IgnoreUnknown=1", result)
        self.assertEqual(self.peer.requests, [])

    def test_version(self):
        for asked in ("0.3.0", "0.3.1", "0.4.0", "1.0.0"):
            v = self.rt.version("ambit-cni", asked)
            self.assertEqual(v, {"cniVersion": asked,
                                 "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        # Every version ambit-cni claims, the reference plug-ins speak too.
        bridge = self.rt.version("bridge")
        self.assertLessEqual({"0.3.0", "0.3.1", "0.4.0", "1.0.0"},
                             set(bridge["supportedVersions"]))

    def test_del_without_agent_succeeds(self):
        conf = self.node.conflist()
        pod, uid, args = self.add_pod(conf)
        result = self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
        self.node.stop_peer()
        out, err = self.rt.exec_plugin(
            "ambit-cni", "DEL", self.rt.plugin_conf(conf, conf["plugins"][1], result),
            f"c-{pod}", netns_path(pod), "eth0", args)
        self.assertEqual(out, "")
        self.assertIn("ignored", err)
        # DEL after the namespace is gone, with CNI_NETNS empty: still fine.
        out, _ = self.rt.exec_plugin(
            "ambit-cni", "DEL", self.rt.plugin_conf(conf, conf["plugins"][1], result),
            f"c-{pod}", "", "eth0", args)
        self.assertEqual(out, "")
        self.rt.delete(conf, f"c-{pod}", netns_path(pod), args, result)

    def test_check_needs_agent_and_netns(self):
        conf = self.node.conflist("1.0.0", timeout=1)
        pod, _, args = self.add_pod(conf)
        result = self.rt.add(conf, f"c-{pod}", netns_path(pod), args)
        self.rt.check(conf, f"c-{pod}", netns_path(pod), args, result)
        self.node.stop_peer()
        with self.assertRaises(libcni.CniError) as ctx:
            self.rt.check(conf, f"c-{pod}", netns_path(pod), args, result)
        self.assert_cni_error(ctx, 11, "zdsSocket")
        self.rt.delete(conf, f"c-{pod}", netns_path(pod), args, result)

    def test_malformed_input_gets_clear_errors(self):
        conf = self.node.conflist()
        pod, _, args = self.add_pod(conf)
        good = self.rt.plugin_conf(conf, conf["plugins"][1], {"cniVersion": "1.0.0", "ips": []})

        def run(stdin=None, env=None, command="ADD"):
            with self.assertRaises(libcni.CniError) as ctx:
                self.rt.exec_plugin("ambit-cni", command, good, f"c-{pod}", netns_path(pod),
                                    "eth0", args, env_override=env, stdin_bytes=stdin)
            return ctx

        cases = [
            (dict(stdin=b"{not json"), 6, ["stdin", "JSON"]),
            (dict(stdin=b""), 6, ["stdin"]),
            (dict(stdin=b" " * (2 << 20)), 6, ["bytes"]),
            (dict(stdin=json.dumps({**good, "cniVersion": "0.2.0"}).encode()), 1,
             ["cniVersion", "0.2.0"]),
            (dict(stdin=json.dumps({k: v for k, v in good.items() if k != "name"}).encode()),
             7, ['"name" missing']),
            (dict(stdin=json.dumps({**good, "timeout": "soon"}).encode()), 7, ['"timeout"']),
            (dict(stdin=json.dumps({k: v for k, v in good.items()
                                    if k != "prevResult"}).encode()), 7, ["prevResult"]),
            (dict(env={"CNI_NETNS": None}), 4, ["CNI_NETNS: not set"]),
            (dict(env={"CNI_NETNS": "/proc/999999999/ns/net"}), 4,
             ["CNI_NETNS: /proc/999999999/ns/net: No such file"]),
            (dict(env={"CNI_NETNS": "/etc/hostname"}), 4, ["not a network namespace"]),
            (dict(env={"CNI_ARGS": "K8S_POD_NAMESPACE=a;oops"}), 4, ["CNI_ARGS", "oops"]),
            (dict(env={"CNI_ARGS": "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"}), 4, ["K8S_POD_UID"]),
            (dict(env={"CNI_IFNAME": None}), 4, ["CNI_IFNAME"]),
            (dict(env={"CNI_CONTAINERID": ""}), 4, ["CNI_CONTAINERID"]),
            (dict(command="FROB"), 4, ["CNI_COMMAND", "FROB"]),
            (dict(stdin=json.dumps({**good, "cniVersion": "0.3.1"}).encode(), command="CHECK"),
             1, ["CHECK"]),
        ]
        for kw, code, says in cases:
            with self.subTest(**{k: (str(v)[:60]) for k, v in kw.items()}):
                ctx = run(**kw)
                self.assert_cni_error(ctx, code, *says)
        self.assertEqual([r for r in self.peer.requests if r.kind == "add"], [])


if __name__ == "__main__":
    unittest.main()
