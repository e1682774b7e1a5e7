#!/usr/bin/env python3
"""A test double of istiod's xDS server, as ztunnel sees it.

    from fake_istiod import FakeIstiod
    istiod = FakeIstiod(state_dir, token="t0k3n"); istiod.start()

Stands in for istiod (which cannot run here: it needs a Kubernetes API server and its whole
control plane) on the one protocol ambitd speaks to it: gRPC over TLS,
envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources, with resources of
type.googleapis.com/istio.workload.Address (workloads named by uid, services by
"<namespace>/<hostname>") and type.googleapis.com/istio.security.Authorization (named
"<namespace>/<name>"). Like istiod it checks the bearer token (UNAUTHENTICATED otherwise), answers
each type's first request of a stream with every resource the client lacks or holds at another
version (initial_resource_versions) plus the removals of names it holds that are gone, pushes each
change as a delta (resources or removed_resources) with a fresh nonce to every open stream, and
expects an ACK or NACK (response_nonce, error_detail) for each.

Messages come from the repository's protos (proto/...), compiled at start-up with
`protoc --python_out`, so the double and ambitd share field numbers; the service is registered as
a generic grpcio handler under Envoy's method name.

Scripting, for the tests: set()/remove() change resources (pushed at once), hold(type) keeps a
type's first response back (readiness must wait for it), release(type) sends it, drop_streams()
ends every stream with UNAVAILABLE, push_raw() sends a response exactly as given. requests()
returns every request received, decoded (node id and metadata, type, initial_resource_versions,
nonce, error_detail, the stream it came on and the metadata of that stream).
"""

import atexit
import concurrent.futures
import importlib
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")
PROTOS = [
    "google/rpc/status.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
]
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION = "type.googleapis.com/istio.security.Authorization"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

_pb = None


def protos():
    """(discovery_pb2, workload_pb2, authorization_pb2), compiled once per process."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="fake-istiod-pb-")
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        subprocess.run(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}"] + PROTOS, check=True)
        sys.path.insert(0, out)
        _pb = (importlib.import_module("envoy.service.discovery.v3.discovery_pb2"),
               importlib.import_module("istio.workload.workload_pb2"),
               importlib.import_module("istio.security.authorization_pb2"))
    return _pb


def make_certs(state_dir):
    """A CA and a server certificate for 127.0.0.1 and istiod.istio-system.svc (openssl CLI)."""
    ca_key, ca_crt = os.path.join(state_dir, "ca.key"), os.path.join(state_dir, "root-cert.pem")
    key, csr, crt = (os.path.join(state_dir, n) for n in ("istiod.key", "istiod.csr", "istiod.crt"))
    ext = os.path.join(state_dir, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:istiod.istio-system.svc\n"
                "extendedKeyUsage=serverAuth\n")
    q = dict(check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key, "-out", ca_crt,
                    "-days", "2", "-subj", "/O=cluster.local/CN=fake istiod root"], **q)
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=istiod"], **q)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext], **q)
    return ca_crt, key, crt


# ---- resources, built the way istiod fills them ----

def ip_bytes(ip):
    import ipaddress
    return ipaddress.ip_address(ip).packed


def workload(uid, name, namespace, service_account, node, ips, hbone=True, waypoint=None,
             policies=(), services=(), trust_domain="", canonical_name="", workload_name="",
             canonical_revision="latest"):
    """An Address holding a Workload. waypoint: (namespace, hostname); services: hostnames
    "<namespace>/<hostname>"."""
    _, wl, _ = protos()
    w = wl.Workload(uid=uid, name=name, namespace=namespace, service_account=service_account,
                    node=node, trust_domain=trust_domain,
                    tunnel_protocol=wl.HBONE if hbone else wl.NONE,
                    canonical_name=canonical_name or name, canonical_revision=canonical_revision,
                    workload_name=workload_name or name, workload_type=wl.POD,
                    cluster_id="Kubernetes")
    w.addresses.extend(ip_bytes(ip) for ip in ips)
    w.authorization_policies.extend(policies)
    for s in services:
        w.services[s].ports.add(service_port=80, target_port=8080)
    if waypoint:
        w.waypoint.hostname.namespace, w.waypoint.hostname.hostname = waypoint
        w.waypoint.hbone_mtls_port = 15008
    return wl.Address(workload=w)


def service(name, namespace, vips, ports=((80, 8080),), waypoint=None):
    _, wl, _ = protos()
    s = wl.Service(name=name, namespace=namespace,
                   hostname=f"{name}.{namespace}.svc.cluster.local")
    for ip in vips:
        s.addresses.add(network="", address=ip_bytes(ip))
    for sp, tp in ports:
        s.ports.add(service_port=sp, target_port=tp, app_protocol=wl.HTTP11)
    if waypoint:
        s.waypoint.hostname.namespace, s.waypoint.hostname.hostname = waypoint
    return wl.Address(service=s)


def authorization(name, namespace, action="ALLOW", scope="WORKLOAD_SELECTOR", rules=(),
                  dry_run=False):
    """rules: a list of rules, each a list of clauses, each a list of Match keyword dicts, e.g.
    [[[{"principals": [{"exact": "cluster.local/ns/a/sa/b"}]}]]]."""
    _, _, sec = protos()
    a = sec.Authorization(name=name, namespace=namespace, dry_run=dry_run,
                          action=getattr(sec, action) if isinstance(action, str) else action,
                          scope=getattr(sec, scope) if isinstance(scope, str) else scope)
    for rule in rules:
        r = a.rules.add()
        for clause in rule:
            c = r.clauses.add()
            for match in clause:
                m = c.matches.add()
                for field, values in match.items():
                    for v in values:
                        if field.endswith("ports"):
                            getattr(m, field).append(v)
                        elif field.endswith("_ips"):
                            ip, length = v.split("/")
                            getattr(m, field).add(address=ip_bytes(ip), length=int(length))
                        elif field.endswith("service_accounts"):
                            ns, sa = v.split("/")
                            getattr(m, field).add(namespace=ns, serviceAccount=sa)
                        else:
                            sm = getattr(m, field).add()
                            (k, val), = v.items()
                            if k == "presence":
                                sm.presence.SetInParent()
                            else:
                                setattr(sm, k, val)
    return a


def name_of(type_url, message):
    if type_url == AUTHORIZATION:
        return f"{message.namespace}/{message.name}"
    if message.HasField("workload"):
        return message.workload.uid
    return f"{message.service.namespace}/{message.service.hostname}"


class _Stream:
    def __init__(self, sid, metadata):
        self.id = sid
        self.metadata = metadata
        self.q = queue.Queue()
        self.subscribed = set()
        self.versions = {}  # type -> {name: version} the client holds, as far as we sent


class FakeIstiod:
    def __init__(self, state_dir, token="xds-token", listen="127.0.0.1:0"):
        os.makedirs(state_dir, exist_ok=True)
        self.state_dir = state_dir
        self.token = token
        self.token_file = os.path.join(state_dir, "token")
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        self.root_cert, self._key, self._crt = make_certs(state_dir)
        self.listen = listen
        self.lock = threading.Lock()
        self.resources = {ADDRESS: {}, AUTHORIZATION: {}}  # type -> {name: (version, bytes)}
        self.held = set()
        self.streams = {}
        self._requests = []
        self._next_stream = 0
        self._nonce = 0
        self._version = 0
        self.server = None
        self.port = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        pb, _, _ = protos()
        self.pb = pb
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._serve,
                request_deserializer=pb.DeltaDiscoveryRequest.FromString,
                response_serializer=pb.DeltaDiscoveryResponse.SerializeToString)})
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((handler,))
        with open(self._key, "rb") as k, open(self._crt, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        self.port = self.server.add_secure_port(self.listen, creds)
        self.server.start()
        return self

    def stop(self):
        if self.server is not None:
            self.drop_streams()
            self.server.stop(0)
            self.server = None

    # ---- scripting ----

    def set(self, message, type_url=None):
        """Adds or replaces a resource (an Address or an Authorization) and pushes it."""
        type_url = type_url or (AUTHORIZATION if type(message).__name__ == "Authorization"
                                else ADDRESS)
        return self.set_raw(type_url, name_of(type_url, message), message.SerializeToString())

    def set_raw(self, type_url, name, data):
        with self.lock:
            self._version += 1
            version = str(self._version)
            self.resources[type_url][name] = (version, data)
            for s in self.streams.values():
                if type_url in s.subscribed and type_url not in self.held:
                    self._send(s, type_url, {name: (version, data)}, [])
        return version

    def remove(self, type_url, name):
        with self.lock:
            self.resources[type_url].pop(name, None)
            for s in self.streams.values():
                if type_url in s.subscribed and type_url not in self.held:
                    self._send(s, type_url, {}, [name])

    def hold(self, type_url):
        with self.lock:
            self.held.add(type_url)

    def release(self, type_url):
        with self.lock:
            self.held.discard(type_url)
            for s in self.streams.values():
                if type_url in s.subscribed:
                    self._initial(s, type_url)

    def push_raw(self, type_url, resources, removed=()):
        """Sends one response as given: resources is {name: (version, type_url_of_any, bytes)}."""
        with self.lock:
            for s in self.streams.values():
                resp = self.pb.DeltaDiscoveryResponse(type_url=type_url,
                                                      removed_resources=list(removed))
                for name, (version, any_type, data) in resources.items():
                    r = resp.resources.add(name=name, version=version)
                    r.resource.type_url = any_type
                    r.resource.value = data
                resp.nonce = self._new_nonce()
                s.q.put(resp)

    def drop_streams(self):
        """Ends every open stream with UNAVAILABLE (as istiod does when it restarts)."""
        with self.lock:
            for s in self.streams.values():
                s.q.put("drop")

    def stream_count(self):
        with self.lock:
            return len(self.streams)

    def requests(self):
        with self.lock:
            return list(self._requests)

    # ---- the protocol ----

    def _new_nonce(self):
        self._nonce += 1
        return f"n{self._nonce}"

    def _send(self, s, type_url, resources, removed):
        resp = self.pb.DeltaDiscoveryResponse(type_url=type_url, removed_resources=list(removed),
                                              system_version_info=str(self._version))
        for name, (version, data) in sorted(resources.items()):
            r = resp.resources.add(name=name, version=version)
            r.resource.type_url = type_url
            r.resource.value = data
        resp.nonce = self._new_nonce()
        held = s.versions.setdefault(type_url, {})
        for name, (version, _) in resources.items():
            held[name] = version
        for name in removed:
            held.pop(name, None)
        s.q.put(resp)

    def _initial(self, s, type_url):
        """The first response of a type on a stream: what the client lacks, and its removals."""
        have = s.versions.get(type_url, {})
        current = self.resources[type_url]
        send = {n: v for n, v in current.items() if have.get(n) != v[0]}
        gone = [n for n in have if n not in current]
        self._send(s, type_url, send, gone)

    def _record(self, s, req):
        entry = {
            "stream": s.id, "type_url": req.type_url, "node_id": req.node.id,
            "node_metadata": {k: v.string_value for k, v in req.node.metadata.fields.items()},
            "subscribe": list(req.resource_names_subscribe),
            "initial_resource_versions": dict(req.initial_resource_versions),
            "response_nonce": req.response_nonce,
            "error_detail": req.error_detail.message if req.HasField("error_detail") else None,
            "authorization": s.metadata.get("authorization"),
            "clusterid": s.metadata.get("clusterid"),
        }
        self._requests.append(entry)

    def _serve(self, request_iterator, context):
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failure")
        with self.lock:
            self._next_stream += 1
            s = _Stream(self._next_stream, metadata)
            self.streams[s.id] = s

        def reader():
            try:
                for req in request_iterator:
                    with self.lock:
                        self._record(s, req)
                        if req.response_nonce:
                            continue  # an ACK or NACK
                        if req.type_url not in s.subscribed:
                            s.subscribed.add(req.type_url)
                            # What the client says it holds is what a delta starts from.
                            s.versions[req.type_url] = dict(req.initial_resource_versions)
                            if req.type_url not in self.held:
                                self._initial(s, req.type_url)
            except Exception:  # the stream ended under us
                pass
            finally:
                s.q.put(None)

        threading.Thread(target=reader, daemon=True).start()
        dropped = False
        try:
            while True:
                item = s.q.get()
                if item is None:
                    break
                if isinstance(item, str):
                    dropped = True
                    break
                yield item
        finally:
            with self.lock:
                self.streams.pop(s.id, None)
        if dropped:
            context.abort(grpc.StatusCode.UNAVAILABLE, "istiod is restarting (dropped by the test)")
