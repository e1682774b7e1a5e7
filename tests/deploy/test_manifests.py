"""deploy/ without a cluster: every kustomization renders with kustomize v5 (this machine's
kubectl) and v2.0.3 (Debian 12's kubectl 1.20) to the same objects; the objects validate against
the Kubernetes schemas (kubernetes-models, offline) with no unknown field; they keep the posture
of check_posture.py; every flag they pass to an ambit binary is one that binary's --helpfull
lists, so a renamed flag fails here. Each checker is also shown to catch a fault planted in a
copy of the real objects.

Run: AMBIT_BUILD_DIR=build /usr/bin/python3 tests/deploy/test_manifests.py
(needs scripts/setup.sh's tools: node, the npm packages and Debian's kubectl under
/var/cache/ambit/deploy-tests).
"""

import copy
import os
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import check_posture  # noqa: E402
import manifests  # noqa: E402


class Rendered:
    """Each kustomization rendered once by both kubectls, shared by the tests."""
    objects = {}  # kustomization -> objects (kustomize v5)
    objects_v2 = {}  # kustomization -> objects (kustomize v2)
    stderr = {}  # kustomization -> (v5 stderr lines, v2 stderr lines)

    @classmethod
    def load(cls):
        if cls.objects:
            return
        new = manifests.system_kubectl()
        for k in manifests.kustomizations():
            cls.objects[k], err5 = manifests.render(new, k)
            cls.objects_v2[k], err2 = manifests.render(manifests.DEBIAN_KUBECTL, k)
            cls.stderr[k] = (err5, err2)

    @classmethod
    def labelled(cls):
        """[(where, object)] of every distinct object of every kustomization."""
        seen = {}
        for k, objs in cls.objects.items():
            for o in objs:
                key = repr(manifests.canonical(o))
                if key not in seen:
                    seen[key] = (f"deploy/{k}: {manifests.object_id(o)}", o)
        return list(seen.values())


def setUpModule():
    for tool in (manifests.DEBIAN_KUBECTL,
                 os.path.join(manifests.NPM_DIR, "node_modules", "kubernetes-models"),
                 os.path.join(manifests.NPM_DIR, "node_modules", "typescript")):
        if not os.path.exists(tool):
            raise RuntimeError(f"{tool} is missing: run scripts/setup.sh (as root) first")
    Rendered.load()


class RenderTest(unittest.TestCase):
    def test_every_kustomization_is_checked(self):
        self.assertEqual(manifests.kustomizations(), sorted(check_posture.EXPECTED))

    def test_both_kustomize_versions_render_the_same_objects(self):
        for k in manifests.kustomizations():
            with self.subTest(kustomization=k):
                v5 = Rendered.objects[k]
                v2 = Rendered.objects_v2[k]
                self.assertTrue(v5, "renders nothing")
                for o in v5 + v2:
                    # kustomize v2 leaves `{}` where a `$patch: delete` was: not an object.
                    self.assertTrue(o.get("apiVersion") and o.get("kind") and
                                    (o.get("metadata") or {}).get("name"),
                                    f"not a whole object: {o}")
                self.assertEqual(manifests.canonical_objects(v5), manifests.canonical_objects(v2))
                err5, err2 = Rendered.stderr[k]
                self.assertEqual(err2, [])
                self.assertEqual([e for e in err5 if not manifests.DEPRECATION_WARNING.match(e)],
                                 [])


    def test_an_images_entry_retargets_every_container(self):
        # README "Install on a cluster": the operator's own kustomization names the image.
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                f.write(f"bases:\n- {os.path.relpath(os.path.join(manifests.DEPLOY, 'ca'), tmp)}\n"
                        "images:\n- name: ambit/ambit\n"
                        "  newName: registry.example.com/ambit/ambit\n  newTag: \"0.1\"\n")
            for kubectl in (manifests.system_kubectl(), manifests.DEBIAN_KUBECTL):
                with self.subTest(kubectl=kubectl):
                    proc = subprocess.run([kubectl, "kustomize", tmp], capture_output=True,
                                          text=True, timeout=120)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    images = set()
                    for o in yaml.safe_load_all(proc.stdout):
                        pod = ((o or {}).get("spec", {}).get("template") or {}).get("spec") or {}
                        for c in pod.get("initContainers", []) + pod.get("containers", []):
                            images.add(c["image"])
                    self.assertEqual(images, {"registry.example.com/ambit/ambit:0.1"})


class SchemaTest(unittest.TestCase):
    def test_objects_match_the_kubernetes_schemas(self):
        self.assertEqual(manifests.schema_problems(Rendered.labelled()), [])

    def test_objects_have_no_unknown_fields(self):
        self.assertEqual(manifests.field_problems(Rendered.labelled()), [])

    def test_schema_check_catches_types_and_enums(self):
        ds = copy.deepcopy(check_posture._find(Rendered.objects["base"], "DaemonSet", "ambit"))
        ds["spec"]["updateStrategy"]["type"] = "Sometimes"
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "15020"
        pm = copy.deepcopy(check_posture._find(Rendered.objects["base"], "PodMonitor", "ambit"))
        pm["spec"]["podMetricsEndpoints"][0]["scheme"] = "gopher"
        problems = manifests.schema_problems([("ds", ds), ("pm", pm)])
        self.assertTrue(any(p.startswith("ds: /spec/updateStrategy/type") for p in problems),
                        problems)
        self.assertTrue(any("/ports/0/containerPort must be integer" in p for p in problems),
                        problems)
        self.assertTrue(any(p.startswith("pm: /spec/podMetricsEndpoints/0/scheme")
                            for p in problems), problems)

    def test_field_check_catches_unknown_fields_at_any_depth(self):
        base = Rendered.objects["base"]
        ds = copy.deepcopy(check_posture._find(base, "DaemonSet", "ambit"))
        ds["spec"]["template"]["spec"]["containers"][1]["securityContext"]["privilegd"] = False
        pm = copy.deepcopy(check_posture._find(base, "PodMonitor", "ambit"))
        pm["spec"]["podMetricsEndpoints"][0]["portt"] = "x"
        role = copy.deepcopy(check_posture._find(base, "ClusterRole", "ambit"))
        role["rule"] = []
        problems = manifests.field_problems([("ds", ds), ("pm", pm), ("role", role),
                                             ("ns", check_posture._find(base, "Namespace",
                                                                        "ambit-system"))])
        self.assertEqual(len(problems), 3, problems)
        self.assertIn("privilegd", problems[0])
        self.assertTrue(problems[0].startswith("ds: "), problems)
        self.assertTrue(problems[1].startswith("pm: ") and "portt" in problems[1], problems)
        self.assertTrue(problems[2].startswith("role: ") and "'\"rule\"'" in problems[2],
                        problems)


class PostureTest(unittest.TestCase):
    def test_every_kustomization_keeps_the_posture(self):
        for k in manifests.kustomizations():
            with self.subTest(kustomization=k):
                self.assertEqual(check_posture.kustomization_problems(Rendered.objects[k], k), [])

    def test_flags_are_ones_the_binaries_accept(self):
        uses = set()
        for objs in Rendered.objects.values():
            uses |= check_posture.flag_uses(objs)
        self.assertIn(("ambitd", "dataplane"), uses)
        self.assertIn(("ambit-tunnel", "control-socket"), uses)
        accepted = {b: manifests.help_flags(path) for b, path in manifests.BINARIES.items()}
        unknown = sorted(f"{b} --{f}" for b, f in uses if f not in accepted[b])
        self.assertEqual(unknown, [], "flags the binaries do not accept (renamed or not merged?)")

    def test_flag_check_catches_a_renamed_flag(self):
        objs = copy.deepcopy(Rendered.objects["overlays/apiserver"])
        ds = check_posture._find(objs, "DaemonSet", "ambit")
        args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        args[args.index("--run-dir=/var/run/ambit")] = "--rundir=/var/run/ambit"
        accepted = manifests.help_flags(manifests.BINARIES["ambitd"])
        self.assertIn("run-dir", accepted)
        unknown = [f for b, f in check_posture.flag_uses(objs)
                   if b == "ambitd" and f not in accepted]
        self.assertIn("rundir", unknown)

    def test_posture_check_catches_each_fault(self):
        def ds_of(objs, name="ambit"):
            return check_posture._find(objs, "DaemonSet", name)

        def container(objs, name, ds="ambit"):
            pod = ds_of(objs, ds)["spec"]["template"]["spec"]
            return next(c for c in pod.get("initContainers", []) + pod["containers"]
                        if c["name"] == name)

        def pod(objs, ds="ambit"):
            return ds_of(objs, ds)["spec"]["template"]["spec"]

        def mount(objs, cname, path, ds="ambit"):
            return next(m for m in container(objs, cname, ds)["volumeMounts"]
                        if m["mountPath"] == path)

        def volume(objs, name, ds="ambit"):
            return next(v for v in pod(objs, ds)["volumes"] if v["name"] == name)

        def role(objs, name="ambit"):
            return check_posture._find(objs, "ClusterRole", name)

        faults = [
            ("overlays/apiserver", "privileged must be false",
             lambda o: container(o, "ambit-tunnel")["securityContext"].update(privileged=True)),
            ("overlays/apiserver", "allowPrivilegeEscalation",
             lambda o: container(o, "ambitd")["securityContext"].pop("allowPrivilegeEscalation")),
            ("overlays/apiserver", "readOnlyRootFilesystem",
             lambda o: container(o, "ambit-waypoint")["securityContext"].update(
                 readOnlyRootFilesystem=False)),
            ("overlays/apiserver", "adds capabilities ['BPF']",
             lambda o: container(o, "ambit-tunnel")["securityContext"]["capabilities"][
                 "add"].append("BPF")),
            ("overlays/apiserver", "must drop [ALL]",
             lambda o: container(o, "ambitd")["securityContext"]["capabilities"].update(
                 drop=["NET_RAW"])),
            ("overlays/apiserver", "Bidirectional",
             lambda o: mount(o, "ambitd", "/sys/fs/bpf").update(mountPropagation="Bidirectional")),
            ("overlays/apiserver", "host path /var/run/netns must be mounted with",
             lambda o: mount(o, "ambitd", "/var/run/netns").pop("mountPropagation")),
            ("overlays/apiserver", "host path /sys/fs/cgroup is mounted writable",
             lambda o: mount(o, "ambitd", "/host/sys/fs/cgroup").pop("readOnly")),
            ("overlays/apiserver", "mounts host path /etc",
             lambda o: volume(o, "tmp").update(emptyDir=None, hostPath={"path": "/etc"})),
            ("overlays/apiserver", "hostNetwork is set",
             lambda o: pod(o).update(hostNetwork=True)),
            ("overlays/apiserver", "has a livenessProbe",
             lambda o: container(o, "ambit-tunnel").update(
                 livenessProbe={"tcpSocket": {"port": 15008}})),
            ("overlays/apiserver", "ambit-waypoint has a readiness probe",
             lambda o: container(o, "ambit-waypoint").update(
                 readinessProbe={"tcpSocket": {"port": 15008}})),
            ("overlays/apiserver", "readiness probe must be GET :15021/healthz/ready",
             lambda o: container(o, "ambitd")["readinessProbe"]["httpGet"].update(port=15020)),
            ("overlays/apiserver", "maxSurge 1 and maxUnavailable 0",
             lambda o: ds_of(o)["spec"]["updateStrategy"]["rollingUpdate"].update(
                 maxUnavailable=1)),
            ("overlays/apiserver", "toleration of every taint",
             lambda o: pod(o).update(tolerations=[{"key": "node-role.kubernetes.io/control-plane",
                                                   "operator": "Exists"}])),
            ("overlays/apiserver", "system-node-critical",
             lambda o: pod(o).pop("priorityClassName")),
            ("overlays/apiserver", "prometheus.io/port",
             lambda o: ds_of(o)["spec"]["template"]["metadata"]["annotations"].update(
                 {"prometheus.io/port": "15021"})),
            ("overlays/apiserver", "env INSTANCE_IP",
             lambda o: container(o, "ambitd")["env"].pop()),
            ("overlays/apiserver", "ambitd lacks --take-over",
             lambda o: container(o, "ambitd")["args"].remove("--take-over")),
            ("overlays/apiserver", "leaves the drain (30 s) less than 10 s of margin",
             lambda o: pod(o).update(terminationGracePeriodSeconds=30)),
            ("overlays/apiserver", "leaves the drain (40 s) less than 10 s of margin",
             lambda o: container(o, "ambitd")["args"].__setitem__(
                 container(o, "ambitd")["args"].index("--dataplane-drain-grace=30s"),
                 "--dataplane-drain-grace=40s")),
            ("overlays/apiserver", "ambit-tunnel has a preStop hook",
             lambda o: container(o, "ambit-tunnel").update(
                 lifecycle={"preStop": {"exec": {"command": ["sleep", "5"]}}})),
            ("overlays/apiserver", "ambitd lacks --dataplane=external",
             lambda o: container(o, "ambitd")["args"].remove("--dataplane=external")),
            ("overlays/apiserver", "--cgroup=/sys/fs/cgroup is not a mount of the host's",
             lambda o: container(o, "ambitd")["args"].__setitem__(
                 container(o, "ambitd")["args"].index("--cgroup=/host/sys/fs/cgroup"),
                 "--cgroup=/sys/fs/cgroup")),
            ("overlays/apiserver", "ambit-tunnel does not share ambitd's run directory",
             lambda o: mount(o, "ambit-tunnel", "/var/run/ambit").update(name="tmp")),
            ("overlays/apiserver", "instance lock",
             lambda o: volume(o, "lock").update(hostPath=None, emptyDir={})),
            ("overlays/apiserver", "image 'ambit/ambit-debug:latest'",
             lambda o: container(o, "ambit-tunnel").update(image="ambit/ambit-debug:latest")),
            ("overlays/apiserver", "rules differ from the contract: extra [('', 'secrets', 'get')]",
             lambda o: role(o)["rules"].append(
                 {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})),
            ("overlays/apiserver", "('', 'pods', 'delete')",
             lambda o: role(o)["rules"][0]["verbs"].append("delete")),
            ("overlays/apiserver", "missing [('gateway.networking.k8s.io'",
             lambda o: role(o)["rules"].pop()),
            ("overlays/apiserver", "--kube-api=in-cluster",
             lambda o: container(o, "ambitd")["args"].remove("--kube-api=in-cluster")),
            ("overlays/config-dir", "service-account token",
             lambda o: pod(o).pop("automountServiceAccountToken")),
            ("overlays/config-dir", "objects differ: extra [('ClusterRole', 'ambit')]",
             lambda o: o.append({"apiVersion": "rbac.authorization.k8s.io/v1",
                                 "kind": "ClusterRole", "metadata": {"name": "ambit"},
                                 "rules": []})),
            ("ca", "projected service-account token of audience ambit-ca",
             lambda o: volume(o, "ca-token")["projected"]["sources"][0][
                 "serviceAccountToken"].update(audience="api")),
            ("ca", "mounts the cacerts Secret",
             lambda o: volume(o, "ca-root").update(configMap=None,
                                                   secret={"secretName": "cacerts"})),
            ("ca", "ClusterRole/ambit-ca: rules differ",
             lambda o: role(o, "ambit-ca")["rules"][0]["verbs"].append("list")),
            ("ca", "Deployment/ambit-ca: lacks --ca-token-review",
             lambda o: next(c for c in check_posture._find(o, "Deployment", "ambit-ca")[
                 "spec"]["template"]["spec"]["containers"]
                 if c["name"] == "ambit-ca")["args"].remove("--ca-token-review")),
            ("ca", "Deployment/ambit-ca: --config-dir must be the ambit-mesh ConfigMap",
             lambda o: check_posture._find(o, "Deployment", "ambit-ca")["spec"]["template"][
                 "spec"]["volumes"][1].update(configMap={"name": "other"})),
            ("ca", "--ca-token-users must be the node agents' service account alone",
             lambda o: pod(o).update(serviceAccountName="node-agent")),
            ("istiod", "projected service-account token of audience istio-ca",
             lambda o: volume(o, "istio-token")["projected"]["sources"][0][
                 "serviceAccountToken"].update(audience="ambit-ca")),
            ("istiod", "must be root-cert.pem of the istio-ca-root-cert ConfigMap",
             lambda o: volume(o, "istiod-ca-root").update(configMap={"name": "ambit-ca-root"})),
            ("cleanup", "--force would remove",
             lambda o: container(o, "cleanup", "ambit-cleanup")["args"].append("--force")),
            ("cleanup", "does not mount the host's /run/lock/ambit",
             lambda o: volume(o, "lock", "ambit-cleanup").update(hostPath=None, emptyDir={})),
            ("cni", "is not ambitd's ZDS socket as the node sees it",
             lambda o: container(o, "install-cni")["args"].__setitem__(
                 3, "--zds-socket=/tmp/zds.sock")),
            ("cni", "--cni-conf-dir=/host/etc/cni/net.d is not a mount of the host's",
             lambda o: volume(o, "cni-conf").update(hostPath={"path": "/etc/cni",
                                                              "type": "DirectoryOrCreate"})),
            ("cni", "adds capabilities ['SYS_ADMIN']",
             lambda o: container(o, "install-cni")["securityContext"]["capabilities"].update(
                 add=["SYS_ADMIN"])),
            ("cni", "ambitd's --zds-listen=/tmp/other.sock is not where",
             lambda o: container(o, "ambitd")["args"].append("--zds-listen=/tmp/other.sock")),
            ("cni", "install-cni must exclude ambit-system",
             lambda o: container(o, "install-cni")["args"].__setitem__(
                 5, "--exclude-namespaces=kube-system")),
            ("cleanup", "ambit-cleanup: uninstall-cni lacks --uninstall",
             lambda o: container(o, "uninstall-cni", "ambit-cleanup")["args"].remove(
                 "--uninstall")),
            ("base/node", "after at most install-cni",
             lambda o: pod(o).update(initContainers=[{"name": "other"}])),
        ]
        for k, expect, plant in faults:
            with self.subTest(kustomization=k, fault=expect):
                objs = copy.deepcopy(Rendered.objects[k])
                plant(objs)
                problems = check_posture.kustomization_problems(objs, k)
                self.assertTrue(any(expect in p for p in problems),
                                f"{expect!r} not among {problems}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
