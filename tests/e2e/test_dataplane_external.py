"""End to end: `ambitd --dataplane=external`, the data-plane processes started apart from ambitd,
as the kubelet starts the containers of the DaemonSet pod.

The test starts ambit-tunnel (and ambit-waypoint) itself with `--control-socket <run
dir>/dataplane.sock` (`<run dir>/waypoint/dataplane.sock`), as a container would; ambitd never
starts, restarts or stops them.

- DataPlaneAloneTest (no agent): a data plane creates its socket's directory (mode 0700); waits for
  nobody; starts over the stale socket file a killed predecessor left; and while another data
  plane serves the socket it stands by on <socket>.next (a roll's successor) and takes the socket
  over only once the first is gone, never taking it away from it.
- ExternalDataPlaneTest: two nodes (tests/e2e/topology.py), a on node1 calls b on node2.
  node1's tunnel starts first and waits, unconnected, then its ambitd; node2's ambitd starts
  first (readiness 503 naming ambit-tunnel and its socket, `ambitctl status` too; no data plane
  spawned), then its tunnel. Traffic flows, over HBONE only (tcpdump on the wire). ambitd killed
  (SIGKILL) and restarted on each node: held connections survive, new ones work, the tunnel is
  re-attached (same PID, pods handed back). Each tunnel killed (SIGKILL) and started again by the
  test: readiness 503 while it is absent, a connection meanwhile reaches no application, ambitd
  re-attaches and re-enrolls, new connections work; no payload ever crosses the wire outside
  HBONE. `ambitd --cleanup --dataplane=external` removes the pins and the capture and reports the
  running tunnel, which it leaves alone.
- ExternalWaypointTest: a waypoint pod enrolled with no ambit-waypoint running is reported
  (readiness names the waypoint data plane), never spawned; ambit-waypoint started apart (its
  socket's directory did not exist) is connected to and serves the waypoint's pod: a -> b goes
  through it.
"""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import echo_loop, exchange  # noqa: E402
from test_faults import HOLD, PROBE, TwoNodes, stop_capture  # noqa: E402
from topology import (CLIENT, SERVER, Topology, build_dir, run, wait_listening,  # noqa: E402
                      waypoint_gateway, with_labels)

TUNNEL = str(build_dir() / "agent/main/ambit-tunnel")
WAYPOINT = str(build_dir() / "agent/main/ambit-waypoint")
AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
TRUST = "spiffe://cluster.local"
WEB_ID = f"{TRUST}/ns/default/sa/web"
API_ID = f"{TRUST}/ns/backend/sa/api"
WP_ID = f"{TRUST}/ns/backend/sa/waypoint"
EXTERNAL = ("--dataplane", "external")


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def listener_pids(path):
    """PIDs of the processes listening on the unix socket at path (ss)."""
    out = run("ss", "-xlpn", check=False).stdout
    pids = set()
    for line in out.splitlines():
        fields = line.split()
        if path in fields:
            pids.update(int(p) for p in re.findall(r"pid=(\d+)", line))
    return pids


def pids_with(arg):
    return [int(p) for p in run("pgrep", "-f", "--", arg, check=False).stdout.split()]


def ready(agent):
    """(status, body) of readiness; (None, "") while nothing listens yet."""
    return agent.try_ready((None, ""))


def status(agent):
    r = run(AMBITCTL, "status", "-o", "json", "--admin-socket", agent.admin_socket, check=False)
    if r.returncode not in (0, 1) or not r.stdout:
        raise AssertionError(f"ambitctl status: {r.returncode} {r.stderr}")
    got = json.loads(r.stdout)
    # The exit status alone says whether the node is ready.
    assert r.returncode == (0 if got["ready"] else 1), (r.returncode, got)
    return got


class DataPlaneProcess:
    """ambit-tunnel or ambit-waypoint started by hand with --control-socket, logging to a file."""

    def __init__(self, procs, binary, socket_path, log_path):
        self.binary, self.socket, self.log_path = binary, socket_path, log_path
        self.procs = procs
        self.proc = None

    def start(self):
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([self.binary, "--control-socket", self.socket,
                                          "--workers", "2"],
                                         stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(self.proc)
        return self.proc

    def wait_listening(self, timeout=10):
        wait_for(f"{self.binary} listening on {self.socket}",
                 lambda: self.proc.pid in listener_pids(self.socket) or self.exited(), timeout,
                 0.05)
        if self.exited():
            raise AssertionError(f"{self.binary} exited ({self.proc.returncode}):\n{self.logs()}")

    def exited(self):
        return self.proc.poll() is not None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def logs(self):
        return read(self.log_path)


class DataPlaneAloneTest(unittest.TestCase):
    """The data plane on its own: its directory, a stale socket, a live predecessor."""

    def setUp(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="ambit-dp-")
        self.procs = []

        def close():
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            run("rm", "-rf", self.dir)
        self.addCleanup(close)

    def tunnel(self, name="t"):
        return DataPlaneProcess(self.procs, TUNNEL, os.path.join(self.dir, "run", "x",
                                                                 "dataplane.sock"),
                                os.path.join(self.dir, f"{name}.log"))

    def test_directory_stale_socket_and_live_predecessor(self):
        first = self.tunnel("first")
        run_dir = os.path.dirname(first.socket)
        self.assertFalse(os.path.exists(run_dir))
        first.start()
        first.wait_listening()
        # The directory did not exist: the data plane made it, private to root.
        self.assertEqual(stat.S_IMODE(os.stat(run_dir).st_mode), 0o700)
        # Nobody connects for a while: it keeps waiting.
        time.sleep(2)
        self.assertFalse(first.exited(), first.logs())
        self.assertIn("waiting for the agent", first.logs())

        # A second data plane on the same socket while the first lives: it stands by on
        # <socket>.next (a roll's successor), and the socket stays the first one's.
        second = self.tunnel("second")
        second.start()
        wait_for("the second data plane waiting",
                 lambda: f"another data plane (pid {first.proc.pid} " in second.logs(), 10, 0.05)
        time.sleep(1)
        self.assertFalse(second.exited(), second.logs())
        self.assertEqual(listener_pids(first.socket), {first.proc.pid})
        self.assertEqual(listener_pids(first.socket + ".next"), {second.proc.pid})

        # The first killed: its socket file stays behind, and the waiting one takes over.
        first.kill()
        second.wait_listening()
        self.assertEqual(listener_pids(first.socket), {second.proc.pid})
        self.assertIn("taking the socket over", second.logs())
        self.assertFalse(os.path.exists(first.socket + ".next"), "the standby left .next behind")

        # A killed data plane's stale socket file does not keep a restarted one from starting.
        second.kill()
        self.assertTrue(os.path.exists(second.socket), "no stale socket file left to test with")
        self.assertEqual(listener_pids(second.socket), set())
        third = self.tunnel("third")
        third.start()
        third.wait_listening()
        self.assertNotIn("another data plane", third.logs())


class ExternalDataPlaneTest(unittest.TestCase):
    HELD = 3
    PORT = 7600

    @classmethod
    def setUpClass(cls):
        cls.nodes = TwoNodes("x", start=False)
        try:
            n = cls.nodes
            cls.tunnels = {}
            for agent in (n.n1, n.n2):
                cls.tunnels[agent.node] = cls.new_tunnel(agent)
        except BaseException:
            cls.nodes.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.nodes.close()

    @classmethod
    def new_tunnel(cls, agent):
        n = cls.nodes
        return DataPlaneProcess(n.topo.procs, TUNNEL, os.path.join(agent.run_dir, "dataplane.sock"),
                                os.path.join(n.topo.workdir, f"tunnel-{agent.node}.log"))

    def spawned(self, agent):
        """Data-plane processes on the agent's sockets that the test did not start."""
        ours = {t.proc.pid for t in self.tunnels.values() if t.proc is not None}
        return [p for p in pids_with(f"--control-socket {agent.run_dir}/") if p not in ours]

    def wait_ready(self, agent, timeout=20):
        try:
            wait_for(f"{agent.node} ready", lambda: ready(agent)[0] == 200, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}: {ready(agent)[1]}\n{agent.logs()[-4000:]}") from None

    def test_1_either_order_and_encrypted(self):
        n = self.nodes
        t1, t2 = self.tunnels["node1"], self.tunnels["node2"]
        # node1: the tunnel first, alone for a while, then ambitd.
        t1.start()
        t1.wait_listening()
        time.sleep(3)
        self.assertFalse(t1.exited(), t1.logs())
        n.n1.start(*EXTERNAL, wait_pods=[n.a])
        n.n1.wait_log(f"connected to data plane pid={t1.proc.pid} (its own PID namespace)", 15)
        # node2: ambitd first. It enrolls b, spawns nothing and says what is missing.
        run("mkdir", "-p", n.n2.run_dir)
        with open(os.path.join(n.n2.run_dir, "dataplane.sock"), "w"):
            pass  # a socket file nobody listens on (a predecessor's) is not fatal
        n.n2.start(*EXTERNAL, wait_pods=[n.b])
        n.n2.wait_log("data plane not connected: no data plane serves", 15)
        wait_for("node2 readiness served", lambda: ready(n.n2)[0] is not None, 15)
        time.sleep(2)  # a few connection attempts, backing off
        code, body = ready(n.n2)
        self.assertEqual(code, 503, body)
        self.assertIn("the data plane is not connected: ambit-tunnel is started apart from "
                      f"ambitd (--dataplane=external) and is not connected on "
                      f"{n.n2.run_dir}/dataplane.sock", body)
        st = status(n.n2)
        self.assertFalse(st["ready"])
        tunnel = [d for d in st["dataPlanes"] if d["name"] == "ambit-tunnel"][0]
        self.assertEqual((tunnel["mode"], tunnel["connected"], tunnel["socket"]),
                         ("external", False, f"{n.n2.run_dir}/dataplane.sock"), st)
        self.assertIn("is not connected on", tunnel["problem"])
        self.assertEqual(self.spawned(n.n2), [])
        self.assertIsNone(n.n2.proc.poll())
        t2.start()
        n.n2.wait_log(f"connected to data plane pid={t2.proc.pid} (its own PID namespace)", 15)
        n.n1.wait_log(f"certificate {WEB_ID} valid", 30)
        n.n2.wait_log(f"certificate {API_ID} valid", 30)
        for agent in (n.n1, n.n2):
            self.wait_ready(agent)
            self.assertEqual(self.spawned(agent), [])
        st = status(n.n2)
        self.assertTrue(st["ready"], st)
        tunnel = [d for d in st["dataPlanes"] if d["name"] == "ambit-tunnel"][0]
        self.assertEqual((tunnel["connected"], tunnel["pid"]), (True, t2.proc.pid), st)

        _, out = n.echo_server(self.PORT)
        marker = "AMBIT-EXTERNAL-PLAINTEXT-7c31"
        dump, pcap = n.capture("order")
        r = n.a.python(CLIENT, n.b.ip4, self.PORT, marker)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["reply"], marker)  # echoed as it is
        lines, raw = stop_capture(dump, pcap)
        self.assertNotIn(marker.encode(), raw)
        self.assertTrue([l for l in lines if re.search(r"\.15008[ :]", l)], "no HBONE captured")
        self.assertEqual([l for l in lines if not re.search(r"\.15008[ :]", l)], [],
                         "traffic on the wire outside HBONE")
        # The tunnels' own logs carry the flows: they are not ambitd's children.
        wait_for("node2's tunnel logged the flow", lambda: "serving pod backend/b" in t2.logs(), 5)

    def test_2_ambitd_killed_and_restarted(self):
        n = self.nodes
        _, out = n.echo_server(self.PORT + 1)
        port = self.PORT + 1
        holds = []
        for _ in range(self.HELD):
            h = n.a.popen(["/usr/bin/python3", "-c", HOLD, n.b.ip4, str(port)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.assertEqual(h.stdout.readline().strip(), "connected")
            holds.append(h)
        exchange(holds, "before")
        for agent, pod in ((n.n1, "default/a"), (n.n2, "backend/b")):
            tunnel = self.tunnels[agent.node]
            adopted = f"adopted pod {pod} "
            count = agent.logs().count(adopted)
            attached = f"connected to data plane pid={tunnel.proc.pid} "
            attached_count = agent.logs().count(attached)
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(timeout=10)
            agent.log.close()
            agent.log = None
            exchange(holds, f"down-{agent.node}")
            self.assertTrue(n.probe(port)["ok"], f"new connection refused with {agent.node} down")
            agent.start(*EXTERNAL)
            agent.wait_log(adopted, 20, count=count + 1)
            exchange(holds, f"after-{agent.node}")
            self.assertTrue(n.probe(port)["ok"], f"refused after {agent.node}'s restart")
            self.assertFalse(tunnel.exited(), tunnel.logs()[-3000:])
            # Re-attached to the same process, which handed its pod back.
            self.assertEqual(agent.logs().count(attached), attached_count + 1)
            self.wait_ready(agent)
            self.assertEqual(self.spawned(agent), [])
        for h in holds:
            h.stdin.close()
            h.wait(timeout=10)
        self.assertEqual(n.accepted(out, port), self.HELD + 4)

    def test_3_tunnel_killed_and_restarted(self):
        n = self.nodes
        port = self.PORT + 2
        _, out = n.echo_server(port)
        self.assertTrue(n.probe(port)["ok"])
        marker = "AMBIT-EXTERNAL-RESTART-PLAINTEXT-91e2"
        dump, pcap = n.capture("tunnel-restart")
        stop = os.path.join(n.topo.workdir, "restart-load.stop")
        result = os.path.join(n.topo.workdir, "restart-load.jsonl")
        load = n.a.popen(echo_loop(n.b.ip4, port, 120, marker, result, stop=stop, interval=0.1,
                                   timeout=5, max_connections=2000),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        report = []
        try:
            time.sleep(1)
            # node2 (the server's side) first, then node1 (the client's side).
            for agent, pod, identity in ((n.n2, "backend/b", API_ID), (n.n1, "default/a", WEB_ID)):
                old = self.tunnels[agent.node]
                certs_before = agent.logs().count(f"certificate {identity} valid")
                connected_before = agent.logs().count("connected to data plane pid=")
                t_kill = time.time()
                old.kill()
                agent.wait_log("(started apart from ambitd) ended its control session", 10)
                # Absent: not ready, naming the missing process; ambitd starts none.
                code, body = wait_for(f"{agent.node} unready",
                                      lambda: (lambda r: r if r[0] == 503 else None)(
                                          ready(agent)), 5, 0.05)
                self.assertIn("the data plane is not connected: ambit-tunnel is started apart",
                              body)
                self.assertEqual(self.spawned(agent), [])
                # Meanwhile a new connection reaches no application: it waits in the backlog
                # of the listener ambitd keeps, or fails; never delivered around the tunnel.
                accepted = n.accepted(out, port)
                self.assertFalse(n.probe(port, timeout=1.5)["ok"])
                time.sleep(0.5)
                self.assertEqual(n.accepted(out, port), accepted)
                self.assertEqual(ready(agent)[0], 503)
                # The kubelet starts the container again: the stale socket file is in the way.
                self.assertTrue(os.path.exists(old.socket))
                new = self.new_tunnel(agent)
                self.tunnels[agent.node] = new
                t_start = time.time()
                new.start()
                agent.wait_log("connected to data plane pid=", 15, count=connected_before + 1)
                self.assertIn(f"connected to data plane pid={new.proc.pid}", agent.logs())
                # Re-enrolled: the new process serves the pod and got its certificate.
                wait_for(f"{pod} served by the new tunnel",
                         lambda: f"serving pod {pod} " in new.logs(), 10)
                agent.wait_log(f"certificate {identity} valid", 30, count=certs_before + 1)
                self.wait_ready(agent)
                t_ready = time.time()
                self.assertTrue(n.probe(port)["ok"], f"refused after {agent.node}'s new tunnel\n"
                                f"{agent.logs()[-3000:]}\n{new.logs()[-3000:]}")
                report.append(f"{agent.node}: ready {t_ready - t_start:.2f}s after the new "
                              f"tunnel started ({t_start - t_kill:.1f}s after the kill)")
                time.sleep(1)
        finally:
            open(stop, "w").close()
            _, err = load.communicate(timeout=60)
        lines, raw = stop_capture(dump, pcap)
        self.assertEqual(load.returncode, 0, err)
        with open(result) as f:
            records = [json.loads(l) for l in f if l.strip()]
        ok = [r for r in records if r["err"] is None]
        self.assertGreater(len(ok), 10, records[-5:])
        # After the last restart every connection is served.
        self.assertTrue(records and records[-1]["err"] is None, records[-3:])
        # The wire never carried the clients' bytes in the clear, while either tunnel was down
        # or after.
        self.assertNotIn(marker.encode(), raw)
        carrying = [l for l in lines if not re.search(r"\.15008[ :]", l) and
                    not re.search(r"length 0$", l)]
        self.assertEqual(carrying, [], "payload on the wire outside HBONE")
        print(f"\n{len(records)} connections, {len(records) - len(ok)} failed or timed out "
              f"while a tunnel was down; {'; '.join(report)}")

    def test_4_cleanup_leaves_the_external_tunnel(self):
        n = self.nodes
        agent = n.n1
        tunnel = self.tunnels[agent.node]
        agent.stop()
        self.assertTrue(os.path.isdir(agent.pin_root))
        r = run(*agent.argv("--cleanup", "--dataplane", "external"), check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        text = r.stdout + r.stderr
        self.assertIn(f"left: data plane pid={tunnel.proc.pid} (its own PID namespace) serving "
                      f"1 pods on {agent.run_dir}/dataplane.sock", text)
        self.assertIn("BPF pins under", text)
        self.assertFalse(os.path.exists(agent.instance_dir), os.listdir(agent.instance_dir)
                         if os.path.exists(agent.instance_dir) else None)
        progs = json.loads(run("bpftool", "-j", "cgroup", "show", agent.cgroup).stdout.strip() or "[]")
        self.assertEqual(progs, [])
        # Not stopped: it was started apart from ambitd, and still serves its socket.
        time.sleep(0.5)
        self.assertFalse(tunnel.exited())
        self.assertEqual(listener_pids(tunnel.socket), {tunnel.proc.pid})
        self.assertFalse(os.path.exists(agent.admin_socket))


class ExternalWaypointTest(unittest.TestCase):
    """A waypoint pod on a node whose data planes run apart from ambitd."""

    HTTP_PORT = 8080

    def setUp(self):
        self.topo = Topology("xw")
        self.topo.__enter__()
        self.addCleanup(self.topo.close)
        t = self.topo
        self.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
        self.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node1")
        self.b = t.add_pod("b", namespace="backend", service_account="api", node="node1")
        self.n1 = t.add_agent("node1")
        wp = with_labels(self.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"})
        b = with_labels(self.b, {"istio.io/use-waypoint": "waypoint"})
        self.n1.write_config("pods.yaml", "---\n".join(
            [self.a.yaml(), wp, b, waypoint_gateway("workload")]))

    def test_waypoint_started_apart(self):
        t, n1 = self.topo, self.n1
        tunnel = DataPlaneProcess(t.procs, TUNNEL, os.path.join(n1.run_dir, "dataplane.sock"),
                                  os.path.join(t.workdir, "tunnel.log"))
        tunnel.start()
        tunnel.wait_listening()
        n1.start(*EXTERNAL, wait_pods=[self.a, self.wp, self.b])
        wp_socket = os.path.join(n1.run_dir, "waypoint", "dataplane.sock")
        n1.wait_log(f"waypoint data plane not connected: no waypoint data plane serves "
                    f"{wp_socket}", 15)
        n1.wait_log(f"certificate {WEB_ID} valid", 30)
        time.sleep(1)
        code, body = ready(n1)
        self.assertEqual(code, 503, body)
        self.assertIn("the waypoint data plane is not connected (waypoint pods are enrolled "
                      "here): ambit-waypoint is started apart from ambitd (--dataplane=external) "
                      f"and is not connected on {wp_socket}", body)
        self.assertNotIn("the data plane is not connected", body)
        st = status(n1)
        wp_status = [d for d in st["dataPlanes"] if d["name"] == "ambit-waypoint"][0]
        self.assertEqual((wp_status["needed"], wp_status["connected"]), (True, False), st)
        # Reported, never spawned; its directory is the waypoint's to make.
        self.assertEqual(pids_with(f"--control-socket {wp_socket}"), [])
        self.assertFalse(os.path.exists(os.path.dirname(wp_socket)))

        waypoint = DataPlaneProcess(t.procs, WAYPOINT, wp_socket,
                                    os.path.join(t.workdir, "waypoint.log"))
        waypoint.start()
        n1.wait_log(f"connected to waypoint data plane pid={waypoint.proc.pid}", 15)
        n1.wait_log(f"waypoint data plane pid={waypoint.proc.pid}: signed certificate for "
                    f"{WP_ID}", 30)
        try:
            wait_for("ready", lambda: ready(n1)[0] == 200, 20)
        except AssertionError as e:
            raise AssertionError(f"{e}: {ready(n1)[1]}\n{n1.logs()[-4000:]}") from None
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(wp_socket)).st_mode), 0o700)
        app = self.b.popen(["/usr/bin/python3", "-c", HTTP_SERVER, str(self.HTTP_PORT)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(app)
        r = self.a.run(["curl", "-sS", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                        f"http://{self.b.ip4}:{self.HTTP_PORT}/via-waypoint"])
        body, _, code = r.stdout.rpartition("\n")
        self.assertEqual(code, "200", f"{r.stderr}\n{n1.logs()[-3000:]}\n{waypoint.logs()[-3000:]}")
        seen = json.loads(body)
        self.assertEqual(seen["path"], "/via-waypoint")
        self.assertEqual(seen["client"], self.wp.ip4)  # forwarded by the waypoint
        wait_for("the waypoint's access log", lambda: "path=/via-waypoint" in waypoint.logs(), 5)
        self.assertEqual(pids_with(f"--control-socket {wp_socket}"), [waypoint.proc.pid])


# b's application: answers each GET with its path and the client address it saw.
HTTP_SERVER = r"""
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"path": self.path, "client": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
s = S(("0.0.0.0", int(sys.argv[1])), H)
print("listening", flush=True)
s.serve_forever()
"""


if __name__ == "__main__":
    unittest.main()
