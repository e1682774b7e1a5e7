#!/usr/bin/python3
"""Regenerates the binary seed corpora of tests/fuzz (HTTP/2 byte streams, control-channel and
admin protobufs, CSRs and certificates). The YAML and SPIFFE ID seeds are hand-written files.
Run from anywhere: /usr/bin/python3 tests/fuzz/make_seeds.py. Needs python3-h2,
python3-cryptography and protoc (all in scripts/setup.sh). Output is deterministic except for the
key material in the CA seeds."""

import datetime
import os
import struct
import subprocess

import h2.config
import h2.connection
import h2.events
import hpack
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def hbone_header(flags=1, chunk=0, seed=0):
    return bytes([flags, chunk]) + struct.pack("<H", seed)


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(
        ">I", stream) + payload


def client_conn():
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False))
    c.initiate_connection()
    return c


def connect_headers(authority=b"198.18.0.2:8080", extra=True):
    h = [(b":method", b"CONNECT"), (b":authority", authority)]
    if extra:
        h += [(b"forwarded", b'for="198.18.0.1:43210"'),
              (b"baggage", b"k8s.namespace.name=default,k8s.pod.name=sleep"),
              (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    return h


def server_seeds():
    t = "hbone_server"
    # A tunnel: CONNECT, bytes, half-close; SETTINGS acked.
    c = client_conn()
    c.send_headers(1, connect_headers())
    c.send_data(1, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    c.end_stream(1)
    ack = frame(0x4, 0x1, 0, b"")
    write(t, "connect_data_end", hbone_header(1, 0, 2) + c.data_to_send() + ack)
    # The same, arriving one byte per read; and in 7-byte reads with the owner answering later.
    with open(os.path.join(HERE, t, "connect_data_end"), "rb") as f:
        write(t, "connect_bytewise", hbone_header(1, 1, 5) + f.read()[4:])
    # Two tunnels, one reset by the client; WINDOW_UPDATE and PING on the connection.
    c = client_conn()
    c.send_headers(1, connect_headers())
    c.send_headers(3, connect_headers(b"[2001:2::10]:443", extra=False))
    c.send_data(3, b"x" * 1000)
    c.reset_stream(1)
    c.increment_flow_control_window(65535)
    c.ping(b"12345678")
    write(t, "two_streams_reset", hbone_header(0, 2, 9) + c.data_to_send())
    # Not CONNECT (400), no authority, a bad authority, port 0.
    c = client_conn()
    c.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                       (b":authority", b"web")], end_stream=True)
    c.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"not-an-ip:80")])
    c.send_headers(5, [(b":method", b"CONNECT"), (b":authority", b"198.18.0.2:0")])
    c.send_headers(7, [(b":method", b"CONNECT")], end_stream=True)
    write(t, "bad_requests", hbone_header(1, 0, 1) + c.data_to_send())
    # A header list over 64 KiB (431), then GOAWAY.
    c = client_conn()
    c.send_headers(1, connect_headers() + [(b"x-big-%d" % i, b"v" * 1000) for i in range(70)])
    c.close_connection()
    write(t, "oversized_headers_goaway", hbone_header(1, 3, 3) + c.data_to_send())
    # A header block split over CONTINUATION frames (hand-made: h2 never splits).
    block = hpack.Encoder().encode(connect_headers())
    c = client_conn()
    raw = c.data_to_send()
    half = len(block) // 2
    raw += frame(0x1, 0x0, 1, block[:half]) + frame(0x9, 0x4, 1, block[half:])
    raw += frame(0x0, 0x1, 1, b"payload")
    write(t, "continuation", hbone_header(1, 0, 4) + raw)
    # Protocol errors: DATA on stream 0, PRIORITY, a padded DATA frame, an unknown frame type.
    c = client_conn()
    raw = c.data_to_send()
    raw += frame(0x1, 0x4, 1, hpack.Encoder().encode(connect_headers()))
    raw += frame(0x0, 0x8, 1, b"\x03abc\x00\x00\x00")  # padded
    raw += frame(0x2, 0x0, 1, b"\x00\x00\x00\x00\x10")  # PRIORITY
    raw += frame(0xfa, 0x0, 0, b"unknown")
    raw += frame(0x0, 0x0, 0, b"data on stream zero")
    write(t, "frames_misc", hbone_header(1, 4, 6) + raw)
    # Many streams at once (over the advertised 100).
    c = client_conn()
    for i in range(110):
        c.send_headers(1 + 2 * i, connect_headers(b"198.18.0.%d:80" % (i % 250 + 1), False))
    write(t, "many_streams", hbone_header(1, 0, 7) + c.data_to_send())


def client_seeds():
    t = "hbone_client"
    def server_for(streams):
        cli = client_conn()
        for s in streams:
            cli.send_headers(s, connect_headers())
        srv = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False))
        srv.initiate_connection()
        srv.receive_data(cli.data_to_send())
        srv.data_to_send()
        srv.initiate_connection()
        return srv
    # 200 then bytes then end; SETTINGS ack.
    s = server_for([1, 3])
    s.send_headers(1, [(b":status", b"200")])
    s.send_data(1, b"HTTP/1.1 200 OK\r\n\r\nhello")
    s.end_stream(1)
    s.send_headers(3, [(b":status", b"200")])
    s.send_data(3, b"y" * 5000)
    write(t, "ok_data_end", hbone_header(1, 0, 2) + s.data_to_send() + frame(0x4, 0x1, 0, b""))
    # Deny (401), upstream failure (503), an interim 100 before 200.
    s = server_for([1, 3])
    s.send_headers(1, [(b":status", b"401")], end_stream=True)
    s.send_headers(3, [(b":status", b"100")])
    s.send_headers(3, [(b":status", b"200")])
    s.send_data(3, b"after interim")
    write(t, "deny_and_interim", hbone_header(1, 2, 3) + s.data_to_send())
    s = server_for([1, 3])
    s.send_headers(1, [(b":status", b"503")], end_stream=True)
    s.reset_stream(3, 0x7)
    s.close_connection(0, last_stream_id=3)
    write(t, "refused_goaway", hbone_header(0, 1, 4) + s.data_to_send())
    # A stream limit of 1, a bad status, trailers, a window update; PUSH_PROMISE (not allowed).
    s = server_for([1])
    s.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    s.send_headers(1, [(b":status", b"abc")])
    raw = s.data_to_send()
    raw += frame(0x1, 0x5, 3, hpack.Encoder().encode([(b":status", b"200")]))
    raw += frame(0x5, 0x4, 1, b"\x00\x00\x00\x02" + hpack.Encoder().encode(
        [(b":method", b"GET"), (b":path", b"/")]))
    raw += frame(0x8, 0x0, 0, b"\x00\x01\x00\x00")
    write(t, "settings_push_misc", hbone_header(1, 3, 8) + raw)


def protoc_encode(message, text):
    proto = "ambit/dataplane/v1/dataplane.proto" if message.startswith(
        "ambit.dataplane") else "ambit/admin/v1/admin.proto"
    return subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"),
                           "--encode=" + message, proto], input=text.encode(),
                          capture_output=True, check=True).stdout


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambit fuzz"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "fuzz root")])
    now = datetime.datetime(2026, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def csr(uris, dns=(), key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def leaf(ca_key, ca_cert, uri):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime(2026, 1, 1)
    return pem(x509.CertificateBuilder().subject_name(x509.Name([]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(7)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(uri)]), critical=True)
               .sign(ca_key, hashes.SHA256()))


def sized(b):
    return struct.pack("<H", len(b)) + b


def ca_seeds(ca_key, ca_cert):
    t = "ca"
    write(t, "csr_spiffe", b"\x00" + csr(["spiffe://cluster.local/ns/default/sa/sleep"]))
    write(t, "csr_two_uris", b"\x00" + csr(["spiffe://cluster.local/ns/a/sa/b",
                                             "spiffe://cluster.local/ns/c/sa/d"]))
    write(t, "csr_dns_only", b"\x00" + csr([], ["web.default.svc"]))
    write(t, "csr_other_domain", b"\x00" + csr(["spiffe://evil.example/ns/a/sa/b"]))
    write(t, "csr_no_san", b"\x00" + csr([]))
    write(t, "bundle", b"\x01" + pem(ca_cert) + leaf(ca_key, ca_cert,
                                                    "spiffe://cluster.local/ns/a/sa/b"))
    write(t, "key", b"\x01" + key_pem(ca_key))
    write(t, "cacerts", b"\x02" + sized(pem(ca_cert)) + sized(key_pem(ca_key)) +
          sized(pem(ca_cert)) + pem(ca_cert))
    other_key, other = make_ca()
    write(t, "cacerts_mismatch", b"\x02" + sized(pem(ca_cert)) + sized(key_pem(other_key)) +
          sized(pem(other)) + pem(ca_cert))


def control_seeds(ca_key, ca_cert):
    env = "ambit.dataplane.v1.Envelope"
    t = "control_tunnel"
    snapshot = """
  version: 3 trust_domain: "cluster.local" root_namespace: "istio-system"
  reserved_ports: 15020 reserved_ports: 15021
  workloads { namespace: "default" name: "web" service_account: "web"
    ips: "198.18.0.10" ips: "2001:2::10" node: "node-a" enrolled_here: true in_mesh: true
    spiffe_id: "spiffe://cluster.local/ns/default/sa/web" labels { key: "app" value: "web" }
    mtls { mode: MTLS_MODE_STRICT policy: "default/default"
      ports { port: 8081 mode: MTLS_MODE_PERMISSIVE policy: "default/web-8081" }
      ports { port: 9090 mode: MTLS_MODE_DISABLE policy: "default/web-9090" } } }
  workloads { namespace: "default" name: "sleep" service_account: "sleep"
    ips: "198.18.0.11" node: "node-b" in_mesh: true spiffe_id: "spiffe://cluster.local/ns/default/sa/sleep" }
  services { namespace: "default" name: "web" cluster_ips: "198.18.100.1"
    ports { port: 80 target_port: 8080 protocol: SERVICE_PROTOCOL_TCP app_protocol: APP_PROTOCOL_HTTP }
    ports { port: 53 target_port: 5353 protocol: SERVICE_PROTOCOL_UDP app_protocol: APP_PROTOCOL_DETECT } endpoints: "default/web" }
  authorization_policies { name: "allow-sleep" namespace: "default" action: ALLOW
    has_selector: true selector { key: "app" value: "web" } has_rules: true
    rules { from { principals: "cluster.local/ns/default/sa/sleep" ip_blocks: "198.18.0.0/15" }
            to { ports: "8080" } when { key: "source.ip" values: "198.18.0.11" } } }
  authorization_policies { name: "deny-9090" namespace: "default" action: DENY has_rules: true
    rules { to { ports: "9090" not_ports: "1-100" } } }
  authorization_policies { name: "ext" namespace: "default" action: CUSTOM provider: "ext" has_rules: true rules { } }
  ext_authz_providers { name: "ext" kind: EXT_AUTHZ_KIND_HTTP service: "web.default.svc.cluster.local"
    service_key: "default/web" port: 80 timeout { seconds: 600 } status_on_error: 403
    include_request_body { max_request_bytes: 4096 allow_partial_message: true }
    path_prefix: "/check" include_request_headers: "x-ext-authz"
    include_additional_headers { name: "x-added" value: "v" }
    headers_to_upstream_on_allow: "x-up" headers_to_downstream_on_deny: "x-deny"
    headers_to_downstream_on_allow: "x-down" }
  ext_authz_providers { name: "grpc" kind: EXT_AUTHZ_KIND_GRPC service: "nowhere.default"
    unresolved: "names no Service" port: 9000 timeout { nanos: 250000000 } fail_open: true
    status_on_error: 503 }
"""
    write(t, "snapshot", b"\x00" + protoc_encode(env, "protocol_version: 4 snapshot {%s}" % snapshot))
    # Each a value the mapping must refuse (agent/mesh/wire.h), one edit away from the valid one.
    for name, old, new in [
            ("snapshot_mode_unspecified", "mode: MTLS_MODE_STRICT", "mode: MTLS_MODE_UNSPECIFIED"),
            ("snapshot_port_mode_unspecified", "port: 8081 mode: MTLS_MODE_PERMISSIVE", "port: 8081"),
            ("snapshot_no_identity", 'spiffe_id: "spiffe://cluster.local/ns/default/sa/sleep"', ""),
            ("snapshot_enrolled_without_mtls", 'mtls { mode: MTLS_MODE_STRICT policy: "default/default"',
             'labels { mode: MTLS_MODE_STRICT policy: "default/default"'),
            ("snapshot_protocol_unspecified", "protocol: SERVICE_PROTOCOL_UDP", ""),
            ("snapshot_app_protocol_unspecified", "app_protocol: APP_PROTOCOL_HTTP", ""),
            ("snapshot_action_unspecified", "action: DENY", ""),
            ("snapshot_bad_ip", 'ips: "198.18.0.11"', 'ips: "198.18.0.311"'),
            ("snapshot_shared_ip", 'ips: "198.18.0.11"', 'ips: "198.18.0.10"'),
            ("snapshot_unknown_endpoint", 'endpoints: "default/web"', 'endpoints: "default/gone"')]:
        assert old in snapshot, name
        text = snapshot.replace(old, new, 1)
        if name == "snapshot_enrolled_without_mtls":
            text = snapshot.replace(
                'mtls { mode: MTLS_MODE_STRICT policy: "default/default"\n'
                '      ports { port: 8081 mode: MTLS_MODE_PERMISSIVE policy: "default/web-8081" }\n'
                '      ports { port: 9090 mode: MTLS_MODE_DISABLE policy: "default/web-9090" } }', "")
            assert text != snapshot, name
        write(t, name, b"\x00" + protoc_encode(env, "protocol_version: 4 snapshot {%s}" % text))
    # ext_authz providers, carried for the waypoint: one refusal each (agent/mesh/wire.h).
    for name, old, new in [
            ("snapshot_extauthz_kind_unspecified", "kind: EXT_AUTHZ_KIND_GRPC", ""),
            ("snapshot_extauthz_no_name", 'name: "grpc" ', ""),
            ("snapshot_extauthz_twice", 'name: "grpc" ', 'name: "ext" '),
            ("snapshot_extauthz_port_0", "port: 9000 ", ""),
            ("snapshot_extauthz_status", "status_on_error: 503", "status_on_error: 600"),
            ("snapshot_extauthz_both", 'unresolved: "names no Service"',
             'unresolved: "names no Service" service_key: "default/web"'),
            ("snapshot_extauthz_unknown_service", 'service_key: "default/web"',
             'service_key: "default/gone"'),
            ("snapshot_extauthz_header_case", '"x-ext-authz"', '"X-Ext-Authz"'),
            ("snapshot_extauthz_value_crlf", 'value: "v"', 'value: "v\\r\\nx: y"'),
            ("snapshot_extauthz_body_too_large", "max_request_bytes: 4096",
             "max_request_bytes: 8388609"),
            ("snapshot_extauthz_no_timeout", "timeout { seconds: 600 } ", "")]:
        assert old in snapshot, name
        text = snapshot.replace(old, new, 1)
        write(t, name, b"\x00" + protoc_encode(env, "protocol_version: 4 snapshot {%s}" % text))
    # RequestAuthentications, carried for the waypoint: every field, then one refusal each
    # (agent/mesh/wire.h), one edit away from the valid one.
    authn = """
  request_authentications { name: "jwt" namespace: "default"
    target_refs { group: "gateway.networking.k8s.io" kind: "Gateway" name: "waypoint" }
    target_refs { kind: "Service" name: "web" }
    jwt_rules { issuer: "https://issuer.example" audiences: "web" audiences: "api"
      jwks: "{\\"keys\\":[{\\"kty\\":\\"oct\\",\\"k\\":\\"c2VjcmV0\\",\\"kid\\":\\"a\\"}]}"
      from_headers { name: "x-jwt" prefix: "Bearer " } from_params: "token" from_cookies: "session"
      output_payload_to_header: "x-payload" forward_original_token: true
      output_claim_to_headers { header: "x-sub" claim: "sub" }
      timeout { seconds: 2 nanos: 500000000 } space_delimited_claims: "roles" }
    jwt_rules { issuer: "issuer-b" jwks_uri: "https://issuer.example/jwks" timeout { seconds: 5 } }
    source_file: "authn.yaml" }
  request_authentications { name: "jwt" namespace: "frontend" has_selector: true
    selector { key: "app" value: "web" } jwt_rules { issuer: "issuer-c" timeout { nanos: 1 } } }
"""
    with_authn = snapshot + authn
    write(t, "snapshot_request_authentication",
          b"\x00" + protoc_encode(env, "protocol_version: 4 snapshot {%s}" % with_authn))
    for name, old, new in [
            ("snapshot_authn_no_name", 'name: "jwt" namespace: "default"', 'namespace: "default"'),
            ("snapshot_authn_no_timeout", " timeout { seconds: 5 }", ""),
            ("snapshot_authn_negative_timeout", "timeout { seconds: 5 }", "timeout { seconds: -5 }"),
            ("snapshot_authn_timeout_too_long", "timeout { seconds: 5 }",
             "timeout { seconds: 4294967296 }"),
            ("snapshot_authn_bad_target", 'kind: "Gateway"', 'kind: "Pod"'),
            ("snapshot_authn_no_issuer", 'issuer: "issuer-b" ', ""),
            ("snapshot_authn_selector_without_flag", "has_selector: true", "")]:
        assert old in with_authn, name
        text = with_authn.replace(old, new, 1)
        write(t, name, b"\x00" + protoc_encode(env, "protocol_version: 4 snapshot {%s}" % text))
    # Values this build does not know, as a newer agent could send them: raw numbers.
    snapshot_bytes = protoc_encode(env, "protocol_version: 4 snapshot {%s}" % snapshot)
    unknown_mode = snapshot_bytes.replace(b"\x08\x01\x12\x0fdefault/default",
                                          b"\x08\x07\x12\x0fdefault/default")
    assert unknown_mode != snapshot_bytes
    write(t, "snapshot_mode_unknown", b"\x00" + unknown_mode)
    write(t, "add_pod", b"\x03" + protoc_encode(env, """
protocol_version: 4
add_pod { uid: "default/web" namespace: "default" name: "web" service_account: "web"
  netns_cookie: 4096 ips: "198.18.0.10" ips: "2001:2::10" ips: "bogus"
  fds: FD_ROLE_NETNS fds: FD_ROLE_OUTBOUND_V4 fds: FD_ROLE_HBONE_V4
  spiffe_id: "spiffe://cluster.local/ns/default/sa/web" }"""))
    # A snapshot_ref whose sealed file (the fuzz target fills it with the envelope's own bytes)
    # reads back as a Snapshot of version 4: the envelope's protocol_version is field 1 too.
    size = 0
    while True:
        ref = protoc_encode(env, "protocol_version: 4 snapshot_ref { version: 4 size: %d }" % size)
        if len(ref) == size:
            break
        size = len(ref)
    write(t, "snapshot_ref", b"\x01" + ref)
    write(t, "snapshot_ref_wrong_size", b"\x01" + protoc_encode(
        env, "protocol_version: 4 snapshot_ref { version: 2 size: 4096 }"))
    write(t, "snapshot_failed", b"\x00" + protoc_encode(
        env, 'protocol_version: 4 snapshot_failed { version: 9 error: "out of memory" }'))
    write(t, "maps", b"\x02" + protoc_encode(env, """
protocol_version: 4 maps { fds: FD_ROLE_ORIG_DST_MAP fds: FD_ROLE_DELIVER_MAP }"""))
    write(t, "remove_pod", b"\x00" + protoc_encode(env, 'protocol_version: 4 remove_pod { uid: "default/web" }'))
    write(t, "wrong_version", b"\x00" + protoc_encode(env, 'protocol_version: 1 remove_pod { uid: "x" }'))
    write(t, "ping", b"\x00" + protoc_encode(env, "protocol_version: 4 ping { seq: 7 }"))
    # Stats-socket requests, which the target also decodes (DecodeStatsSocketRequest).
    stats = "ambit.dataplane.v1.StatsSocketRequest"
    write(t, "stats_request", b"\x00" + protoc_encode(stats, "stats { connections: true metrics: true }"))
    write(t, "stats_log_level", b"\x00" + protoc_encode(
        stats, 'log_level { component: "hbone" level: "debug" }'))
    write(t, "stats_log_level_unknown", b"\x00" + protoc_encode(
        stats, 'log_level { level: "verbose" }'))
    chain = [leaf(ca_key, ca_cert, "spiffe://cluster.local/ns/fuzz/sa/app").decode(),
             pem(ca_cert).decode()]
    text = "protocol_version: 4 csr_response { request_id: 1 %s }" % " ".join(
        'chain_pem: "%s"' % c.replace("\n", "\\n") for c in chain)
    write(t, "csr_response", b"\x00" + protoc_encode(env, text))
    write(t, "csr_error", b"\x00" + protoc_encode(env, 'protocol_version: 4 csr_response { request_id: 1 error: "denied" }'))
    write(t, "trust_bundle", b"\x00" + protoc_encode(env, 'protocol_version: 4 trust_bundle { root_pem: "%s" }' % pem(ca_cert).decode().replace("\n", "\\n")))

    t = "control_agent"
    c = csr(["spiffe://cluster.local/ns/default/sa/web"]).decode().replace("\n", "\\n")
    write(t, "csr_request", b"\x00" + protoc_encode(env, 'protocol_version: 4 csr_request { request_id: 9 identity: "spiffe://cluster.local/ns/default/sa/web" csr_pem: "%s" }' % c))
    write(t, "csr_request_wrong_identity", b"\x00" + protoc_encode(env, 'protocol_version: 4 csr_request { request_id: 9 identity: "spiffe://cluster.local/ns/default/sa/other" csr_pem: "%s" }' % c))
    write(t, "hello", b"\x00" + protoc_encode(env, "protocol_version: 4 hello { pid: 42 pod_count: 1 snapshot_version: 3 }"))
    write(t, "handed_back_pod", b"\x02" + protoc_encode(env, 'protocol_version: 4 add_pod { uid: "default/web" namespace: "default" name: "web" service_account: "web" spiffe_id: "spiffe://cluster.local/ns/default/sa/web" ips: "198.18.0.10" ips: "2001:2::10" netns_cookie: 77 fds: FD_ROLE_NETNS fds: FD_ROLE_OUTBOUND_V4 }'))
    write(t, "handed_back_pod_bad_uid", b"\x02" + protoc_encode(env, 'protocol_version: 4 add_pod { uid: "default/other" namespace: "default" name: "web" fds: FD_ROLE_NETNS fds: FD_ROLE_OUTBOUND_V4 }'))
    write(t, "ack", b"\x00" + protoc_encode(env, "protocol_version: 4 ack { version: 3 }"))
    write(t, "nack", b"\x00" + protoc_encode(env, 'protocol_version: 4 nack { version: 4 error: "bad policy" }'))
    write(t, "pong", b"\x00" + protoc_encode(env, """
protocol_version: 4 pong { seq: 7 workers: 2
  pods { uid: "default/web" listening: 6 workers_accepting: 2 }
  pods { uid: "default/db" listening: 4 workers_accepting: 1 waiting_for_certificate: true } }"""))
    write(t, "certificate_report", b"\x00" + protoc_encode(env, """
protocol_version: 4 certificate_report {
  certificates { identity: "spiffe://cluster.local/ns/default/sa/web" state: "valid" serial_hex: "0a"
    not_before_unix: 1700000000 not_after_unix: 1700086400 issuer: "O = ambit" refs: 2 }
  certificates { identity: "spiffe://cluster.local/ns/default/sa/x" state: "failed" last_error: "refused" } }"""))


def admin_seeds():
    t = "admin_api"
    def req(method, message, text, stats=b""):
        body = protoc_encode("ambit.admin.v1." + message, text)
        return bytes([method]) + sized(body) + stats
    write(t, "check_allowed", req(0, "CheckRequest", 'from: "default/sleep" to: "198.18.0.10" port: 8080'))
    write(t, "check_pod_name", req(0, "CheckRequest", 'from: "default/sleep" to: "default/web" port: 9090'))
    write(t, "check_bad_port", req(0, "CheckRequest", 'from: "default/sleep" to: "default/web" port: 70000'))
    write(t, "check_unknown", req(0, "CheckRequest", 'from: "x/y" to: "2001:2::99" port: 80'))
    write(t, "log_read", req(1, "LogLevelRequest", ''))
    write(t, "log_set", req(1, "LogLevelRequest", 'component: "hbone" level: "debug"'))
    write(t, "log_bad", req(1, "LogLevelRequest", 'component: "" level: "loud"'))
    write(t, "verify_all", req(3, "VerifyMtlsRequest", ''))
    write(t, "verify_pod_since", req(3, "VerifyMtlsRequest", 'pod: "default/web" since_seconds: 30'))
    write(t, "verify_bad_pod", req(3, "VerifyMtlsRequest", 'pod: "Default/we b" since_seconds: -5'))
    write(t, "verify_too_old", req(3, "VerifyMtlsRequest", 'since_seconds: 86400'))
    stats = protoc_encode("ambit.dataplane.v1.StatsResponse", """
flows { id: 1 direction: "outbound" pod: "default/sleep" mode: "hbone" mtls: true
  source { workload: "sleep" namespace: "default" principal: "spiffe://cluster.local/ns/default/sa/sleep" address: "198.18.0.11:43210" }
  destination { workload: "web" namespace: "default" address: "198.18.0.10:8080" service: "default/web" }
  policy: "default/allow-sleep" bytes_from_client: 100 bytes_to_client: 2000 start_unix_ms: 1700000000000 }
flows { id: 2 direction: "inbound" pod: "default/web" mode: "plaintext" start_unix_ms: 9223372036854775807 }
snapshot_version: 3 pid: 42""")
    write(t, "connections_all", req(2, "ListConnectionsRequest", '', stats))
    write(t, "connections_pod", req(2, "ListConnectionsRequest", 'pod: "default/web"', stats))


def waypoint_seeds():
    """Input layout: tests/fuzz/waypoint_fuzz.h (chunk, upstream mode, full, sized upstream
    bytes, client bytes)."""
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    chunked_resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    def seed(chunk, mode, full, upstream, client):
        return bytes([chunk, mode, full]) + sized(upstream) + client

    t = "waypoint_http1"
    get = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
    write(t, "get_keepalive", seed(255, 1, 0, b"", get * 3))
    write(t, "get_bytewise", seed(0, 2, 0, ok, get))
    write(t, "post_chunked", seed(7, 2, 0, chunked_resp, b"POST /u HTTP/1.1\r\nHost: a\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\n\r\n"))
    write(t, "post_cl_expect", seed(255, 1, 1, b"", b"PUT /d HTTP/1.1\r\nHost: a\r\n"
                                    b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"))
    write(t, "smuggle_cl_te", seed(255, 1, 0, b"", b"POST / HTTP/1.1\r\nHost: a\r\n"
                                   b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"))
    write(t, "obs_fold", seed(255, 1, 0, b"", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"))
    write(t, "denied_admin", seed(255, 1, 0, b"", b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\n" + get))
    write(t, "custom_delete", seed(255, 1, 0, b"", b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n"))
    write(t, "upgrade", seed(255, 3, 0, b"", b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade"
                             b"\r\nUpgrade: websocket\r\n\r\nraw bytes"))
    write(t, "connect_fails", seed(255, 0, 0, b"", get))
    write(t, "upstream_garbage", seed(255, 2, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n", get))
    write(t, "head_eof_body", seed(3, 2, 0, b"HTTP/1.1 200 OK\r\n\r\nuntil close",
                                   b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n" + get))
    write(t, "http10", seed(255, 2, 0, b"HTTP/1.0 200 OK\r\n\r\nbody", b"GET / HTTP/1.0\r\n\r\n"))

    t = "waypoint_h2c"
    c = client_conn()
    c.send_headers(1, [(b":method", b"GET"), (b":path", b"/a"), (b":scheme", b"http"),
                       (b":authority", b"svc")], end_stream=True)
    c.send_headers(3, [(b":method", b"POST"), (b":path", b"/admin/x"), (b":scheme", b"http"),
                       (b":authority", b"svc")])
    c.send_data(3, b"body", end_stream=True)
    c.send_headers(5, [(b":method", b"POST"), (b":path", b"/b"), (b":scheme", b"http"),
                       (b":authority", b"svc"), (b"content-length", b"3")])
    c.send_data(5, b"abc", end_stream=True)
    frames = c.data_to_send()[len(PREFACE):]
    write(t, "three_streams", seed(255, 1, 0, b"", frames))
    write(t, "three_streams_chunked_upstream", seed(9, 2, 0, chunked_resp, frames))
    write(t, "connect_fails", seed(255, 0, 1, b"", frames))
    c = client_conn()
    for sid in range(1, 80, 2):
        c.send_headers(sid, [(b":method", b"GET"), (b":path", b"/r"), (b":scheme", b"http"),
                             (b":authority", b"svc")])
        c.reset_stream(sid)
    write(t, "rapid_reset", seed(255, 4, 0, b"", c.data_to_send()[len(PREFACE):]))
    c = client_conn()
    c.send_headers(1, [(b":method", b"GET"), (b":path", b"/big"), (b":scheme", b"http"),
                       (b":authority", b"svc")] + [(b"x-h%d" % i, b"v") for i in range(120)],
                   end_stream=True)
    write(t, "too_many_headers", seed(255, 1, 0, b"", c.data_to_send()[len(PREFACE):]))


def ext_authz_grpc_seeds():
    """Input layout: tests/fuzz/ext_authz_grpc_fuzz.cc (chunk, shape, the authorizer's HTTP/2)."""
    t = "ext_authz_grpc"

    def check_response(text):
        out = subprocess.run(
            ["protoc", "-I" + os.path.join(ROOT, "proto"),
             "--encode=envoy.service.auth.v3.CheckResponse",
             "envoy/service/auth/v3/external_auth.proto"],
            input=text.encode(), capture_output=True, check=True)
        return out.stdout

    def grpc_frame(msg, flag=0):
        return bytes([flag]) + struct.pack(">I", len(msg)) + msg

    def server_for(n):
        cli = client_conn()
        for i in range(n):
            cli.send_headers(1 + 2 * i, [(b":method", b"POST"), (b":scheme", b"http"),
                                         (b":path", b"/envoy.service.auth.v3.Authorization/Check"),
                                         (b":authority", b"ext-authz:9000"),
                                         (b"content-type", b"application/grpc")])
        srv = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False))
        srv.initiate_connection()
        srv.receive_data(cli.data_to_send())
        srv.data_to_send()
        srv.initiate_connection()
        return srv

    head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    allow = check_response(
        'status {} ok_response { headers { header { key: "x-a" value: "1" } } '
        'headers { header { key: "x-b" value: "2" } append { value: true } } '
        'headers_to_remove: "x-remove-me" '
        'response_headers_to_add { header { key: "x-down" value: "3" } } }')
    deny = check_response(
        'status { code: 7 } denied_response { status { code: 418 } '
        'headers { header { key: "x-teapot" value: "yes" } } body: "short and stout" }')
    s = server_for(1)
    s.send_headers(1, head)
    s.send_data(1, grpc_frame(allow))
    s.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    write(t, "allow", bytes([255, 0]) + s.data_to_send())
    s = server_for(2)
    s.send_headers(1, head)
    s.send_data(1, grpc_frame(deny)[:4])
    s.send_data(1, grpc_frame(deny)[4:])
    s.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    s.send_headers(3, head + [(b"grpc-status", b"14"), (b"grpc-message", b"down%20now")],
                   end_stream=True)
    write(t, "deny_and_trailers_only", bytes([7, 1]) + s.data_to_send())
    s = server_for(4)
    s.send_headers(1, head)
    s.send_data(1, grpc_frame(b"\xff\xff\xff"))
    s.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    s.send_headers(3, [(b":status", b"503")], end_stream=True)
    s.reset_stream(5, 0x7)  # REFUSED_STREAM: sent again on a new connection
    s.send_headers(7, head)
    s.send_data(7, grpc_frame(allow, flag=1))
    s.close_connection(0, last_stream_id=5)
    write(t, "garbage_503_refused_goaway", bytes([15, 3]) + s.data_to_send())
    s = server_for(1)
    s.send_headers(1, head)
    s.send_data(1, struct.pack(">BI", 0, 2 << 20))
    write(t, "announced_too_large", bytes([255, 4]) + s.data_to_send())


def main():
    waypoint_seeds()
    server_seeds()
    client_seeds()
    ca_key, ca_cert = make_ca()
    ca_seeds(ca_key, ca_cert)
    control_seeds(ca_key, ca_cert)
    admin_seeds()
    ext_authz_grpc_seeds()


if __name__ == "__main__":
    main()
