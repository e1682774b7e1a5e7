#!/usr/bin/env python3
"""A gRPC external authorizer for the tests, answering like Istio's sample ext-authz service.

    grpc_authz.py --listen HOST:PORT [--log FILE] [--max-connection-age-ms MS]

Implements envoy.service.auth.v3.Authorization/Check with python3-grpcio (h2c, no TLS), using
messages compiled from the repository's protos (proto/envoy/..., proto/google/rpc/...) with
`protoc --python_out` into a temporary directory at start-up, so the test authorizer and the
waypoint read the same field numbers. Prints `listening <port>` once serving (PORT 0 picks one)
and appends one JSON line per check to FILE: the CheckRequest as google.protobuf.json_format
writes it (lowerCamelCase names: attributes.source.address.socketAddress, ...request.http.rawBody
in base64...), plus "peer" (grpcio's name of the checking connection, "ipv4:127.0.0.1:PORT", so a
test can count connections). --max-connection-age-ms makes grpcio end each connection with a
GOAWAY after that long (grpc.max_connection_age_ms), for the clients' reconnect tests.

The answer depends on the checked request's `x-ext-authz` header:
  allow       OK; ok_response headers x-ext-authz-check-result: allowed and x-ext-authz-upstream:
              added, headers_to_remove [x-remove-me], response_headers_to_add
              x-ext-authz-downstream: added
  deny-418    PERMISSION_DENIED; denied_response status 418, x-teapot: yes, body "short and stout"
  hang        no answer until the RPC is cancelled or the connection closes
  garbage     an answer whose message bytes are not a CheckResponse (b"\\xff\\xff\\xff")
  error       the RPC fails with UNAVAILABLE
  allow-body  allow when attributes.request.http body (or raw_body) is non-empty and equals the
              x-expect-body header, else the default deny
  otherwise   PERMISSION_DENIED; denied_response without a status (the client's default is 403),
              x-ext-authz-check-result: denied, body "denied by ext_authz for not found header
              "x-ext-authz: allow" in the request"
"""

import argparse
import concurrent.futures
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import grpc
from google.protobuf import json_format

DENY_BODY = 'denied by ext_authz for not found header "x-ext-authz: allow" in the request'
GARBAGE = b"\xff\xff\xff"
PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
PROTOS = [
    "google/rpc/status.proto",
    "envoy/type/v3/http_status.proto",
    "envoy/config/core/v3/address.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/auth/v3/attribute_context.proto",
    "envoy/service/auth/v3/external_auth.proto",
]
PERMISSION_DENIED = 7


def compile_protos(out_dir):
    """protoc --python_out of the repository's protos; the external_auth and base modules."""
    subprocess.run(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}"] + PROTOS, check=True)
    sys.path.insert(0, out_dir)
    return (importlib.import_module("envoy.service.auth.v3.external_auth_pb2"),
            importlib.import_module("envoy.config.core.v3.base_pb2"))


class Authorizer:
    def __init__(self, pb, base_pb, log_path):
        self.pb = pb
        self.base_pb = base_pb
        self.log_lock = threading.Lock()
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None

    def record(self, request, peer):
        if self.log_file is None:
            return
        entry = json_format.MessageToDict(request)
        entry["peer"] = peer
        with self.log_lock:
            self.log_file.write(json.dumps(entry, sort_keys=True) + "\n")
            self.log_file.flush()

    def header_option(self, name, value):
        opt = self.base_pb.HeaderValueOption()
        opt.header.key = name
        opt.header.value = value
        return opt

    def deny(self, status=None, headers=(), body=""):
        resp = self.pb.CheckResponse()
        resp.status.code = PERMISSION_DENIED
        resp.denied_response.SetInParent()
        if status is not None:
            resp.denied_response.status.code = status
        for name, value in headers:
            resp.denied_response.headers.append(self.header_option(name, value))
        resp.denied_response.body = body
        return resp

    def allow(self):
        resp = self.pb.CheckResponse()
        resp.status.code = 0
        ok = resp.ok_response
        ok.headers.append(self.header_option("x-ext-authz-check-result", "allowed"))
        ok.headers.append(self.header_option("x-ext-authz-upstream", "added"))
        ok.headers_to_remove.append("x-remove-me")
        ok.response_headers_to_add.append(self.header_option("x-ext-authz-downstream", "added"))
        return resp

    def check(self, request, context):
        """Returns the serialized answer (the handler's serializer is the identity)."""
        self.record(request, context.peer())
        http = request.attributes.request.http
        verdict = http.headers.get("x-ext-authz", "")
        if verdict == "hang":
            gone = threading.Event()
            context.add_callback(gone.set)
            while context.is_active() and not gone.wait(0.5):
                pass
            context.abort(grpc.StatusCode.CANCELLED, "the client went away")
        if verdict == "garbage":
            return GARBAGE
        if verdict == "error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the test authorizer was told to fail")
        if verdict == "allow":
            return self.allow().SerializeToString()
        if verdict == "deny-418":
            return self.deny(418, [("x-teapot", "yes")], "short and stout").SerializeToString()
        if verdict == "allow-body":
            body = http.raw_body or http.body.encode("utf-8")
            expected = http.headers.get("x-expect-body", "").encode("utf-8")
            if body and body == expected:
                return self.allow().SerializeToString()
        return self.deny(None, [("x-ext-authz-check-result", "denied")],
                         DENY_BODY).SerializeToString()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT (PORT 0 picks one)")
    parser.add_argument("--log", help="append one JSON line per check to this file")
    parser.add_argument("--max-connection-age-ms", type=int, default=0,
                        help="send GOAWAY on each connection after this long (0: never)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen {args.listen}: want HOST:PORT")

    out_dir = tempfile.mkdtemp(prefix="grpc-authz-")
    try:
        pb, base_pb = compile_protos(out_dir)
        # Loaded: the generated files are needed no more, and a test that kills this process
        # (SIGKILL skips the `finally` below) would leave them behind.
        shutil.rmtree(out_dir, ignore_errors=True)
        authorizer = Authorizer(pb, base_pb, args.log)
        handler = grpc.unary_unary_rpc_method_handler(
            authorizer.check,
            request_deserializer=pb.CheckRequest.FromString,
            response_serializer=lambda raw: raw)
        # Hanging checks hold a thread each until they are cancelled: room for many.
        options = [("grpc.so_reuseport", 0)]
        if args.max_connection_age_ms > 0:
            options += [("grpc.max_connection_age_ms", args.max_connection_age_ms),
                        ("grpc.max_connection_age_grace_ms", 1000)]
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=128),
                             options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "envoy.service.auth.v3.Authorization", {"Check": handler}),))
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            print(f"grpc_authz: cannot listen on {args.listen}", file=sys.stderr)
            return 1
        server.start()
        print(f"listening {bound}", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        server.stop(grace=0).wait()
        return 0
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
