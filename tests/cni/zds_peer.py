"""A ZDS peer written for the tests: ambitd's side of Istio's ZDS protocol (ztunnel's role), as
the plug-in meets it on its zdsSocket. SOCK_SEQPACKET, one protobuf message per packet; it sends
ZdsHello{V1} first, then answers each WorkloadRequest as the test scripts it. Messages come from
proto/istio/zds/zds.proto through protoc --python_out, so the bytes are the repository's
definition, not a copy.

Scripted answers (`peer.answer`): "ack" (empty error), ("error", text), ("delay", seconds) then
ack, "silent" (never answers), "close" (closes the session unanswered). `peer.hello` may be
"v1", "none" (sends nothing first), "garbage" or "v0" to test the plug-in's checks."""

import array
import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_zds = None


def zds_pb2():
    """istio.workload.zds from the repository's proto, compiled once per process."""
    global _zds
    if _zds is None:
        out = tempfile.mkdtemp(prefix="ambit-zds-py-")
        subprocess.run(["protoc", f"-I{ROOT}/proto", f"--python_out={out}",
                        f"{ROOT}/proto/istio/zds/zds.proto"], check=True)
        sys.path.insert(0, out)
        _zds = importlib.import_module("istio.zds.zds_pb2")
        # Loaded: the generated files are needed no more.
        shutil.rmtree(out, ignore_errors=True)
    return _zds


class Request:
    def __init__(self, message, fd_inodes):
        self.message = message
        self.kind = message.WhichOneof("payload")
        # The namespaces that rode along, by (st_dev, st_ino): the test compares them with the
        # pod's own.
        self.fd_inodes = fd_inodes


class ZdsPeer:
    def __init__(self, path):
        self.path = path
        self.answer = "ack"
        self.hello = "v1"
        self.requests = []
        self.sessions = 0
        self._stop = threading.Event()
        self._threads = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.sessions += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        zds = zds_pb2()
        with conn:
            if self.hello == "v1":
                conn.send(zds.ZdsHello(version=zds.V1).SerializeToString())
            elif self.hello == "v0":
                conn.send(zds.ZdsHello(version=zds.NOT_USED).SerializeToString() or b"\x08\x00")
            elif self.hello == "garbage":
                conn.send(b"\xff\xff\xff\xff")
            conn.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                inodes = []
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                        for fd in fds:
                            st = os.fstat(fd)
                            inodes.append((st.st_dev, st.st_ino))
                            os.close(fd)
                req = zds.WorkloadRequest()
                req.ParseFromString(data)
                self.requests.append(Request(req, inodes))
                answer = self.answer
                if answer == "close":
                    return
                if answer == "silent":
                    self._stop.wait(60)
                    return
                error = ""
                if isinstance(answer, tuple) and answer[0] == "error":
                    error = answer[1]
                elif isinstance(answer, tuple) and answer[0] == "delay":
                    time.sleep(answer[1])
                resp = zds.WorkloadResponse(ack=zds.Ack(error=error))
                try:
                    conn.send(resp.SerializeToString())
                except OSError:
                    return
