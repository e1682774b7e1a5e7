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
