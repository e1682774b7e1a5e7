#!/usr/bin/python3
"""An HBONE server we did not write (Python ssl + h2), for interop tests of ambit's client.

Usage: h2_server.py CERTDIR
CERTDIR holds cert.pem, key.pem (the server SVID) and root.pem. Listens on 127.0.0.1:0, prints
"PORT <n>", accepts one connection (client certificate required), answers each CONNECT with 200
and echoes the stream's bytes back, half-closing after the client did. When the client goes away
it prints one JSON object (what it saw) and exits. Bounded by an alarm.
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
import h2.exceptions
import h2.settings


def main():
    certdir = sys.argv[1]
    signal.alarm(30)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
    ctx.load_verify_locations(os.path.join(certdir, "root.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)
    print("PORT %d" % listener.getsockname()[1])
    sys.stdout.flush()

    result = {"requests": []}
    raw, _ = listener.accept()
    raw.settimeout(20)
    try:
        tls = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError) as e:
        result["tls_error"] = str(e)
        print(json.dumps(result))
        return
    uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
    result.update({"version": tls.version(), "alpn": tls.selected_alpn_protocol(),
                   "client_uris": uris})

    # python3-h2 4.1 insists on :scheme and :path in every request, which RFC 9113 section 8.5
    # forbids for CONNECT; inbound validation has to be off to accept plain CONNECT. The checks
    # that matter are below (and in the C++ test reading our output).
    cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                    validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
    conn.increment_flow_control_window(16 << 20)
    tls.sendall(conn.data_to_send())
    pending = {}      # stream -> bytes to echo
    half_closed = set()
    received = {}

    def flush_echo():
        for sid in list(pending):
            buf = pending[sid]
            while buf:
                try:
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                except h2.exceptions.StreamClosedError:
                    buf = b""
                    break
                if window <= 0:
                    break
                conn.send_data(sid, buf[:window])
                buf = buf[window:]
            pending[sid] = buf
            if not buf and sid in half_closed:
                conn.end_stream(sid)
                del pending[sid]
                half_closed.discard(sid)

    while True:
        try:
            chunk = tls.recv(1 << 16)
        except (ssl.SSLError, OSError) as e:
            result["read_error"] = str(e)
            break
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.RequestReceived):
                headers = dict(ev.headers)
                result["requests"].append(headers)
                if (headers.get(":method") == "CONNECT" and ":authority" in headers
                        and ":path" not in headers and ":scheme" not in headers):
                    conn.send_headers(ev.stream_id, [(":status", "200")])
                    pending[ev.stream_id] = b""
                else:
                    conn.send_headers(ev.stream_id, [(":status", "400")], end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                received[ev.stream_id] = received.get(ev.stream_id, 0) + len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                pending[ev.stream_id] = pending.get(ev.stream_id, b"") + ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                half_closed.add(ev.stream_id)
                pending.setdefault(ev.stream_id, b"")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                result["goaway"] = ev.error_code
        flush_echo()
        tls.sendall(conn.data_to_send())
    result["received_bytes"] = sum(received.values())
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, never hang
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        sys.exit(1)
