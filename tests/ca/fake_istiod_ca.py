#!/usr/bin/python3
"""A test double of istiod's CA endpoint: istio.v1.auth.IstioCertificateService/CreateCertificate
over gRPC with TLS (istiod's port 15012), for tests where no istiod can run.

It stands in for istiod's CA server together with what istiod asks of the Kubernetes API server,
and follows istiod's code (istio/istio security/pkg/server/ca/server.go, node_auth.go,
authenticate/kubeauth/kube_jwt.go, security/pkg/k8s/tokenreview/k8sauthn.go):

- The caller's cluster is the "clusterid" metadata (one value; absent: the local cluster). A
  cluster other than `cluster_id` is an authentication failure.
- The caller authenticates with "authorization: Bearer <token>". Where istiod sends a TokenReview
  with audience istio-ca, the double looks the token up in its table (`tokens`): a token it does
  not know, or one not issued for the audience istio-ca, or not a service account's, fails.
  A token names the pod it is bound to (namespace, service account, pod name and uid).
- Without ImpersonatedIdentity in the request's metadata the certificate is for the caller's own
  identity, spiffe://<trust domain>/ns/<namespace>/sa/<service account>, whatever the CSR asks.
- With it (a string, non-empty), istiod's node authorizer decides: the caller's service account
  must be one of `trusted_node_accounts` (CA_TRUSTED_NODE_ACCOUNTS, "istio-system/ztunnel"); the
  identity must parse as spiffe://<td>/ns/<ns>/sa/<sa>; the caller's pod must exist with the
  token's uid and service account; and some pod of that namespace and service account, not in
  phase Failed, must be scheduled on the caller's pod's node (`pods`, istiod's pod informer).
  Every refusal is UNAUTHENTICATED "request impersonation authentication failure", as istiod's
  (the reason only in the log).
- The answer is [leaf, root]: one PEM certificate per element, each ending in a newline, the root
  last, as istiod's self-signed CA answers.

With `"impersonation_supported": false` in the table it ignores ImpersonatedIdentity, as an
istiod from before the key existed does, and certifies the caller.

The table (`--config`, JSON) is read again whenever the file changes, so a test moves pods and
tokens as a cluster would. The CA's root is made at start; SIGHUP rotates it as istiod's
self-signed CA does: a new root signs from then on and serves TLS, and `root-cert.pem` in the
state directory (what istiod publishes as the istio-ca-root-cert ConfigMap) holds the new root and
the old one. Every decision is appended to `decisions.jsonl` in the state directory.

Run: fake_istiod_ca.py --listen 127.0.0.1:0 --state-dir DIR --config FILE; it prints
"listening <port>" once it serves.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
AUDIENCE = "istio-ca"  # istiod's TOKEN_AUDIENCES default
IMPERSONATED = "ImpersonatedIdentity"  # istio pkg/security
DEFAULT_TTL = datetime.timedelta(hours=24)  # istiod's DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = datetime.timedelta(days=90)  # istiod's MAX_WORKLOAD_CERT_TTL
AUTHN_FAILURE = "request authenticate failure"
IMPERSONATION_FAILURE = "request impersonation authentication failure"
SERVING_NAMES = ["istiod.istio-system.svc", "istiod", "localhost"]


def ca_stubs():
    """Python stubs of proto/istio/v1/auth/ca.proto, generated with grpc_tools' protoc."""
    from grpc_tools import protoc
    import grpc_tools
    outdir = tempfile.mkdtemp(prefix="ambit-istiod-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    if protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={outdir}",
                    f"--grpc_python_out={outdir}", "istio/v1/auth/ca.proto"]) != 0:
        raise RuntimeError("protoc failed for istio/v1/auth/ca.proto")
    sys.path.insert(0, outdir)
    try:
        from istio.v1.auth import ca_pb2, ca_pb2_grpc
    finally:
        # Imported modules live on without their files.
        sys.path.remove(outdir)
        shutil.rmtree(outdir, ignore_errors=True)
    return ca_pb2, ca_pb2_grpc


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def parse_identity(text):
    """istio pkg/spiffe ParseIdentity: (trust domain, namespace, service account) or None."""
    prefix = "spiffe://"
    if not text.startswith(prefix):
        return None
    split = text[len(prefix):].split("/")
    if len(split) != 5 or split[1] != "ns" or split[3] != "sa":
        return None
    return split[0], split[2], split[4]


class Root:
    """A self-signed root that signs workload and serving certificates directly."""

    def __init__(self, generation):
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"fake istiod root {generation}")])
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              key_cert_sign=True, crl_sign=True, encipher_only=False,
                              decipher_only=False)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(usage, True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                         self.key.public_key()), False)
                     .sign(self.key, hashes.SHA256()))
        self.pem = pem(self.cert)

    def issue(self, public_key, uris=(), dns=(), ips=(), ttl=DEFAULT_TTL):
        import ipaddress
        now = datetime.datetime.now(datetime.timezone.utc)
        names = ([x509.UniformResourceIdentifier(u) for u in uris] +
                 [x509.DNSName(d) for d in dns] +
                 [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=True, data_encipherment=False, key_agreement=False,
                              key_cert_sign=False, crl_sign=False, encipher_only=False,
                              decipher_only=False)
        return (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + ttl)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(usage, True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                # istiod marks the SAN critical: the subject is empty.
                .add_extension(x509.SubjectAlternativeName(names), True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), False)
                .sign(self.key, hashes.SHA256()))


class Table:
    """The --config file, read again when it changes."""

    def __init__(self, path):
        self.path = path
        self.stamp = None
        self.doc = {}
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self.stamp:
                with open(self.path) as f:
                    self.doc = json.load(f)
                self.stamp = stamp
            return self.doc


class Refused(Exception):
    def __init__(self, code, details, reason):
        super().__init__(reason)
        self.code, self.details, self.reason = code, details, reason


def authorize_impersonation(doc, caller, identity):
    """istiod's ClusterNodeAuthorizer.authenticateImpersonation; raises Refused."""
    def refuse(reason):
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, IMPERSONATION_FAILURE, reason)
    trusted = doc.get("trusted_node_accounts", [])
    if not trusted:
        refuse("impersonation not allowed, as node authorizer (CA_TRUSTED_NODE_ACCOUNTS) is not "
               "configured")
    if f"{caller['namespace']}/{caller['service_account']}" not in trusted:
        refuse(f"caller ({caller['namespace']}/{caller['service_account']}) is not allowed to "
               "impersonate")
    parsed = parse_identity(identity)
    if parsed is None:
        refuse(f"failed to validate impersonated identity {identity}")
    _, namespace, service_account = parsed
    pods = doc.get("pods", [])
    caller_pod = next((p for p in pods if p["namespace"] == caller["namespace"]
                       and p["name"] == caller.get("pod_name")), None)
    if caller_pod is None:
        refuse(f"pod {caller['namespace']}/{caller.get('pod_name')} not found")
    if caller_pod.get("uid") != caller.get("pod_uid"):
        refuse(f"pod found, but UID does not match: {caller_pod.get('uid')} vs "
               f"{caller.get('pod_uid')}")
    if caller_pod.get("service_account") != caller["service_account"]:
        refuse("pod found, but ServiceAccount does not match")
    node = caller_pod.get("node", "")
    if not any(p["namespace"] == namespace and p.get("service_account") == service_account
               and p.get("node") == node and node and p.get("phase", "Running") != "Failed"
               for p in pods):
        refuse(f'no instances of "{namespace}/{service_account}" found on node "{node}"')
    return node


class IstiodCa:
    def __init__(self, state_dir, table):
        self.state_dir = state_dir
        self.table = table
        self.lock = threading.Lock()
        self.generation = 0
        self.roots = []  # newest first
        self.rotate()

    def rotate(self):
        """A new root signs and serves; root-cert.pem holds it and the previous one."""
        with self.lock:
            self.generation += 1
            root = Root(self.generation)
            self.roots = [root] + self.roots[:1]
            key = ec.generate_private_key(ec.SECP256R1())
            serving = root.issue(key.public_key(), dns=SERVING_NAMES, ips=["127.0.0.1"],
                                 ttl=datetime.timedelta(days=365))
            self.serving = (key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()),
                            pem(serving).encode())
            self.serving_changed = True
            bundle = "".join(r.pem for r in self.roots)
        tmp = os.path.join(self.state_dir, "root-cert.pem.tmp")
        with open(tmp, "w") as f:
            f.write(bundle)
        os.rename(tmp, os.path.join(self.state_dir, "root-cert.pem"))
        with open(os.path.join(self.state_dir, "signing-root.pem"), "w") as f:
            f.write(self.roots[0].pem)

    def certificate_config(self):
        """For grpc's dynamic server credentials: the serving pair once it changed, else None."""
        with self.lock:
            if not self.serving_changed:
                return None
            self.serving_changed = False
            return grpc.ssl_server_certificate_configuration([self.serving])

    def record(self, entry):
        with self.lock:
            with open(os.path.join(self.state_dir, "decisions.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")

    def create_certificate(self, request, metadata, peer):
        doc = self.table.get()
        entry = {"peer": peer}
        try:
            cluster = metadata.get("clusterid", [])
            cluster = cluster[0] if len(cluster) == 1 else ""
            entry["cluster"] = cluster
            local = doc.get("cluster_id", "Kubernetes")
            if cluster and cluster != local:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, AUTHN_FAILURE,
                              f'client claims to be in cluster "{cluster}", but we only know '
                              f'about local cluster "{local}"')
            token = next((v[len("Bearer "):] for v in metadata.get("authorization", [])
                          if v.startswith("Bearer ")), None)
            if token is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, AUTHN_FAILURE,
                              "no bearer token")
            caller = doc.get("tokens", {}).get(token)
            if caller is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, AUTHN_FAILURE,
                              "the token is not authenticated")
            if AUDIENCE not in caller.get("audiences", [AUDIENCE]):
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, AUTHN_FAILURE,
                              f"token audiences {caller.get('audiences')} lack {AUDIENCE}")
            entry["caller"] = f"{caller['namespace']}/{caller['service_account']}"
            td = doc.get("trust_domain", "cluster.local")
            sans = [f"spiffe://{td}/ns/{caller['namespace']}/sa/{caller['service_account']}"]
            field = request.metadata.fields.get(IMPERSONATED)
            identity = field.string_value if field is not None else ""
            if identity and doc.get("impersonation_supported", True):
                entry["impersonated"] = identity
                entry["node"] = authorize_impersonation(doc, caller, identity)
                sans = [identity]
            try:
                csr = x509.load_pem_x509_csr(request.csr.encode())
            except ValueError as e:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"CSR signing error ({e})",
                              f"csr does not parse: {e}")
            if not csr.is_signature_valid:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              "CSR signing error (failed to verify CSR signature)",
                              "bad csr signature")
            ttl = (datetime.timedelta(seconds=request.validity_duration)
                   if request.validity_duration > 0 else DEFAULT_TTL)
            if ttl > MAX_TTL:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"CSR signing error (requested TTL {ttl} is greater than the max "
                              f"allowed TTL {MAX_TTL})", "ttl too long")
            with self.lock:
                root = self.roots[0]
            leaf = root.issue(csr.public_key(), uris=sans, ttl=ttl)
            entry.update(outcome="issued", identity=sans[0])
            self.record(entry)
            return [pem(leaf), root.pem]
        except Refused as r:
            entry.update(outcome="refused", reason=r.reason)
            self.record(entry)
            print(f"refused CreateCertificate from {peer}: {r.reason}", flush=True)
            raise


def serve(listen, state_dir, config):
    ca_pb2, ca_grpc = ca_stubs()
    ca = IstiodCa(state_dir, Table(config))

    class Service(ca_grpc.IstioCertificateServiceServicer):
        def CreateCertificate(self, request, context):
            metadata = {}
            for key, value in context.invocation_metadata():
                metadata.setdefault(key.lower(), []).append(value)
            try:
                chain = ca.create_certificate(request, metadata, context.peer())
            except Refused as r:
                context.abort(r.code, r.details)
            return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ca_grpc.add_IstioCertificateServiceServicer_to_server(Service(), server)
    credentials = grpc.dynamic_ssl_server_credentials(ca.certificate_config(),
                                                      ca.certificate_config)
    port = server.add_secure_port(listen, credentials)
    signal.signal(signal.SIGHUP, lambda *_: ca.rotate())
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--config", required=True, help="the JSON table of tokens and pods")
    a = p.parse_args()
    os.makedirs(a.state_dir, exist_ok=True)
    serve(a.listen, a.state_dir, a.config)


if __name__ == "__main__":
    main()
