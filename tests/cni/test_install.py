"""`ambit-cni --install` / `--uninstall` on sample CNI conf dirs (Calico-like, Flannel-like, a
single bridge *.conf): chained last in the primary file only, every other key and plug-in kept
(in order), idempotent, undone exactly by --uninstall, and a file it cannot parse refused and
left untouched. Temp dirs only; no root needed."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

from test_cni import ambit_cni_binary

CALICO = {
    "name": "k8s-pod-network", "cniVersion": "0.3.1",
    "plugins": [
        {"type": "calico", "log_level": "info", "datastore_type": "kubernetes",
         "mtu": 0, "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
         "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}
FLANNEL = {
    "name": "cbr0", "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
BRIDGE_CONF = {
    "cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0",
    "isGateway": True, "ipMasq": True,
    "ipam": {"type": "host-local", "subnet": "198.18.0.0/16",
             "routes": [{"dst": "0.0.0.0/0"}]},
}


def ordered(text):
    """JSON with its key order, for comparisons that notice a reordering."""
    return json.loads(text, object_pairs_hook=lambda pairs: pairs)


class InstallTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ambit-cni-install-")
        self.bin = os.path.join(self.tmp, "bin")
        self.conf = os.path.join(self.tmp, "net.d")
        os.mkdir(self.bin)
        os.mkdir(self.conf)
        self.binary = ambit_cni_binary()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, obj_or_text):
        text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text, indent=1)
        with open(os.path.join(self.conf, name), "w") as f:
            f.write(text)
        return text

    def read(self, name):
        with open(os.path.join(self.conf, name)) as f:
            return f.read()

    def ambit_cni(self, *flags, ok=True):
        proc = subprocess.run([self.binary, *flags, f"--cni-bin-dir={self.bin}",
                               f"--cni-conf-dir={self.conf}"],
                              capture_output=True, text=True, timeout=30)
        if ok:
            self.assertEqual(proc.returncode, 0, proc.stderr)
        else:
            self.assertNotEqual(proc.returncode, 0, proc.stderr)
        return proc

    def snapshot(self):
        out = {}
        for name in sorted(os.listdir(self.conf)):
            st = os.stat(os.path.join(self.conf, name))
            out[name] = (self.read(name), st.st_mtime_ns, st.st_ino)
        return out

    def test_calico_like(self):
        self.write("10-calico.conflist", CALICO)
        self.write("99-other.conflist", FLANNEL)
        other = self.read("99-other.conflist")
        self.ambit_cni("--install", "--zds-socket=/run/ambit/zds.sock", "--timeout=7s",
                       "--exclude-namespaces=kube-system,infra")
        got = json.loads(self.read("10-calico.conflist"))
        self.assertEqual(got["plugins"][:3], CALICO["plugins"])
        self.assertEqual(got["plugins"][3], {
            "type": "ambit-cni", "zdsSocket": "/run/ambit/zds.sock", "timeout": 7.0,
            "excludeNamespaces": ["kube-system", "infra"]})
        self.assertEqual([k for k, _ in ordered(self.read("10-calico.conflist"))],
                         list(CALICO))
        # Only the primary (lexically first) file is the runtime's; the others stay as they are.
        self.assertEqual(self.read("99-other.conflist"), other)
        installed = os.path.join(self.bin, "ambit-cni")
        with open(installed, "rb") as a, open(self.binary, "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertEqual(os.stat(installed).st_mode & 0o777, 0o755)
        self.assertEqual([n for n in os.listdir(self.conf) if "tmp" in n], [])

    def test_flannel_like_round_trip(self):
        self.write("10-flannel.conflist", FLANNEL)
        self.ambit_cni("--install")
        plugins = json.loads(self.read("10-flannel.conflist"))["plugins"]
        self.assertEqual([p["type"] for p in plugins], ["flannel", "portmap", "ambit-cni"])
        self.assertEqual(plugins[2]["zdsSocket"], "/var/run/ambit/zds.sock")
        self.assertEqual(plugins[2]["timeout"], 10)
        self.assertEqual(plugins[2]["excludeNamespaces"], ["kube-system"])
        self.ambit_cni("--uninstall")
        self.assertEqual(ordered(self.read("10-flannel.conflist")),
                         ordered(json.dumps(FLANNEL)))
        self.assertFalse(os.path.exists(os.path.join(self.bin, "ambit-cni")))
        # Uninstalling again finds nothing to do.
        self.ambit_cni("--uninstall")

    def test_idempotent(self):
        self.write("10-calico.conflist", CALICO)
        self.ambit_cni("--install")
        before = self.snapshot()
        proc = self.ambit_cni("--install")
        self.assertIn("already chained", proc.stderr)
        self.assertEqual(self.snapshot(), before, "a second --install rewrote the file")
        self.assertEqual(
            [p["type"] for p in json.loads(self.read("10-calico.conflist"))["plugins"]].count(
                "ambit-cni"), 1)

    def test_single_bridge_conf_is_converted_and_restored(self):
        self.write("10-bridge.conf", BRIDGE_CONF)
        self.ambit_cni("--install")
        self.assertEqual(sorted(os.listdir(self.conf)), ["10-bridge.conflist"])
        got = json.loads(self.read("10-bridge.conflist"))
        self.assertEqual(got["cniVersion"], "0.4.0")
        self.assertEqual(got["name"], "mynet")
        bridge = {k: v for k, v in BRIDGE_CONF.items() if k not in ("cniVersion", "name")}
        self.assertEqual(got["plugins"][0], bridge)
        self.assertEqual(got["plugins"][1]["type"], "ambit-cni")
        self.ambit_cni("--install")  # idempotent on the converted file too
        self.assertEqual(sorted(os.listdir(self.conf)), ["10-bridge.conflist"])
        self.ambit_cni("--uninstall")
        self.assertEqual(sorted(os.listdir(self.conf)), ["10-bridge.conf"])
        self.assertEqual(json.loads(self.read("10-bridge.conf")), BRIDGE_CONF)

    def test_corrupt_primary_is_refused_and_untouched(self):
        self.write("00-broken.conflist", '{"name": "x", "plugins": [ {"type": "calico",')
        self.write("10-calico.conflist", CALICO)
        before = self.snapshot()
        proc = self.ambit_cni("--install", ok=False)
        self.assertIn("00-broken.conflist", proc.stderr)
        self.assertIn("not valid JSON", proc.stderr)
        self.assertEqual(self.snapshot(), before)
        for bad in ('{"plugins": {"type": "x"}}', '["a"]', '{"plugins": [{"no": "type"}]}'):
            with self.subTest(bad=bad):
                self.write("00-broken.conflist", bad)
                before = self.snapshot()
                proc = self.ambit_cni("--install", ok=False)
                self.assertIn("00-broken.conflist", proc.stderr)
                self.assertEqual(self.snapshot(), before)

    def test_no_configuration_yet(self):
        proc = self.ambit_cni("--install", ok=False)
        self.assertIn("has not written its network configuration yet", proc.stderr)

    def test_flags_are_checked(self):
        self.write("10-calico.conflist", CALICO)
        before = self.snapshot()
        for flags in (["--install", "--uninstall"], ["--install", "--timeout=0s"],
                      ["--install", "--zds-socket=relative.sock"], ["--cni-conf-dir=/x"]):
            with self.subTest(flags=flags):
                self.ambit_cni(*flags, ok=False)
        self.assertEqual(self.snapshot(), before)


if __name__ == "__main__":
    unittest.main()
