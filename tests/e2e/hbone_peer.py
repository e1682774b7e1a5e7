"""An HBONE peer ambit did not write: Python's ssl + h2 (Debian python3-h2), for interop tests.

  hbone_peer.py client CERTDIR HOST AUTHORITY PAYLOAD
      TLS 1.3 + ALPN h2 to HOST:15008 with the SVID in CERTDIR (cert.pem, key.pem, root.pem),
      one CONNECT to AUTHORITY, sends PAYLOAD, half-closes, prints JSON: status, reply, the
      server's SPIFFE ID, TLS version, ALPN.
  hbone_peer.py server CERTDIR BIND_IP
      Listens on BIND_IP:15008, prints "listening", serves CONNECTs: answers 200 and echoes
      each stream, half-closing after the client did. Prints one JSON line per CONNECT.
Every socket operation is bounded by timeouts; the process exits within 60 seconds.
"""

import json
import os
import signal
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def context(certdir, server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
    ctx.load_verify_locations(os.path.join(certdir, "root.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # SPIFFE identities live in the URI SAN, checked below
    ctx.set_alpn_protocols(["h2"])
    return ctx


def peer_uri(tls):
    return [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]


def client(certdir, host, authority, payload):
    raw = socket.create_connection((host, 15008), timeout=10)
    tls = context(certdir, False).wrap_socket(raw)
    out = {"tls": tls.version(), "alpn": tls.selected_alpn_protocol(), "server": peer_uri(tls)}
    # h2 4.1 applies RFC 7540's generic request rules to CONNECT too (it wants :scheme and
    # :path); RFC 9113 section 8.5 says CONNECT carries neither, as ztunnel sends it.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, validate_inbound_headers=False))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
    tls.sendall(conn.data_to_send())
    reply, sent, ended = b"", False, False
    while not ended:
        data = tls.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out["status"] = int(dict(ev.headers)[b":status"])
                if out["status"] == 200 and not sent:
                    conn.send_data(sid, payload.encode(), end_stream=True)
                    sent = True
                elif out["status"] != 200:
                    ended = True
            elif isinstance(ev, h2.events.DataReceived):
                reply += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = True
        tls.sendall(conn.data_to_send())
    out["reply"] = reply.decode(errors="replace")
    print(json.dumps(out), flush=True)


def server(certdir, bind_ip):
    ctx = context(certdir, True)
    family = socket.AF_INET6 if ":" in bind_ip else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind_ip, 15008))
    listener.listen(8)
    listener.settimeout(50)
    print("listening", flush=True)
    while True:
        raw, peer = listener.accept()
        raw.settimeout(10)
        try:
            tls = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(json.dumps({"tls_error": str(e)}), flush=True)
            continue
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, validate_inbound_headers=False))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        try:
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        h = dict(ev.headers)
                        print(json.dumps({"method": h.get(b":method", b"").decode(),
                                          "authority": h.get(b":authority", b"").decode(),
                                          "forwarded": h.get(b"forwarded", b"").decode(),
                                          "baggage": h.get(b"baggage", b"").decode(),
                                          "traceparent": h.get(b"traceparent", b"").decode(),
                                          "client": peer_uri(tls)}), flush=True)
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        conn.send_data(ev.stream_id, ev.data)
                    elif isinstance(ev, h2.events.StreamEnded):
                        conn.end_stream(ev.stream_id)
                tls.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            pass
        tls.close()


if __name__ == "__main__":
    signal.alarm(60)
    if sys.argv[1] == "client":
        client(*sys.argv[2:6])
    else:
        server(*sys.argv[2:4])
