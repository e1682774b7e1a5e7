"""A test double of istio-cni's node agent on its ZDS socket, and of a CNI plug-in on ambitd's.

It stands in for istio-cni's `pkg/nodeagent` (its ztunnel server): it listens on a
SOCK_SEQPACKET path (istio-cni's default is /var/run/ztunnel/ztunnel.sock), waits for the node
proxy (ztunnel, here ambitd with --zds-connect) to connect and say hello, then sends every pod it
knows (AddWorkload with the pod's network namespace as one descriptor in SCM_RIGHTS, or
KeepWorkload), one request at a time, each only after the previous one's ack, then SnapshotSent;
afterwards AddWorkload / DelWorkload as pods come and go. A proxy that reconnects gets a new
snapshot. In client mode (`ZdsConn.connect`) it plays a CNI plug-in connecting to ambitd's
--zds-listen socket (as ambit-cni does for each CNI call): connect, read the hello, send, read
the ack.

Messages are Istio's (proto/istio/zds/zds.proto), compiled at run time with
`protoc --python_out` into a temporary directory, as tests/authorizers/grpc_authz.py does.
Nothing here is istio-cni's code; the wire behaviour follows its ztunnelserver: a 1024-byte read
buffer for answers, a deadline on every answer (istio-cni's is 5 s; ours is a parameter).
"""

import array
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"

_pb = None


def pb():
    """The generated zds_pb2 module (compiled once per process)."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="zds-pb-")
        subprocess.run(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}",
                        str(PROTO_ROOT / "istio/zds/zds.proto")], check=True)
        sys.path.insert(0, out)
        from istio.zds import zds_pb2  # noqa: E402
        # Loaded: the generated files are needed no more.
        shutil.rmtree(out, ignore_errors=True)
        _pb = zds_pb2
    return _pb


def add_request(uid, name, namespace, service_account=""):
    m = pb()
    r = m.WorkloadRequest()
    r.add.uid = uid
    r.add.workload_info.name = name
    r.add.workload_info.namespace = namespace
    r.add.workload_info.service_account = service_account
    return r.SerializeToString()


def keep_request(uid):
    r = pb().WorkloadRequest()
    r.keep.uid = uid
    return r.SerializeToString()


def del_request(uid):
    r = pb().WorkloadRequest()
    getattr(r, "del").uid = uid  # `del` is a Python keyword
    return r.SerializeToString()


def snapshot_sent_request():
    r = pb().WorkloadRequest()
    r.snapshot_sent.SetInParent()
    return r.SerializeToString()


class ZdsConn:
    """One ZDS session seen from the CNI side."""

    def __init__(self, sock, answer_timeout=15.0):
        self.sock = sock
        self.answer_timeout = answer_timeout

    @classmethod
    def connect(cls, path, answer_timeout=15.0):
        """Client mode: connect to ambitd's --zds-listen socket and read its hello."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        conn = cls(s, answer_timeout)
        conn.read_hello()
        return conn

    def close(self):
        self.sock.close()

    def read_hello(self):
        self.sock.settimeout(self.answer_timeout)
        data = self.sock.recv(1024)
        hello = pb().ZdsHello()
        hello.ParseFromString(data)
        assert hello.version == pb().V1, f"hello version {hello.version}"
        return hello

    def send_raw(self, data, fds=()):
        """Sends one packet; `fds` ride in SCM_RIGHTS."""
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", list(fds)).tobytes())]
        self.sock.sendmsg([data], anc)

    def read_ack(self, timeout=None):
        """The answer's error ("" = done). Raises socket.timeout when none comes in time."""
        self.sock.settimeout(self.answer_timeout if timeout is None else timeout)
        data = self.sock.recv(1024)  # istio-cni's buffer
        if not data:
            raise ConnectionError("ambitd closed the ZDS session")
        resp = pb().WorkloadResponse()
        resp.ParseFromString(data)
        assert resp.HasField("ack"), f"answer without ack: {data!r}"
        return resp.ack.error

    def request(self, data, fds=(), timeout=None):
        self.send_raw(data, fds)
        return self.read_ack(timeout)

    def add(self, uid, name, namespace, netns_path, service_account="", timeout=None):
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self.request(add_request(uid, name, namespace, service_account), [fd], timeout)
        finally:
            os.close(fd)

    def keep(self, uid):
        return self.request(keep_request(uid))

    def delete(self, uid):
        return self.request(del_request(uid))

    def snapshot_sent(self):
        return self.request(snapshot_sent_request())


class FakeIstioCni:
    """istio-cni's node agent's ZDS server: the node proxy connects here."""

    def __init__(self, path, answer_timeout=15.0):
        self.path = path
        self.answer_timeout = answer_timeout
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(4)
        # uid -> (name, namespace, service account, netns path or None for keep)
        self.pods = {}
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def accept(self, timeout=15.0):
        """Waits for the proxy to connect and say hello (ztunnel speaks first)."""
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        self.conn = ZdsConn(sock, self.answer_timeout)
        self.conn.read_hello()
        return self.conn

    def drop(self):
        """The session ends (istio-cni restarts, or the proxy's connection is lost)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send_snapshot(self, keep=()):
        """Every known pod (add with its netns; keep for the uids in `keep`), then SnapshotSent.
        Returns {uid: ack error} and the SnapshotSent's ack."""
        answers = {}
        for uid, (name, namespace, sa, netns) in self.pods.items():
            if uid in keep:
                answers[uid] = self.conn.keep(uid)
            else:
                answers[uid] = self.conn.add(uid, name, namespace, netns, sa)
        return answers, self.conn.snapshot_sent()

    def pod_added(self, uid, name, namespace, netns, service_account="", timeout=None):
        self.pods[uid] = (name, namespace, service_account, netns)
        return self.conn.add(uid, name, namespace, netns, service_account, timeout)

    def pod_deleted(self, uid):
        self.pods.pop(uid, None)
        return self.conn.delete(uid)
