#!/usr/bin/python3
"""The test API server (fake_apiserver.py) checked against real clients: kubectl,
python3-kubernetes and raw HTTPS. Each test starts the server as its own process, as the other
tests use it, and drives scenarios through its /__fake control endpoint. The assertions are about
protocol details (status codes, headers, framing, resourceVersions, continue tokens), since that
is what makes the double faithful. No root needed."""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import kubernetes
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes import watch as kwatch
from kubernetes.client.rest import ApiException

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
KUBECTL = shutil.which("kubectl")


def pod(name, ns="default", node="node-a", ip=None, labels=None, phase="Running"):
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
         "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
         "status": {"phase": phase}}
    if ip:
        p["status"]["podIP"] = ip
        p["status"]["podIPs"] = [{"ip": ip}]
    return p


class ServerProcess:
    """fake_apiserver.py as a child process, ended by its PID."""

    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="fakeapi-")
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(HERE, "fake_apiserver.py"), "--listen", "127.0.0.1:0",
             "--state-dir", self.dir, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            raise RuntimeError(f"fake_apiserver did not start: {line!r} "
                               f"{self.proc.stderr.read()}")
        self.port = int(line.split()[1])
        self.ca = os.path.join(self.dir, "ca.crt")
        self.kubeconfig = os.path.join(self.dir, "kubeconfig")
        with open(os.path.join(self.dir, "control-token")) as f:
            self.control_token = f.read().strip()

    def token(self):
        with open(os.path.join(self.dir, "token")) as f:
            return f.read().strip()

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca)

    def conn(self, timeout=30):
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(),
                                           timeout=timeout)

    def request(self, method, path, body=None, token=None, headers=None, timeout=30):
        """One raw HTTPS request; returns (status, headers, parsed JSON or text)."""
        c = self.conn(timeout)
        h = {"Accept": "application/json"}
        if token is not False:
            h["Authorization"] = f"Bearer {token or self.token()}"
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        try:
            data = json.loads(data)
        except ValueError:
            data = data.decode()
        return r.status, r.headers, data

    def control(self, op, **args):
        c = self.conn()
        c.request("POST", f"/__fake/{op}", body=json.dumps(args),
                  headers={"Authorization": f"Bearer {self.control_token}",
                           "Content-Type": "application/json"})
        r = c.getresponse()
        data = json.loads(r.read())
        c.close()
        if r.status != 200:
            raise RuntimeError(f"control {op}: {r.status} {data}")
        return data

    def apply(self, *objs):
        return self.control("apply", objects=list(objs))

    def requests(self):
        return self.control("requests")

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ChunkedReader:
    """Reads a watch response's raw bytes and checks the chunked framing itself: each chunk must
    hold exactly one JSON event ending in a newline, as kube-apiserver flushes them."""

    def __init__(self, srv, path, token=None, timeout=30):
        self.sock = srv.ssl_context().wrap_socket(
            __import__("socket").create_connection(("127.0.0.1", srv.port), timeout=timeout),
            server_hostname="127.0.0.1")
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
               f"Authorization: Bearer {token or srv.token()}\r\nAccept: application/json\r\n\r\n")
        self.sock.sendall(req.encode())
        self.f = self.sock.makefile("rb")
        status = self.f.readline().decode()
        self.status = int(status.split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode().strip()
            if not line:
                break
            k, v = line.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        self.ended = False  # saw the terminating zero-length chunk

    def next(self):
        """The next event, None at the clean end; raises EOFError when the connection drops."""
        size_line = self.f.readline()
        if not size_line:
            raise EOFError("connection closed mid-stream")
        size = int(size_line.strip(), 16)
        if size == 0:
            self.f.readline()
            self.ended = True
            return None
        data = self.f.read(size)
        assert self.f.read(2) == b"\r\n", "chunk not terminated by CRLF"
        assert data.endswith(b"\n") and data.count(b"\n") == 1, f"not one JSON line: {data!r}"
        return json.loads(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Base(unittest.TestCase):
    server_args = ()

    def setUp(self):
        self.srv = ServerProcess(*self.server_args)
        self.addCleanup(self.srv.close)

    def kubectl(self, *args, check=True, timeout=60, input=None):
        self.assertIsNotNone(KUBECTL, "kubectl is required")
        r = subprocess.run([KUBECTL, "--kubeconfig", self.srv.kubeconfig, "--cache-dir",
                            os.path.join(self.srv.dir, "cache"), *args],
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            self.fail(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def api_client(self, token=None):
        cfg = kclient.Configuration()
        kconfig.load_kube_config(config_file=self.srv.kubeconfig, client_configuration=cfg)
        if token is not None:
            cfg.api_key = {"authorization": f"Bearer {token}"}
        api = kclient.ApiClient(cfg)
        self.addCleanup(api.rest_client.pool_manager.clear)
        return api

    def rv(self, status_body):
        return int(status_body["metadata"]["resourceVersion"])


class KubectlTest(Base):
    """kubectl (whichever is installed) against the server, as a user would drive it."""

    def test_discovery_and_api_resources(self):
        r = self.kubectl("api-resources", "-o", "wide")
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        for name, gv, kind in [("pods", "v1", "Pod"), ("namespaces", "v1", "Namespace"),
                               ("services", "v1", "Service"), ("configmaps", "v1", "ConfigMap"),
                               ("endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
                               ("peerauthentications", "security.istio.io/v1",
                                "PeerAuthentication"),
                               ("authorizationpolicies", "security.istio.io/v1",
                                "AuthorizationPolicy"),
                               ("requestauthentications", "security.istio.io/v1",
                                "RequestAuthentication"),
                               ("gateways", "gateway.networking.k8s.io/v1", "Gateway"),
                               ("tokenreviews", "authentication.k8s.io/v1", "TokenReview")]:
            self.assertIn(name, rows)
            self.assertIn(gv, rows[name])
            self.assertIn(kind, rows[name])
        # The VERBS column: "[create delete ...]" or "create,delete,...", by kubectl version.
        verbs = lambda row: set(re.split(r"[\s,\[\]]+", row)) & {
            "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
        self.assertEqual(verbs(rows["pods"]), {"create", "delete", "deletecollection", "get",
                                               "list", "patch", "update", "watch"})
        self.assertEqual(verbs(rows["tokenreviews"]), {"create"})
        # A client that asks for aggregated discovery (kubectl 1.26+) gets every group from /api
        # and /apis and needs no per-group document; an older one walks the groups.
        log = self.srv.requests()
        aggregated = any("apidiscovery.k8s.io" in r["accept"] for r in log)
        per_group = [r["path"] for r in log if r["path"] == "/api/v1" or
                     r["path"].startswith("/apis/")]
        if aggregated:
            self.assertEqual(per_group, [])
        else:
            self.assertIn("/apis/security.istio.io/v1", per_group)
        st, hdrs, body = self.srv.request("GET", "/apis", headers={
            "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                      "application/json"})
        self.assertEqual(hdrs["Content-Type"],
                         "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
        self.assertEqual(body["kind"], "APIGroupDiscoveryList")
        istio = next(i for i in body["items"] if i["metadata"]["name"] == "security.istio.io")
        self.assertEqual([v["version"] for v in istio["versions"]], ["v1", "v1beta1"])
        pa = next(r for r in istio["versions"][0]["resources"]
                  if r["resource"] == "peerauthentications")
        self.assertEqual((pa["scope"], pa["responseKind"]["kind"], pa["subresources"][0]
                          ["subresource"]), ("Namespaced", "PeerAuthentication", "status"))
        st, hdrs, body = self.srv.request("GET", "/apis")
        self.assertEqual((hdrs["Content-Type"], body["kind"]), ("application/json",
                                                                "APIGroupList"))
        versions = self.kubectl("api-versions").stdout.split()
        self.assertIn("security.istio.io/v1beta1", versions)
        self.assertIn("security.istio.io/v1", versions)
        self.assertRegex(self.kubectl("version").stdout, r"Server Version: .*v1\.32\.0")

    def test_apply_get_delete(self):
        manifest = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: app, image: nginx}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""
        r = self.kubectl("apply", "-f", "-", input=manifest)
        self.assertEqual(r.stdout.split("\n")[:3], [
            "namespace/shop created", "pod/web created",
            "peerauthentication.security.istio.io/strict created"])
        out = self.kubectl("get", "pods", "-n", "shop", "-o", "wide").stdout.splitlines()
        self.assertEqual(out[0].split(), ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP",
                                          "NODE", "NOMINATED", "NODE", "READINESS", "GATES"])
        self.assertEqual(out[1].split()[:3] + out[1].split()[5:7],
                         ["web", "0/1", "Pending", "<none>", "node-a"])
        # Re-applied with a change: a strategic merge patch for the built-in Pod, a JSON merge
        # patch for the custom resource, both answered.
        changed = manifest.replace("app: web}", "app: web, tier: front}").replace(
            "STRICT", "PERMISSIVE")
        r = self.kubectl("apply", "-f", "-", input=changed)
        self.assertIn("pod/web configured", r.stdout)
        self.assertIn("peerauthentication.security.istio.io/strict configured", r.stdout)
        self.assertIn("namespace/shop unchanged", r.stdout)
        patches = [(q["path"], q["content_type"]) for q in self.srv.requests()
                   if q["method"] == "PATCH"]
        self.assertIn(("/api/v1/namespaces/shop/pods/web",
                       "application/strategic-merge-patch+json"), patches)
        self.assertIn(("/apis/security.istio.io/v1/namespaces/shop/peerauthentications/strict",
                       "application/merge-patch+json"), patches)
        got = json.loads(self.kubectl("get", "pod", "web", "-n", "shop", "-o", "json").stdout)
        self.assertEqual(got["metadata"]["labels"], {"app": "web", "tier": "front"})
        self.assertEqual(got["spec"]["containers"], [{"name": "app", "image": "nginx"}])
        # The custom resources' printer columns, as their definitions declare them.
        out = self.kubectl("get", "pa", "-n", "shop").stdout.splitlines()
        self.assertEqual(out[0].split(), ["NAME", "MODE", "AGE"])
        self.assertEqual(out[1].split()[:2], ["strict", "PERMISSIVE"])
        pa = json.loads(self.kubectl("get", "peerauthentications.v1beta1.security.istio.io",
                                     "strict", "-n", "shop", "-o", "json").stdout)
        self.assertEqual(pa["apiVersion"], "security.istio.io/v1beta1")
        self.assertEqual(pa["spec"], {"mtls": {"mode": "PERMISSIVE"}})
        self.assertIn("unchanged", self.kubectl("apply", "-f", "-", input=changed).stdout)

        self.assertIn('pod "web" deleted', self.kubectl("delete", "pod", "web", "-n",
                                                        "shop").stdout)
        r = self.kubectl("get", "pod", "web", "-n", "shop", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('Error from server (NotFound): pods "web" not found', r.stderr)
        # Deleting the namespace takes its objects with it.
        self.kubectl("delete", "namespace", "shop")
        st, _, body = self.srv.request(
            "GET", "/apis/security.istio.io/v1/namespaces/shop/peerauthentications/strict")
        self.assertEqual(st, 404)
        self.assertEqual(body["reason"], "NotFound")

    def test_server_side_apply_replace_and_patches(self):
        manifest = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
"""
        r = self.kubectl("apply", "--server-side", "-f", "-", input=manifest)
        self.assertIn("service/web serverside-applied", r.stdout)
        ssa = [q for q in self.srv.requests() if q["method"] == "PATCH"]
        self.assertEqual({q["content_type"] for q in ssa}, {"application/apply-patch+yaml"})
        self.assertEqual({q["query"]["fieldManager"] for q in ssa}, {"kubectl"})
        svc = json.loads(self.kubectl("get", "svc", "web", "-o", "json").stdout)
        self.assertRegex(svc["spec"]["clusterIP"], r"^198\.19\.240\.")  # allocated on create
        self.kubectl("patch", "ap", "deny", "--type=json",
                     "-p", '[{"op":"replace","path":"/spec/action","value":"AUDIT"}]')
        self.kubectl("patch", "ap", "deny", "--type=merge", "-p", '{"metadata":{"labels":'
                     '{"x":"y"}}}')
        ap = json.loads(self.kubectl("get", "ap", "deny", "-o", "json").stdout)
        self.assertEqual((ap["spec"]["action"], ap["metadata"]["labels"]), ("AUDIT", {"x": "y"}))
        self.assertEqual(ap["metadata"]["generation"], 2)  # the label did not count
        r = self.kubectl("patch", "ap", "deny", "--type=json",
                         "-p", '[{"op":"test","path":"/spec/action","value":"DENY"}]', check=False)
        self.assertNotEqual(r.returncode, 0)
        # replace is a PUT carrying the resourceVersion read; a stale one conflicts.
        svc["spec"]["ports"][0]["port"] = 81
        self.assertIn("service/web replaced",
                      self.kubectl("replace", "-f", "-", input=json.dumps(svc)).stdout)
        r = self.kubectl("replace", "-f", "-", input=json.dumps(svc), check=False)
        self.assertIn("the object has been modified", r.stderr)
        out = self.kubectl("get", "svc", "web", "--no-headers").stdout.split()
        self.assertEqual(out[1:5], ["ClusterIP", svc["spec"]["clusterIP"], "<none>", "81/TCP"])

    def test_unknown_fields(self):
        # kubectl 1.27+ asks the server to refuse them (fieldValidation=Strict); older ones get
        # the server's default, a warning. Either way the user hears of the typo.
        typo = "apiVersion: v1\nkind: Pod\nmetadata: {name: t}\nspc: {}\n"
        r = self.kubectl("apply", "-f", "-", input=typo, check=False)
        self.assertIn('unknown field "spc"', r.stderr)
        strict = [q for q in self.srv.requests() if q["method"] == "POST"]
        if strict and strict[-1]["query"].get("fieldValidation") == "Strict":
            self.assertNotEqual(r.returncode, 0)
        base = "/api/v1/namespaces/default/pods"
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "u", "nmae": "x"},
                "spec": {"containers": []}}
        st, _, out = self.srv.request("POST", base + "?fieldValidation=Strict", body)
        self.assertEqual((st, out["reason"]), (400, "BadRequest"))
        self.assertIn('strict decoding error: unknown field "metadata.nmae"', out["message"])
        st, hdrs, _ = self.srv.request("POST", base, body)
        self.assertEqual(st, 201)
        self.assertEqual(hdrs["Warning"], '299 - "unknown field \\"metadata.nmae\\""')

    def test_create_in_missing_namespace_fails(self):
        r = self.kubectl("run", "x", "--image=busybox", "-n", "nowhere", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('namespaces "nowhere" not found', r.stderr)

    def test_get_watch_sees_a_change(self):
        self.srv.apply(pod("one"))
        w = subprocess.Popen([KUBECTL, "--kubeconfig", self.srv.kubeconfig, "--cache-dir",
                              os.path.join(self.srv.dir, "cache"), "get", "pods", "-w",
                              "--output-watch-events"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            first = w.stdout.readline().split()
            self.assertEqual(first[:2], ["EVENT", "NAME"])
            self.assertEqual(w.stdout.readline().split()[:2], ["ADDED", "one"])
            deadline = time.monotonic() + 20
            while not any(q["query"].get("watch") == "true" for q in self.srv.requests()):
                self.assertLess(time.monotonic(), deadline, "kubectl never started its watch")
                time.sleep(0.1)
            self.srv.apply(pod("two", phase="Running"))
            self.assertEqual(w.stdout.readline().split()[:4], ["ADDED", "two", "0/1", "Running"])
            self.srv.control("delete", kind="Pod", namespace="default", name="one")
            self.assertEqual(w.stdout.readline().split()[:2], ["DELETED", "one"])
        finally:
            w.kill()
            w.wait()
            w.stdout.close()
            w.stderr.close()
        watch = [q for q in self.srv.requests() if q["query"].get("watch") == "true"]
        # kubectl watches from the resourceVersion of its list.
        lists = [q for q in self.srv.requests()
                 if q["path"] == "/api/v1/namespaces/default/pods" and "watch" not in q["query"]]
        self.assertTrue(watch[0]["query"]["resourceVersion"].isdigit())
        self.assertTrue(lists)

    def test_get_chunk_size_pages(self):
        self.srv.apply(*[pod(f"p{i:02d}") for i in range(7)])
        out = self.kubectl("get", "pods", "--chunk-size=3", "-o", "name").stdout.split()
        self.assertEqual(out, [f"pod/p{i:02d}" for i in range(7)])
        reqs = [q for q in self.srv.requests() if q["path"] == "/api/v1/namespaces/default/pods"]
        self.assertEqual([q["query"].get("limit") for q in reqs], ["3", "3", "3"])
        self.assertNotIn("continue", reqs[0]["query"])
        self.assertIn("continue", reqs[1]["query"])
        self.assertIn("continue", reqs[2]["query"])
        # The token is the real server's: base64 JSON with the list's RV and the next key.
        tok = reqs[1]["query"]["continue"]
        tok = json.loads(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)))
        self.assertEqual(tok["v"], "meta.k8s.io/v1")
        self.assertEqual(tok["start"], "p02\x00")

    def test_all_namespaces_and_selectors(self):
        self.srv.apply(pod("a", ns="ns1", labels={"app": "x", "tier": "web"}),
                       pod("b", ns="ns2", labels={"app": "y"}, node="node-b"),
                       pod("c", ns="ns2", labels={"app": "x"}))
        out = self.kubectl("get", "pods", "-A", "-l", "app in (x),tier!=db", "-o",
                           "custom-columns=NS:.metadata.namespace,N:.metadata.name",
                           "--no-headers").stdout.split("\n")
        self.assertEqual([l.split() for l in out if l], [["ns1", "a"], ["ns2", "c"]])
        out = self.kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName=node-b",
                           "-o", "name").stdout.split()
        self.assertEqual(out, ["pod/b"])
        r = self.kubectl("get", "pods", "-A", "--field-selector", "spec.bogus=1", check=False)
        self.assertIn("field label not supported: spec.bogus", r.stderr)


class PythonClientTest(Base):
    """python3-kubernetes (the official client) against the server."""
    server_args = ("--bookmark-interval", "0.5")

    def test_list_with_limit_and_continue(self):
        self.srv.apply(*[pod(f"p{i:02d}", ns="a" if i % 2 else "b") for i in range(25)])
        v1 = kclient.CoreV1Api(self.api_client())
        names, cont, pages, remaining = [], None, 0, []
        first_rv = None
        while True:
            r = v1.list_pod_for_all_namespaces(limit=10, _continue=cont)
            pages += 1
            names += [f"{p.metadata.namespace}/{p.metadata.name}" for p in r.items]
            first_rv = first_rv or r.metadata.resource_version
            # Every page is served at the first page's resourceVersion (a consistent list).
            self.assertEqual(r.metadata.resource_version, first_rv)
            remaining.append(r.metadata.remaining_item_count)
            cont = r.metadata._continue
            if pages == 1:
                # A change between pages does not show up in the rest of this list.
                self.srv.apply(pod("zz-late", ns="b"))
            if not cont:
                break
        self.assertEqual(pages, 3)
        self.assertEqual(remaining, [15, 5, None])
        self.assertEqual(names, sorted(names))
        self.assertEqual(len(names), 25)
        self.assertNotIn("b/zz-late", names)
        ns_list = v1.list_namespaced_pod("a", limit=100)
        self.assertEqual(len(ns_list.items), 12)
        self.assertIsNone(ns_list.metadata._continue)
        sel = v1.list_pod_for_all_namespaces(label_selector="app in (p01,p02,p03)",
                                             field_selector="metadata.namespace=a")
        self.assertEqual([p.metadata.name for p in sel.items], ["p01", "p03"])

    def test_custom_objects(self):
        for i in range(3):
            self.srv.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                            "metadata": {"name": f"ap{i}", "namespace": "default"},
                            "spec": {"action": "DENY"}})
        co = kclient.CustomObjectsApi(self.api_client())
        r = co.list_cluster_custom_object("security.istio.io", "v1", "authorizationpolicies",
                                          limit=2)
        self.assertEqual(r["kind"], "AuthorizationPolicyList")
        self.assertEqual([i["metadata"]["name"] for i in r["items"]], ["ap0", "ap1"])
        # Custom resources' list items keep kind and apiVersion, unlike built-in lists.
        self.assertEqual(r["items"][0]["apiVersion"], "security.istio.io/v1")
        self.assertTrue(r["metadata"]["continue"])
        r = co.list_namespaced_custom_object("security.istio.io", "v1beta1", "default",
                                             "authorizationpolicies")
        self.assertEqual({i["apiVersion"] for i in r["items"]}, {"security.istio.io/v1beta1"})
        created = co.create_namespaced_custom_object(
            "security.istio.io", "v1", "default", "peerauthentications",
            {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
             "metadata": {"name": "pa"}, "spec": {"mtls": {"mode": "STRICT"}}})
        self.assertEqual(created["metadata"]["namespace"], "default")
        with self.assertRaises(ApiException) as e:
            co.create_namespaced_custom_object(
                "security.istio.io", "v1", "default", "peerauthentications",
                {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                 "metadata": {"name": "pa"}})
        self.assertEqual(e.exception.status, 409)
        self.assertEqual(json.loads(e.exception.body)["reason"], "AlreadyExists")
        patched = co.patch_namespaced_custom_object(
            "security.istio.io", "v1", "default", "peerauthentications", "pa",
            {"spec": {"mtls": {"mode": "PERMISSIVE"}}})
        self.assertEqual(patched["spec"]["mtls"]["mode"], "PERMISSIVE")
        self.assertGreater(int(patched["metadata"]["resourceVersion"]),
                           int(created["metadata"]["resourceVersion"]))

    def test_watch_events(self):
        v1 = kclient.CoreV1Api(self.api_client())
        self.srv.apply(pod("pre"))
        lst = v1.list_namespaced_pod("default")
        start_rv = lst.metadata.resource_version
        events = []
        w = kwatch.Watch()

        def drive():
            time.sleep(0.5)
            self.srv.apply(pod("w1"))
            self.srv.apply(pod("w1", labels={"app": "w1", "v": "2"}))
            self.srv.control("delete", kind="Pod", namespace="default", name="w1")

        t = threading.Thread(target=drive)
        t.start()
        for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=start_rv,
                           timeout_seconds=10):
            events.append((ev["type"], ev["object"].metadata.name,
                           int(ev["object"].metadata.resource_version)))
            if ev["type"] == "DELETED":
                w.stop()
        t.join()
        self.assertEqual([e[:2] for e in events], [("ADDED", "w1"), ("MODIFIED", "w1"),
                                                   ("DELETED", "w1")])
        rvs = [e[2] for e in events]
        self.assertEqual(rvs, sorted(rvs))
        self.assertGreater(rvs[0], int(start_rv))
        # Without a resourceVersion the watch starts with the current state as ADDED events.
        got = [(ev["type"], ev["object"].metadata.name)
               for ev in kwatch.Watch().stream(v1.list_namespaced_pod, "default",
                                               timeout_seconds=1)]
        self.assertEqual(got, [("ADDED", "pre")])

    def test_expired_watch_raises_410(self):
        v1 = kclient.CoreV1Api(self.api_client())
        self.srv.apply(pod("a"))
        old = v1.list_namespaced_pod("default").metadata.resource_version
        self.srv.apply(pod("b"))
        self.srv.control("compact")
        with self.assertRaises(ApiException) as e:
            for _ in kwatch.Watch().stream(v1.list_namespaced_pod, "default",
                                           resource_version=old, timeout_seconds=5):
                pass
        self.assertEqual(e.exception.status, 410)
        self.assertIn("Expired", e.exception.reason)
        # Without a timeout the client retries once from the same version, then gives up.
        with self.assertRaises(ApiException) as e:
            for _ in kwatch.Watch().stream(v1.list_namespaced_pod, "default",
                                           resource_version=old):
                pass
        self.assertEqual(e.exception.status, 410)
        # An exact list at the compacted version is a plain HTTP 410.
        with self.assertRaises(ApiException) as e:
            v1.list_namespaced_pod("default", resource_version=old,
                                   resource_version_match="Exact")
        self.assertEqual(e.exception.status, 410)
        self.assertEqual(json.loads(e.exception.body)["reason"], "Expired")

    def test_bookmarks(self):
        v1 = kclient.CoreV1Api(self.api_client())
        self.srv.apply(pod("a"))
        rv = v1.list_namespaced_pod("default").metadata.resource_version
        self.srv.apply(pod("other", ns="elsewhere"))  # moves the global RV, not this watch
        seen = []
        start = time.monotonic()
        for ev in kwatch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv,
                                        allow_watch_bookmarks=True, timeout_seconds=2):
            seen.append(ev)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 1.5)
        self.assertLess(elapsed, 5)
        bms = [e for e in seen if e["type"] == "BOOKMARK"]
        self.assertGreaterEqual(len(bms), 2)  # every 0.5 s, then one at the timeout
        self.assertEqual(len(bms), len(seen))
        for b in bms:
            self.assertEqual(b["raw_object"]["kind"], "Pod")
            self.assertEqual(b["raw_object"]["apiVersion"], "v1")
            self.assertEqual(set(b["raw_object"]["metadata"]), {"resourceVersion",
                                                                "creationTimestamp"})
        # The bookmark carries the server's progress, past the other namespace's change.
        self.assertGreater(int(bms[-1]["raw_object"]["metadata"]["resourceVersion"]), int(rv))
        # No bookmarks unless asked for.
        plain = list(kwatch.Watch().stream(v1.list_namespaced_pod, "default",
                                           resource_version=rv, timeout_seconds=1))
        self.assertEqual(plain, [])

    def test_token_review(self):
        self.srv.control("add_token_review", token="node-token",
                         username="system:serviceaccount:ambit-system:ambit",
                         extra={"authentication.kubernetes.io/node-name": ["node-a"]},
                         audiences=["ambit-ca"])
        authn = kclient.AuthenticationV1Api(self.api_client())

        def review(token, audiences=None):
            return authn.create_token_review(kclient.V1TokenReview(
                spec=kclient.V1TokenReviewSpec(token=token, audiences=audiences)))

        r = review("node-token", ["ambit-ca"])
        self.assertTrue(r.status.authenticated)
        self.assertEqual(r.status.user.username, "system:serviceaccount:ambit-system:ambit")
        self.assertEqual(r.status.user.extra, {"authentication.kubernetes.io/node-name":
                                               ["node-a"]})
        self.assertEqual(r.status.audiences, ["ambit-ca"])
        wrong = review("node-token", ["someone-else"])
        self.assertFalse(wrong.status.authenticated)
        self.assertIn("audiences", wrong.status.error)
        unknown = review("nobody", ["ambit-ca"])
        self.assertFalse(unknown.status.authenticated)
        self.assertTrue(unknown.status.error)
        # As the real server: 201 Created, and TokenReviews cannot be read back.
        st, _, body = self.srv.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "node-token", "audiences": ["ambit-ca"]}})
        self.assertEqual(st, 201)
        self.assertIs(body["status"]["authenticated"], True)
        st, _, body = self.srv.request("GET", "/apis/authentication.k8s.io/v1/tokenreviews")
        self.assertEqual(st, 405)
        self.assertEqual(body["reason"], "MethodNotAllowed")


class AuthTest(Base):

    def test_missing_and_bad_token_get_401_status(self):
        for token in (False, "not-the-token"):
            st, hdrs, body = self.srv.request("GET", "/api/v1/pods", token=token)
            self.assertEqual(st, 401)
            self.assertEqual(hdrs["Content-Type"], "application/json")
            self.assertNotIn("Server", hdrs)
        self.assertIn("Date", hdrs)
        self.assertEqual(body, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "message": "Unauthorized",
                                    "reason": "Unauthorized", "code": 401})
        st, _, _ = self.srv.request("GET", "/api/v1/pods")
        self.assertEqual(st, 200)

    def test_rotated_away_token_gets_401(self):
        old = self.srv.token()
        v1_old = kclient.CoreV1Api(self.api_client(token=old))
        v1_old.list_namespace()
        new = self.srv.control("rotate_token")["token"]
        self.assertNotEqual(new, old)
        self.assertEqual(self.srv.token(), new)  # DIR/token rewritten
        with self.assertRaises(ApiException) as e:
            v1_old.list_namespace()
        self.assertEqual(e.exception.status, 401)
        self.assertEqual(self.srv.request("GET", "/api/v1/namespaces", token=old)[0], 401)
        # Clients that re-read the token file (kubectl's tokenFile) keep working.
        self.assertIn("default", self.kubectl("get", "ns", "-o", "name").stdout)
        v1_new = kclient.CoreV1Api(self.api_client())
        self.assertIn("default", [n.metadata.name for n in v1_new.list_namespace().items])

    def test_tls_identity(self):
        ctx = self.srv.ssl_context()
        for name in ("127.0.0.1", "kubernetes.default.svc"):
            with __import__("socket").create_connection(("127.0.0.1", self.srv.port)) as s:
                with ctx.wrap_socket(s, server_hostname=name) as t:
                    self.assertEqual(t.selected_alpn_protocol(), None)
                    self.assertIn(t.version(), ("TLSv1.2", "TLSv1.3"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with __import__("socket").create_connection(("127.0.0.1", self.srv.port)) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                self.assertEqual(t.selected_alpn_protocol(), "http/1.1")
        with __import__("socket").create_connection(("127.0.0.1", self.srv.port)) as s:
            with self.assertRaises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(s, server_hostname="elsewhere.example")


class FailureTest(Base):

    def test_429_with_retry_after(self):
        self.srv.control("fail_next", n=1, status=429, retry_after=2)
        st, hdrs, body = self.srv.request("GET", "/api/v1/namespaces")
        self.assertEqual(st, 429)
        self.assertEqual(hdrs["Retry-After"], "2")
        self.assertEqual(body["reason"], "TooManyRequests")
        self.assertEqual(body["code"], 429)
        self.assertEqual(body["details"], {"retryAfterSeconds": 2})
        self.assertEqual(self.srv.request("GET", "/api/v1/namespaces")[0], 200)
        # client-go (kubectl) honours Retry-After: it sends the same request again, no sooner.
        seen = len(self.srv.requests())
        self.srv.control("fail_next", n=2, status=429, retry_after=1)
        self.assertIn("namespace/default", self.kubectl("get", "ns", "-o", "name").stdout)
        after = self.srv.requests()[seen:]
        self.assertEqual([q["status"] for q in after[:3]], [429, 429, 200])
        self.assertEqual(len({(q["path"], json.dumps(q["query"])) for q in after[:3]}), 1)
        self.assertGreaterEqual(after[1]["time"] - after[0]["time"], 0.9)
        self.assertGreaterEqual(after[2]["time"] - after[1]["time"], 0.9)
        self.assertIn("/api/v1/namespaces", [q["path"] for q in after])

    def test_5xx(self):
        self.srv.control("fail_next", n=1, status=503, retry_after=1)
        st, hdrs, body = self.srv.request("GET", "/api/v1/pods")
        self.assertEqual((st, hdrs["Retry-After"], body["reason"]),
                         (503, "1", "ServiceUnavailable"))
        self.srv.control("fail_next", n=1, status=500)
        v1 = kclient.CoreV1Api(self.api_client())
        with self.assertRaises(ApiException) as e:
            v1.list_pod_for_all_namespaces()
        self.assertEqual(e.exception.status, 500)
        self.assertIsNone(e.exception.headers.get("Retry-After"))
        v1.list_pod_for_all_namespaces()

    def test_slow_server(self):
        self.srv.control("set_delay", seconds=1.5)
        v1 = kclient.CoreV1Api(self.api_client())
        start = time.monotonic()
        v1.list_namespace()
        self.assertGreaterEqual(time.monotonic() - start, 1.5)
        with self.assertRaises(Exception) as e:
            v1.list_namespace(_request_timeout=(5, 0.5))
        self.assertIn("timed out", str(e.exception).lower())
        self.srv.control("set_delay", seconds=0)
        start = time.monotonic()
        v1.list_namespace()
        self.assertLess(time.monotonic() - start, 1.0)


class WatchProtocolTest(Base):
    """The watch wire format read byte by byte."""
    server_args = ("--bookmark-interval", "0.3")

    def watch(self, path, **kw):
        r = ChunkedReader(self.srv, path, **kw)
        self.addCleanup(r.close)
        return r

    def test_chunked_events_and_clean_timeout(self):
        self.srv.apply(pod("a"))
        r = self.watch("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["transfer-encoding"], "chunked")
        self.assertEqual(r.headers["content-type"], "application/json")
        ev = r.next()
        self.assertEqual(ev["type"], "ADDED")
        self.assertEqual((ev["object"]["kind"], ev["object"]["apiVersion"]), ("Pod", "v1"))
        start = time.monotonic()
        self.assertIsNone(r.next())  # timeoutSeconds ends it with the zero-length chunk
        self.assertTrue(r.ended)
        self.assertLess(time.monotonic() - start, 3)

    def test_compacted_rv_is_one_error_event(self):
        self.srv.apply(pod("a"))
        self.srv.apply(pod("b"))
        st, _, lst = self.srv.request("GET", "/api/v1/pods")
        old = self.rv(lst) - 1
        self.srv.control("compact")
        r = self.watch(f"/api/v1/pods?watch=true&resourceVersion={old}")
        self.assertEqual(r.status, 200)
        ev = r.next()
        self.assertEqual(ev["type"], "ERROR")
        self.assertEqual(ev["object"]["kind"], "Status")
        self.assertEqual(ev["object"]["code"], 410)
        self.assertEqual(ev["object"]["reason"], "Expired")
        self.assertEqual(ev["object"]["status"], "Failure")
        self.assertIsNone(r.next())
        # The current version is still good after compaction.
        r2 = self.watch(f"/api/v1/pods?watch=true&resourceVersion={self.rv(lst)}"
                        "&timeoutSeconds=1")
        self.assertIsNone(r2.next())
        # An exact (paginated) list at the old version gets HTTP 410, a not-older-than one 200.
        st, _, body = self.srv.request("GET", f"/api/v1/pods?limit=1&resourceVersion={old}")
        self.assertEqual((st, body["reason"], body["code"]), (410, "Expired", 410))
        st, _, body = self.srv.request("GET", f"/api/v1/pods?resourceVersion={old}")
        self.assertEqual(st, 200)
        self.assertEqual(len(body["items"]), 2)

    def test_continue_token_expires_with_compaction(self):
        self.srv.apply(*[pod(f"p{i}") for i in range(4)])
        st, _, page = self.srv.request("GET", "/api/v1/pods?limit=2")
        self.assertEqual(page["metadata"]["remainingItemCount"], 2)
        cont = page["metadata"]["continue"]
        st, _, page2 = self.srv.request("GET", f"/api/v1/pods?limit=2&continue={cont}")
        self.assertEqual(st, 200)
        self.srv.apply(pod("p9"))
        self.srv.control("compact")
        st, _, body = self.srv.request("GET", f"/api/v1/pods?limit=2&continue={cont}")
        self.assertEqual((st, body["reason"]), (410, "Expired"))
        st, _, body = self.srv.request("GET", "/api/v1/pods?limit=2&continue=garbage")
        self.assertEqual(st, 400)

    def test_selectors_turn_changes_into_added_and_deleted(self):
        self.srv.apply(pod("a", node="node-a"), pod("b", node="node-b"))
        _, _, lst = self.srv.request("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a")
        self.assertEqual([p["metadata"]["name"] for p in lst["items"]], ["a"])
        r = self.watch("/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dnode-a"
                       f"&resourceVersion={self.rv(lst)}")
        self.srv.apply(pod("b", node="node-a"))  # moves in
        self.srv.apply(pod("a", node="node-c"))  # moves out
        self.srv.apply(pod("c", node="node-z"))  # never matches
        self.srv.apply(pod("b", node="node-a", labels={"x": "1"}))
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in
               (r.next(), r.next(), r.next())]
        self.assertEqual(got, [("ADDED", "b"), ("DELETED", "a"), ("MODIFIED", "b")])
        # Set-based label selectors.
        self.srv.apply(pod("l1", labels={"env": "prod", "team": "x"}),
                       pod("l2", labels={"env": "dev"}), pod("l3", labels={"team": "y"}))
        for sel, want in [("env in (prod,dev)", ["l1", "l2"]), ("env notin (prod)", ["l2", "l3"]),
                          ("team", ["l1", "l3"]), ("!team,env", ["l2"]),
                          ("env=prod,team==x", ["l1"]), ("env!=dev,team", ["l1", "l3"])]:
            import urllib.parse
            _, _, lst = self.srv.request(
                "GET", "/api/v1/namespaces/default/pods?labelSelector=" +
                urllib.parse.quote(sel))
            names = [p["metadata"]["name"] for p in lst["items"]
                     if p["metadata"]["name"].startswith("l")]
            self.assertEqual(names, want, sel)
        st, _, body = self.srv.request("GET", "/api/v1/pods?labelSelector=a%20in%20(b")
        self.assertEqual((st, body["reason"]), (400, "BadRequest"))

    def test_watch_replays_from_rv_and_bookmarks(self):
        self.srv.apply(pod("a"))
        _, _, lst = self.srv.request("GET", "/api/v1/pods")
        rv = self.rv(lst)
        self.srv.apply(pod("b"))
        self.srv.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "cm", "namespace": "default"}})
        self.srv.control("delete", kind="Pod", namespace="default", name="a")
        r = self.watch(f"/api/v1/pods?watch=1&resourceVersion={rv}&allowWatchBookmarks=true")
        e1, e2, e3 = r.next(), r.next(), r.next()
        self.assertEqual([(e["type"], e["object"]["metadata"]["name"]) for e in (e1, e2)],
                         [("ADDED", "b"), ("DELETED", "a")])
        # The DELETED object carries the deletion's own resourceVersion; the configmap's change
        # lies between, unseen by a pod watch.
        self.assertEqual(int(e2["object"]["metadata"]["resourceVersion"]),
                         int(e1["object"]["metadata"]["resourceVersion"]) + 2)
        self.assertEqual(e3["type"], "BOOKMARK")
        self.assertEqual(e3["object"]["metadata"]["resourceVersion"],
                         e2["object"]["metadata"]["resourceVersion"])

    def test_dropped_watch_ends_mid_stream(self):
        r = self.watch("/api/v1/pods?watch=1")
        self.srv.apply(pod("a"))
        self.assertEqual(r.next()["type"], "ADDED")
        self.assertEqual(self.srv.control("drop_watches")["dropped"], 1)
        with self.assertRaises((EOFError, ssl.SSLError, ConnectionError)):
            r.next()
        self.assertFalse(r.ended)
        r2 = self.watch("/api/v1/pods?watch=1&resourceVersion=" +
                        str(self.rv(self.srv.request("GET", "/api/v1/pods")[2])))
        self.assertEqual(self.srv.control("drop_watches", clean=True)["dropped"], 1)
        self.assertIsNone(r2.next())

    def test_table_watch_omits_repeated_columns(self):
        self.srv.apply(pod("a"))
        c = self.srv.conn()
        c.request("GET", "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=2", headers={
            "Authorization": f"Bearer {self.srv.token()}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
        resp = c.getresponse()
        threading.Timer(0.3, lambda: self.srv.apply(pod("b"))).start()
        lines = [json.loads(l) for l in resp.read().splitlines() if l]
        c.close()
        self.assertEqual([l["object"]["kind"] for l in lines], ["Table", "Table"])
        self.assertIn("columnDefinitions", lines[0]["object"])
        self.assertNotIn("columnDefinitions", lines[1]["object"])
        self.assertEqual(lines[1]["object"]["rows"][0]["cells"][0], "b")


class StandaloneTest(unittest.TestCase):
    """The command line: --objects files loaded before serving, a bad one refused."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="fakeapi-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_objects_files(self):
        a = self.write("a.yaml", """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
""")
        b = self.write("b.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            pod("p1", ns="apps"), pod("p2", ns="apps")]}))
        srv = ServerProcess("--objects", a, "--objects", b)
        self.addCleanup(srv.close)
        srv.control("apply", **pod("p3", ns="apps"))
        srv.control("apply", yaml="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
        self.assertEqual(srv.request("GET", "/api/v1/namespaces/default/configmaps/c")[0], 200)
        st, _, body = srv.request("GET", "/api/v1/namespaces/apps/pods")
        self.assertEqual([p["metadata"]["name"] for p in body["items"]], ["p1", "p2", "p3"])
        self.assertEqual(body["items"][0]["status"]["phase"], "Running")
        st, _, body = srv.request("GET", "/apis/security.istio.io/v1/peerauthentications")
        self.assertEqual(body["items"][0]["metadata"]["namespace"], "istio-system")
        self.assertEqual(body["items"][0]["apiVersion"], "security.istio.io/v1")
        st, _, ns = srv.request("GET", "/api/v1/namespaces/apps")
        self.assertEqual(ns["metadata"]["labels"]["istio.io/dataplane-mode"], "ambient")
        srv.proc.send_signal(signal.SIGTERM)
        self.assertEqual(srv.proc.wait(timeout=10), 0)

    def test_bad_objects_file(self):
        bad = self.write("bad.yaml", "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n")
        r = subprocess.run([PYTHON, os.path.join(HERE, "fake_apiserver.py"), "--state-dir",
                            os.path.join(self.dir, "s"), "--objects", bad],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertNotIn("listening", r.stdout)
        self.assertIn("bad.yaml", r.stderr)
        self.assertIn("Widget", r.stderr)


class MalformedInputTest(Base):
    """Bad requests get a clear error and leave the server serving."""

    def raw(self, data):
        import socket
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=10) as s:
            with self.srv.ssl_context().wrap_socket(s, server_hostname="127.0.0.1") as t:
                t.sendall(data)
                out = b""
                while True:
                    try:
                        chunk = t.recv(65536)
                    except (ssl.SSLError, ConnectionError):
                        break
                    if not chunk:
                        break
                    out += chunk
                return out

    def test_bad_requests(self):
        tok = self.srv.token()
        st, _, body = self.srv.request("POST", "/api/v1/namespaces/default/pods", "{not json",
                                       headers={"Content-Type": "application/json"})
        self.assertEqual((st, body["reason"]), (400, "BadRequest"))
        st, _, body = self.srv.request("POST", "/api/v1/namespaces/default/pods", [1, 2])
        self.assertEqual(st, 400)
        st, _, body = self.srv.request("POST", "/api/v1/namespaces/default/pods",
                                       {"kind": "Service", "metadata": {"name": "x"}})
        self.assertEqual(st, 400)
        st, _, body = self.srv.request("POST", "/api/v1/namespaces/default/pods",
                                       {"kind": "Pod", "metadata": {"name": "Bad_Name"}})
        self.assertEqual((st, body["reason"], body["details"]["causes"][0]["field"]),
                         (422, "Invalid", "metadata.name"))
        st, _, body = self.srv.request("PATCH", "/api/v1/namespaces/default/namespaces/x", "{}")
        self.assertEqual(st, 404)
        st, _, body = self.srv.request("PATCH", "/api/v1/namespaces/default", "{}",
                                       headers={"Content-Type": "text/plain"})
        self.assertEqual((st, body["reason"]), (415, "UnsupportedMediaType"))
        st, _, body = self.srv.request(
            "PATCH", "/apis/security.istio.io/v1/namespaces/default/peerauthentications/x",
            "{}", headers={"Content-Type": "application/strategic-merge-patch+json"})
        self.assertEqual((st, body["reason"]), (415, "UnsupportedMediaType"))
        st, _, body = self.srv.request("GET", "/api/v1/pods?limit=abc")
        self.assertEqual(st, 400)
        st, _, body = self.srv.request("GET", "/api/v1/pods?watch=1&resourceVersion=abc")
        self.assertEqual(st, 400)
        st, _, body = self.srv.request("GET", "/api/v1/pods",
                                       headers={"Accept": "application/vnd.kubernetes.protobuf"})
        self.assertEqual((st, body["reason"]), (406, "NotAcceptable"))
        st, _, body = self.srv.request("POST", "/api/v1/pods", {"kind": "Pod", "metadata": {
            "name": "x", "namespace": "default"}})
        self.assertEqual((st, body["reason"]), (405, "MethodNotAllowed"))
        st, _, body = self.srv.request("GET", "/api/v1/pods/x")
        self.assertEqual(st, 404)
        st, _, body = self.srv.request("GET", "/apis/nonexistent.io/v1/things")
        self.assertEqual((st, body["reason"]), (404, "NotFound"))
        self.assertIn(b"400", self.raw(b"NONSENSE\r\n\r\n").split(b"\r\n")[0])
        self.assertIn(b" 400 ", self.raw(
            b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nAuthorization: "
            b"Bearer " + tok.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .split(b"\r\n")[0])
        # Still serving.
        self.assertEqual(self.srv.request("GET", "/api/v1/pods")[0], 200)
        self.assertEqual(self.srv.proc.poll(), None)


class CurlTest(Base):
    """curl (libcurl, as the agent's client uses it) against the server."""

    def curl(self, path, *extra, timeout=30):
        r = subprocess.run(["curl", "-sS", "--fail-with-body", "--cacert", self.srv.ca,
                            "--resolve", f"kubernetes.default.svc:{self.srv.port}:127.0.0.1",
                            "-H", f"Authorization: Bearer {self.srv.token()}",
                            *extra, f"https://kubernetes.default.svc:{self.srv.port}{path}"],
                           capture_output=True, text=True, timeout=timeout)
        return r

    def test_watch_events_arrive_as_they_happen(self):
        self.srv.apply(pod("a"))
        w = subprocess.Popen(["curl", "-sS", "-N", "--cacert", self.srv.ca, "-H",
                              f"Authorization: Bearer {self.srv.token()}",
                              f"https://127.0.0.1:{self.srv.port}/api/v1/namespaces/default/"
                              "pods?watch=1&timeoutSeconds=10"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(json.loads(w.stdout.readline())["type"], "ADDED")
            self.srv.apply(pod("a", labels={"v": "2"}))
            ev = json.loads(w.stdout.readline())  # before the stream ends: flushed per event
            self.assertEqual((ev["type"], ev["object"]["metadata"]["labels"]),
                             ("MODIFIED", {"v": "2"}))
            self.assertIsNone(w.poll())
        finally:
            w.kill()
            w.wait()
            w.stdout.close()
            w.stderr.close()

    def test_server_name_and_http11(self):
        r = self.curl("/api/v1/namespaces/default", "-w", "\n%{http_version}")
        self.assertEqual(r.returncode, 0, r.stderr)
        body, version = r.stdout.rsplit("\n", 1)
        self.assertEqual(json.loads(body)["metadata"]["name"], "default")
        self.assertEqual(version, "1.1")
        r = self.curl("/api/v1/namespaces/nope")
        self.assertEqual(r.returncode, 22)
        self.assertEqual(json.loads(r.stdout)["code"], 404)


class InProcessTest(unittest.TestCase):
    """The same server used from Python in-process (FakeApiServer), as the e2e tests do."""

    def setUp(self):
        sys.path.insert(0, HERE)
        self.addCleanup(sys.path.remove, HERE)
        from fake_apiserver import FakeApiServer
        self.dir = tempfile.mkdtemp(prefix="fakeapi-inproc-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.srv = FakeApiServer(self.dir, bookmark_interval=0.5)
        self.port = self.srv.start()
        self.addCleanup(self.srv.stop)

    def client(self):
        cfg = kclient.Configuration()
        kconfig.load_kube_config(config_file=os.path.join(self.dir, "kubeconfig"),
                                 client_configuration=cfg)
        api = kclient.ApiClient(cfg)
        self.addCleanup(api.rest_client.pool_manager.clear)
        return kclient.CoreV1Api(api)

    def test_controls(self):
        for f in ("ca.crt", "token", "kubeconfig"):
            self.assertTrue(os.path.exists(os.path.join(self.dir, f)), f)
        v1 = self.client()
        self.srv.apply("""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: apps, annotations: {ambit.dev/netns: /run/netns/a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: apps}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
""")
        pods = v1.list_namespaced_pod("apps")
        self.assertEqual([p.metadata.name for p in pods.items], ["a", "b"])
        # The server keeps its own copy: changing the applied dict changes nothing there, and
        # applying it again is a change.
        mine = pod("c", ns="apps")
        self.srv.apply(mine)
        rv = self.srv.resource_version()
        mine["metadata"]["labels"]["v"] = "2"
        self.assertNotIn("v", self.srv.get("Pod", "apps", "c")["metadata"]["labels"])
        self.assertEqual(self.srv.apply(mine)["metadata"]["resourceVersion"], str(rv + 1))
        self.assertEqual(self.srv.apply(mine)["metadata"]["resourceVersion"], str(rv + 1))
        self.srv.delete("Pod", "apps", "c")
        self.assertEqual(pods.items[0].status.pod_ip, "198.18.0.5")  # status kept as applied
        self.assertIsNotNone(self.srv.delete("Pod", "apps", "b"))
        self.assertIsNone(self.srv.delete("Pod", "apps", "b"))
        self.assertEqual([p.metadata.name for p in v1.list_namespaced_pod("apps").items], ["a"])
        reqs = self.srv.requests()
        self.assertEqual(reqs[0], ("GET", "/api/v1/namespaces/apps/pods", {}))
        method, path, query = reqs[-1]
        self.assertEqual((method, path), ("GET", "/api/v1/namespaces/apps/pods"))

        # urllib3 under the client honours Retry-After on a 429 by itself.
        self.srv.fail_next(1, 429, retry_after=1)
        self.assertEqual(len(v1.list_namespaced_pod("apps").items), 1)
        log = self.srv.request_log()[-2:]
        self.assertEqual([r["status"] for r in log], [429, 200])
        self.assertGreaterEqual(log[1]["time"] - log[0]["time"], 0.9)
        self.srv.fail_next(1, 504)
        with self.assertRaises(ApiException) as e:
            v1.list_namespaced_pod("apps")
        self.assertEqual(e.exception.status, 504)

        old = self.srv.token
        self.srv.rotate_token()
        with open(os.path.join(self.dir, "token")) as f:
            self.assertEqual(f.read().strip(), self.srv.token)
        self.assertNotEqual(old, self.srv.token)
        with self.assertRaises(ApiException) as e:
            v1.list_namespaced_pod("apps")  # this client holds the old token
        self.assertEqual(e.exception.status, 401)
        self.assertEqual(len(self.client().list_namespaced_pod("apps").items), 1)

    def test_compact_and_stop_end_watches(self):
        v1 = self.client()
        self.srv.apply(pod("a"))
        rv = v1.list_namespaced_pod("default").metadata.resource_version
        self.srv.apply(pod("b"))
        self.srv.compact()
        with self.assertRaises(ApiException) as e:
            list(kwatch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv,
                                       timeout_seconds=5))
        self.assertEqual(e.exception.status, 410)
        # A watch open when the server stops ends instead of hanging.
        got, errors = [], []

        def watch():
            try:
                for ev in kwatch.Watch().stream(self.client().list_namespaced_pod, "default",
                                                _request_timeout=(5, 30)):
                    got.append(ev["type"])
            except Exception as ex:  # the connection drops: any client error will do
                errors.append(ex)

        t = threading.Thread(target=watch)
        t.start()
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(got, ["ADDED", "ADDED"])
        self.srv.stop()
        t.join(timeout=10)
        self.assertFalse(t.is_alive())
        # The port is free again.
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.close()

    def test_closed_watch_is_reaped(self):
        self.srv.apply(pod("a"))
        ctx = ssl.create_default_context(cafile=os.path.join(self.dir, "ca.crt"))
        for graceful in (True, False):
            c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
            c.request("GET", "/api/v1/pods?watch=1",
                      headers={"Authorization": f"Bearer {self.srv.token}"})
            r = c.getresponse()
            self.assertEqual(json.loads(r.readline())["type"], "ADDED")
            self.assertEqual(self.srv.watches(), [("pods", "", {"watch": "1"})])
            self.assertEqual(self.srv.wait_for_request(lambda q: "watch" in q.query).path,
                             "/api/v1/pods")
            self.assertIsNone(self.srv.wait_for_request(lambda q: q.method == "PUT", 0.2))
            if graceful:
                c.sock.unwrap()  # TLS close_notify first
            c.close()
            deadline = time.monotonic() + 5
            while True:
                if not self.srv.watches():
                    break
                self.assertLess(time.monotonic(), deadline, "watch outlived its client")
                time.sleep(0.1)

    def test_send_initial_events(self):
        self.srv.apply(pod("a"))
        rv = self.srv.resource_version()
        c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                        context=ssl.create_default_context(
                                            cafile=os.path.join(self.dir, "ca.crt")))
        c.request("GET", "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true"
                  "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
                  "&timeoutSeconds=1", headers={"Authorization": f"Bearer {self.srv.token}"})
        lines = [json.loads(l) for l in c.getresponse().read().splitlines()]
        c.close()
        self.assertEqual(lines[0]["type"], "ADDED")
        self.assertEqual(lines[1]["type"], "BOOKMARK")
        self.assertEqual(lines[1]["object"]["metadata"]["annotations"],
                         {"k8s.io/initial-events-end": "true"})
        self.assertEqual(lines[1]["object"]["metadata"]["resourceVersion"], str(rv))


class ScaleTest(Base):

    def test_watchers_during_bulk_load(self):
        """Ten node agents' watches (spec.nodeName) while 10 000 pods arrive: each sees exactly
        its node's pods, in resourceVersion order."""
        _, _, lst = self.srv.request("GET", "/api/v1/pods")
        rv = lst["metadata"]["resourceVersion"]
        readers = [ChunkedReader(self.srv, "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3D"
                                 f"node-{n}&resourceVersion={rv}&timeoutSeconds=60")
                   for n in range(10)]
        for r in readers:
            self.addCleanup(r.close)
        got = [[] for _ in readers]

        def read(i):
            while len(got[i]) < 200:
                ev = readers[i].next()
                if ev is None:
                    return
                got[i].append(ev)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        start = time.monotonic()
        self.srv.control("apply", objects=[pod(f"pod-{i:05d}", ns=f"ns-{i % 10}",
                                               node=f"node-{i % 50}") for i in range(10000)])
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - start
        print(f"\n10 watchers, 10000 pods: all events in {elapsed:.2f}s", file=sys.stderr)
        for n, evs in enumerate(got):
            self.assertEqual(len(evs), 200, f"node-{n}")
            self.assertTrue(all(e["type"] == "ADDED" and
                                e["object"]["spec"]["nodeName"] == f"node-{n}" for e in evs))
            rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
            self.assertEqual(rvs, sorted(rvs))
        self.assertLess(elapsed, 30)

    def test_10000_pods(self):
        pods = [pod(f"pod-{i:05d}", ns=f"ns-{i % 10}", node=f"node-{i % 50}",
                    ip=f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(10000)]
        start = time.monotonic()
        self.srv.control("apply", objects=pods)
        applied = time.monotonic() - start
        v1 = kclient.CoreV1Api(self.api_client())
        start = time.monotonic()
        names, cont, pages = [], None, 0
        while True:
            r = v1.list_pod_for_all_namespaces(limit=500, _continue=cont,
                                               _preload_content=False)
            body = json.loads(r.data)
            pages += 1
            names += [p["metadata"]["name"] for p in body["items"]]
            cont = body["metadata"].get("continue")
            if not cont:
                break
        listed = time.monotonic() - start
        print(f"\n10000 pods: applied in {applied:.2f}s, listed in {pages} pages in "
              f"{listed:.2f}s", file=sys.stderr)
        self.assertEqual(pages, 20)
        self.assertEqual(len(names), 10000)
        self.assertEqual(len(set(names)), 10000)
        self.assertLess(applied, 10)
        self.assertLess(listed, 10)
        # A node's pods by field selector, as the agent asks for them.
        r = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-7")
        self.assertEqual(len(r.items), 200)
        self.assertTrue(all(p.spec.node_name == "node-7" for p in r.items))
        # kubectl pages through them too.
        out = self.kubectl("get", "pods", "-A", "--chunk-size=2000", "--no-headers",
                           "-o", "name", timeout=120).stdout.split()
        self.assertEqual(len(out), 10000)


if __name__ == "__main__":
    unittest.main()
