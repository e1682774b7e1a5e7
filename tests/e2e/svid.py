"""Obtains SVIDs from an agent's CA API the way an outside client would (grpcio, stubs generated
from our proto, keys from Python's cryptography), for tests that need a peer we did not write."""

import atexit
import os
import shutil
import sys
import tempfile

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
_stubs = None


def ca_stubs():
    global _stubs
    if _stubs is None:
        from grpc_tools import protoc
        import grpc_tools
        outdir = tempfile.mkdtemp(prefix="ambit-stubs-")
        # The modules stay loaded once imported; their files go with the test process.
        atexit.register(shutil.rmtree, outdir, ignore_errors=True)
        include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        if protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={outdir}",
                        f"--grpc_python_out={outdir}", "istio/v1/auth/ca.proto"]) != 0:
            raise RuntimeError("protoc failed for istio/v1/auth/ca.proto")
        sys.path.insert(0, outdir)
        from istio.v1.auth import ca_pb2, ca_pb2_grpc
        _stubs = (ca_pb2, ca_pb2_grpc)
    return _stubs


def ca_port(agent):
    line = [l for l in agent.logs().splitlines() if "IstioCertificateService" in l][0]
    return int(line.rsplit("port ", 1)[1].rstrip(")"))


def issue(agent, identity, token, certdir):
    """Writes cert.pem (chain), key.pem and root.pem for `identity` into certdir."""
    ca_pb2, ca_grpc = ca_stubs()
    root = open(os.path.join(agent.ca_dir, "ca", "root-cert.pem")).read()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=root.encode())
    with grpc.secure_channel(f"127.0.0.1:{ca_port(agent)}", creds,
                             options=[("grpc.ssl_target_name_override", "ambit-ca")]) as ch:
        resp = ca_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
            ca_pb2.IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode()),
            metadata=[("authorization", f"Bearer {token}")], timeout=10)
    os.makedirs(certdir, exist_ok=True)
    with open(os.path.join(certdir, "cert.pem"), "w") as f:
        f.write("".join(resp.cert_chain[:-1]))
    with open(os.path.join(certdir, "root.pem"), "w") as f:
        f.write(root)
    with open(os.path.join(certdir, "key.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return certdir
