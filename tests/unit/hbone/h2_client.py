#!/usr/bin/python3
"""An HBONE client we did not write (Python ssl + h2), for interop tests of ambit's server.

Usage: h2_client.py PORT CERTDIR EXPECTED_SERVER_ID SIZE
CERTDIR holds cert.pem, key.pem (the client SVID) and root.pem. Over one TLS connection it:
  1. opens CONNECT to 127.0.0.1:8080 with forwarded/baggage/traceparent, expects 200, sends SIZE
     random bytes, half-closes, and reads the echo until the server half-closes;
  2. sends a GET (expects 400);
  3. sends a CONNECT with a malformed authority (expects 400).
Prints one JSON object on stdout. Exits non-zero on any unexpected event; bounded by an alarm.
"""

import hashlib
import json
import os
import signal
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings


def fail(msg):
    print(json.dumps({"error": msg}))
    sys.stdout.flush()
    sys.exit(1)


class Client:
    def __init__(self, sock):
        self.sock = sock
        # python3-h2 4.1 insists on :scheme and :path in every request, which RFC 9113 section
        # 8.5 forbids for CONNECT; its outbound validation has to be off to speak plain CONNECT.
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(16 << 20)
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
        self.flush()
        self.responses = {}
        self.data = {}
        self.ended = set()
        self.reset = {}

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            fail("server closed the connection")
        for ev in self.conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                self.responses[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset[ev.stream_id] = ev.error_code
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                fail("GOAWAY from server: %s" % ev.error_code)
        self.flush()

    def send_all(self, sid, payload):
        sent = 0
        while sent < len(payload):
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                continue
            piece = payload[sent:sent + window]
            self.conn.send_data(sid, piece)
            sent += len(piece)
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def request(self, headers, end_stream=False):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.flush()
        return sid

    def wait(self, cond):
        while not cond():
            self.pump()


def main():
    port, certdir, expected, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    signal.alarm(30)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE: the URI SAN is checked below, not a host name
    ctx.load_verify_locations(os.path.join(certdir, "root.pem"))
    ctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=20)
    tls = ctx.wrap_socket(raw)
    uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
    result = {"version": tls.version(), "alpn": tls.selected_alpn_protocol(),
              "cipher": tls.cipher()[0], "server_uris": uris}
    if uris != [expected]:
        fail("server presented %s, expected %s" % (uris, expected))

    c = Client(tls)
    sid = c.request([(":method", "CONNECT"), (":authority", "127.0.0.1:8080"),
                     ("forwarded", 'for="127.0.0.1:40000"'),
                     ("baggage", "k8s.namespace.name=default"),
                     ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
    c.wait(lambda: sid in c.responses or sid in c.ended)
    result["connect_status"] = c.responses.get(sid, {}).get(":status")
    if result["connect_status"] != "200":
        fail("CONNECT got %s" % result["connect_status"])
    payload = os.urandom(size)
    c.send_all(sid, payload)
    c.wait(lambda: sid in c.ended)
    if sid in c.reset:
        fail("CONNECT stream reset: %s" % c.reset[sid])
    result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    result["echo_sha256"] = hashlib.sha256(bytes(c.data.get(sid, b""))).hexdigest()

    get = c.request([(":method", "GET"), (":scheme", "https"), (":path", "/"),
                     (":authority", "127.0.0.1:8080")], end_stream=True)
    c.wait(lambda: get in c.ended)
    result["get_status"] = c.responses.get(get, {}).get(":status")

    bad = c.request([(":method", "CONNECT"), (":authority", "not-an-address:80")])
    c.wait(lambda: bad in c.ended)
    result["bad_authority_status"] = c.responses.get(bad, {}).get(":status")

    c.conn.close_connection()
    c.flush()
    tls.close()
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, never hang
        fail("%s: %s" % (type(e).__name__, e))
