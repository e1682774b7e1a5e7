"""Small programs the end-to-end tests run inside pods."""

# Accepts connections on several ports; prints "accepted <port> <peer>" per connection and echoes
# what each connection sends.
MULTI_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    s.listen(16)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "listen")
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "listen":
            c, peer = key.fileobj.accept()
            print("accepted", c.getsockname()[1], peer[0], flush=True)
            sel.register(c, selectors.EVENT_READ, "conn")
        else:
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
            else:
                key.fileobj.sendall(data)
"""

# Holds one connection; sends each stdin line and prints "echo", "closed" or the error name.
HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        data = s.recv(100)
        print("echo" if data else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""

# Connects to argv[1]:argv[2], sends a line and expects it echoed; prints {"ok": bool}.
PROBE = r"""
import json, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(b"ping\n")
    data = s.recv(100)
    print(json.dumps({"ok": data == b"ping\n"}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__}))
"""

# Opens connection after connection to HOST:PORT until SECONDS pass, MAX connections were made or
# the --stop file exists: each sends "<marker>-<seq>\n", expects it echoed and closes. Writes one
# JSON line per connection to OUT: {"t0": start, "t1": end, "err": null or why}. With --interval
# the connections start at that pace (plus up to --jitter at random); without it they follow one
# another at once, and a failure waits 50 ms so a failing path is retried, not hammered.
ECHO_LOOP = r"""
import argparse, json, os, random, socket, time
p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("seconds", type=float)
p.add_argument("marker")
p.add_argument("out")
p.add_argument("--stop", default="")
p.add_argument("--interval", type=float, default=0.0)
p.add_argument("--jitter", type=float, default=0.0)
p.add_argument("--timeout", type=float, default=10.0)
p.add_argument("--max", type=int, default=100000)
a = p.parse_args()
deadline = time.time() + a.seconds
next_start = time.time()
seq = 0
with open(a.out, "w", buffering=1) as f:
    while time.time() < deadline and seq < a.max and not (a.stop and os.path.exists(a.stop)):
        seq += 1
        payload = f"{a.marker}-{seq}\n".encode()
        t0, err = time.time(), None
        try:
            s = socket.create_connection((a.host, a.port), timeout=a.timeout)
            try:
                s.settimeout(a.timeout)
                s.sendall(payload)
                data = b""
                while len(data) < len(payload):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data != payload:
                    err = f"reply of {len(data)} bytes"
            finally:
                s.close()
        except OSError as e:
            err = type(e).__name__
        f.write(json.dumps({"t0": t0, "t1": time.time(), "err": err}) + "\n")
        if a.interval > 0:
            next_start += a.interval + random.uniform(0.0, a.jitter)
            time.sleep(max(0.0, next_start - time.time()))
        elif err:
            time.sleep(0.05)
"""


def echo_loop(host, port, seconds, marker, out, stop=None, interval=0.0, jitter=0.0, timeout=10.0,
              max_connections=100000):
    """The command line that runs ECHO_LOOP with these settings."""
    cmd = ["/usr/bin/python3", "-c", ECHO_LOOP, host, str(port), str(seconds), marker, out,
           "--interval", str(interval), "--jitter", str(jitter), "--timeout", str(timeout),
           "--max", str(max_connections)]
    if stop:
        cmd += ["--stop", stop]
    return cmd


# An HTTP/2 client over TLS 1.3 to host:15008 presenting the SVID in certdir (`certdir` and
# `host` set before it): the start of the tests' raw HTTP/2 client programs.
H2_CLIENT = r"""
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(os.path.join(certdir, "cert.pem"), os.path.join(certdir, "key.pem"))
ctx.load_verify_locations(os.path.join(certdir, "root.pem"))
ctx.check_hostname = False
ctx.set_alpn_protocols(["h2"])
tls = ctx.wrap_socket(socket.create_connection((host, 15008), timeout=10))
conn = h2.connection.H2Connection(h2.config.H2Configuration(
    client_side=True, validate_outbound_headers=False, validate_inbound_headers=False))
conn.initiate_connection()
"""


def exchange(holds, word):
    """Sends "<word>-<i>" on each held connection (HOLD processes) and checks each comes back."""
    for i, h in enumerate(holds):
        h.stdin.write(f"{word}-{i}\n")
        h.stdin.flush()
    for i, h in enumerate(holds):
        got = h.stdout.readline().strip()
        if got != f"{word}-{i}":
            raise AssertionError(f"held connection {i} broke at {word!r}: got {got!r}")
