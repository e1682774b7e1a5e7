"""End to end: ambitd runs and supervises the waypoint data plane (the real ambit-waypoint) next
to ambit-tunnel.

`--waypoint-binary` names a wrapper that execs build/agent/main/ambit-waypoint, so the process
ambitd watches is the real binary (its command line says so); the wrapper only lets the test keep
the waypoint process from starting (mode 000) to hold it down for a while.

- WaypointProcessTest: node1 enrolls wp (the pod of Gateway backend/waypoint, class
  istio-waypoint), b (bound to that waypoint by istio.io/use-waypoint) and a, an ordinary pod.
  A second data-plane process runs with `--control-socket <run>/waypoint/dataplane.sock` and the
  tunnel's flags; wp's certificate is requested by it, a's and b's by ambit-tunnel (ambitd logs
  which process asked; ambitctl certs lists them). curl a -> b goes through the waypoint process
  (b's app sees wp's address); raw TCP a -> wp reaches the waypoint's 15008, which refuses a
  CONNECT to wp itself (400: wp uses no waypoint); wp -> a is reset on wp's 15001 (a waypoint's
  pod opens no redirected connections); `ambitctl connections` lists the waypoint process's flow
  of a held a -> b connection. kill -9 of the waypoint process: not ready (naming the waypoint
  data plane) while it cannot start, then restarted, wp sent to the new process, its certificate
  issued again to it, ready again, traffic through it again. Stopped (SIGSTOP): not ready, naming
  its late heartbeat, and ready again once it answers, without a restart. wp losing its Gateway
  label moves it to ambit-tunnel (ordinary traffic to it works) and back. ambitd restarted: both
  processes keep their PIDs (re-attached, pods handed back and adopted) and traffic works.
  `ambitd --cleanup` leaves neither process.
- NoWaypointPodTest: a node whose only waypoint pod is on another node starts no waypoint
  process (nor its run directory).
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (CLIENT, SERVER, Topology, build_dir, run, wait_listening,  # noqa: E402
                      waypoint_gateway)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
WAYPOINT = str(build_dir() / "agent/main/ambit-waypoint")
WP_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
API_ID = "spiffe://cluster.local/ns/backend/sa/api"
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"

# b is bound by its own label: the Gateway takes workload traffic (the default is services only).
GATEWAY = waypoint_gateway("workload")


# b's application: answers every request with its path and the address it came from; HTTP/1.1
# keep-alive, so a client can hold its connection open between requests.
HTTP_SERVER = r"""
import http.server, json, socket, sys
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


def with_labels(pod, labels):
    extra = "".join(f"    {k}: {v}\n" for k, v in labels.items())
    return pod.yaml().replace(f"    app: {pod.name}\n", f"    app: {pod.name}\n{extra}")


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


def pids_with(arg):
    out = run("pgrep", "-f", "--", arg, check=False).stdout.split()
    return [int(p) for p in out]


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def alive(pid):
    """True while pid runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or during the read
        return False


def ready(agent):
    """(status, body) of readiness; (None, "") while nothing listens yet."""
    return agent.try_ready((None, ""))


def write_wrapper(path, target):
    with open(path + ".tmp", "w") as f:
        f.write(f"#!/bin/sh\nexec {target} \"$@\"\n")
    os.chmod(path + ".tmp", 0o755)
    os.rename(path + ".tmp", path)


class WaypointProcessTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("wpp")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            cls.wp = t.add_pod("wp", namespace="backend", service_account="waypoint",
                               node="node1")
            cls.b = t.add_pod("b", namespace="backend", service_account="api", node="node1")
            cls.n1 = t.add_agent("node1")
            cls.wrapper = os.path.join(t.workdir, "ambit-waypoint")
            write_wrapper(cls.wrapper, WAYPOINT)
            cls.write_config(waypoint_label=True)
            cls.start_agent()
            cls.n1.wait_log(f"certificate {WP_ID} valid")
            cls.n1.wait_log(f"certificate {WEB_ID} valid")
            cls.n1.wait_log(f"certificate {API_ID} valid")
            cls.app = cls.b.popen(["/usr/bin/python3", "-c", HTTP_SERVER, "8080"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_listening(cls.app)
        except Exception:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    @classmethod
    def write_config(cls, waypoint_label):
        wp = (with_labels(cls.wp, {GATEWAY_LABEL: "waypoint"}) if waypoint_label
              else cls.wp.yaml())
        b = with_labels(cls.b, {"istio.io/use-waypoint": "waypoint"})
        cls.n1.write_config("pods.yaml", "---\n".join([cls.a.yaml(), wp, b, GATEWAY]))

    @classmethod
    def start_agent(cls):
        cls.n1.start("--waypoint-binary", cls.wrapper, wait_pods=[cls.a, cls.wp, cls.b])

    @property
    def waypoint_socket(self):
        return os.path.join(self.n1.run_dir, "waypoint", "dataplane.sock")

    def waypoint_pid(self):
        pids = pids_with(f"--control-socket {self.waypoint_socket}")
        return pids[0] if len(pids) == 1 else None

    def wait_ready(self, timeout=15):
        try:
            wait_for("ambitd ready", lambda: ready(self.n1)[0] == 200, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}: {ready(self.n1)[1]}\n{self.n1.logs()[-4000:]}") from None

    def certs(self):
        r = run(AMBITCTL, "certs", "-o", "json", "--admin-socket", self.n1.admin_socket,
                check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        return {c["identity"]: c for c in json.loads(r.stdout).get("certificates", [])}

    def echo(self, src, dst, port):
        srv = dst.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", str(port), "1"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            r = src.python(CLIENT, dst.ip4, port, "ping")
            self.assertEqual(r.returncode, 0, f"{src.name} -> {dst.name}: {r.stderr}\n"
                             f"{self.n1.logs()[-4000:]}")
            self.assertEqual(json.loads(r.stdout)["reply"], "echo:ping")
        finally:
            if srv.poll() is None:
                srv.kill()
            srv.wait(timeout=10)

    def through_waypoint(self, path):
        """curl a -> b: a's tunnel sends it to wp's 15008, where the waypoint process forwards it
        to b. Asserts b's app answered and saw the request come from wp."""
        r = self.a.run(["curl", "-sS", "-m", "10", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                        f"http://{self.b.ip4}:8080{path}"])
        body, _, code = r.stdout.rpartition("\n")
        self.assertEqual(code, "200", f"{r.stderr}\n{self.n1.logs()[-4000:]}")
        seen = json.loads(body)
        self.assertEqual(seen["path"], path)
        self.assertEqual(seen["client"], self.wp.ip4)  # forwarded by the waypoint

    def test_1_waypoint_pod_is_served_by_its_own_process(self):
        tunnel = self.n1.tunnel_pid()
        waypoint = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        self.assertIsNotNone(tunnel)
        self.assertNotEqual(tunnel, waypoint)
        argv = cmdline(waypoint)
        # The real binary (the wrapper execs it), with the tunnel's flags and its own control
        # socket in its own directory.
        self.assertEqual(argv[0], WAYPOINT)
        self.assertIn("--workers", argv)
        self.assertIn("--socket-mark", argv)
        self.assertEqual(argv[argv.index("--control-socket") + 1], self.waypoint_socket)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.waypoint_socket)).st_mode),
                         0o700)
        logs = self.n1.logs()
        self.assertIn(f"waypoint data plane pid={waypoint}: signed certificate for {WP_ID}\n", logs)
        self.assertIn(f"data plane pid={tunnel}: signed certificate for {WEB_ID}\n", logs)
        self.assertIn(f"data plane pid={tunnel}: signed certificate for {API_ID}\n", logs)
        # Never the other way round: each pod went to one process only.
        self.assertNotRegex(logs, f"agent: data plane pid=[0-9]+: signed certificate for {WP_ID}\n")
        for identity in (WEB_ID, API_ID):
            self.assertNotIn(f"waypoint data plane pid={waypoint}: signed certificate for "
                             f"{identity}", logs)
        certs = self.certs()
        for identity in (WP_ID, WEB_ID, API_ID):
            self.assertEqual(certs[identity]["state"], "valid", identity)
        self.wait_ready()
        self.through_waypoint("/first")
        self.n1.wait_log("path=/first")  # the waypoint's access log line

    def test_1_raw_tcp_to_the_waypoint_pod_is_refused_by_the_waypoint(self):
        # a's tunnel asks wp's 15008 for wp itself: the waypoint serves only destinations that
        # use it, and wp uses none.
        mark = len(self.n1.logs())
        srv = self.wp.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "7401", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            r = self.a.python(CLIENT, self.wp.ip4, 7401, "ping")
            got = json.loads(r.stdout) if r.returncode == 0 else {}
            self.assertNotEqual(got.get("reply"), "echo:ping")
            self.n1.wait_log(f"waypoint pod=backend/wp src={self.a.ip4} "
                             f"dst={self.wp.ip4}:7401")
            line = [l for l in self.n1.logs()[mark:].splitlines()
                    if f"dst={self.wp.ip4}:7401" in l and "answered" in l]
            self.assertTrue(line and line[0].endswith("; answered 400"), line)
            self.assertIsNone(srv.poll())  # nothing reached wp's app
        finally:
            if srv.poll() is None:
                srv.kill()
            srv.wait(timeout=10)

    def test_1_waypoint_pod_opens_no_redirected_connections(self):
        # wp's connect is steered to its own 15001 like any enrolled pod's; the waypoint process
        # resets what it accepts there.
        mark = len(self.n1.logs())
        srv = self.a.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "7402", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_listening(srv)
            r = self.wp.python(CLIENT, self.a.ip4, 7402, "ping")
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertRegex(r.stderr, "Connection reset|Broken pipe")
            self.n1.wait_log("a waypoint's pod opens no redirected connections; connection reset")
            self.assertRegex(self.n1.logs()[mark:],
                             "warn waypoint: outbound pod=backend/wp src=127.0.0.1:[0-9]+ "
                             "dst=127.0.0.1:15001: a waypoint's pod opens no redirected "
                             "connections; connection reset")
            self.assertIsNone(srv.poll())  # nothing reached a
        finally:
            if srv.poll() is None:
                srv.kill()
            srv.wait(timeout=10)

    def test_1_connections_of_both_processes_are_listed(self):
        # One keep-alive connection a -> b, held open after its first answer: the waypoint
        # process holds its downstream (a's CONNECT to wp) and its upstream to b.
        cli = self.a.popen(["/usr/bin/python3", "-c",
                            "import http.client, sys, time\n"
                            "c = http.client.HTTPConnection(sys.argv[1], 8080, timeout=10)\n"
                            "c.request('GET', '/held')\n"
                            "print(c.getresponse().read().decode(), flush=True)\n"
                            "time.sleep(20)\n", self.b.ip4],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = cli.stdout.readline()
            self.assertEqual(json.loads(first or "{}").get("client"), self.wp.ip4, cli.stderr)

            def listed():
                r = run(AMBITCTL, "connections", "-o", "json", "--admin-socket",
                        self.n1.admin_socket, check=False)
                conns = json.loads(r.stdout).get("connections", []) if r.returncode == 0 else []
                dst = [c for c in conns if c["destination"]["address"] == f"{self.b.ip4}:8080"]
                got = {(c["pod"], c["direction"]) for c in dst}
                return (got, dst) if ("backend/wp", "inbound") in got and \
                    ("default/a", "outbound") in got else None
            got, conns = wait_for("the waypoint's flow of a -> b in ambitctl connections",
                                  listed, 10)
            # a's outbound flow is ambit-tunnel's; wp's inbound flow, from a with a's identity,
            # the waypoint process's.
            at_wp = [c for c in conns if c["pod"] == "backend/wp"]
            self.assertEqual(len(at_wp), 1, conns)
            self.assertEqual(at_wp[0]["source"]["address"].split(":")[0], self.a.ip4, at_wp)
            self.assertIn(WEB_ID, json.dumps(at_wp[0]))
        finally:
            if cli.poll() is None:
                cli.kill()
            cli.wait(timeout=10)

    def test_2_killed_waypoint_process_is_restarted_and_gets_its_pod_again(self):
        old = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        self.wait_ready()
        signed_before = self.n1.logs().count(f"signed certificate for {WP_ID}")
        # Held down: its restarts fail until the binary is back.
        os.chmod(self.wrapper, 0)
        try:
            os.kill(old, signal.SIGKILL)
            self.n1.wait_log(f"waypoint data plane pid={old} killed by signal 9; restart #1", 10)
            status, body = wait_for("not ready while the waypoint process is down",
                                    lambda: (lambda r: r if r[0] == 503 else None)(ready(self.n1)),
                                    10)
            self.assertIn("the waypoint data plane is not connected", body)
            self.n1.wait_log("restart waypoint data plane:", 10)
            self.assertIsNone(self.waypoint_pid())
        finally:
            os.chmod(self.wrapper, 0o755)
        new = wait_for("a new waypoint data plane", self.waypoint_pid, 15)
        self.assertNotEqual(new, old)
        self.n1.wait_log(f"waypoint data plane pid={new}: signed certificate for {WP_ID}\n", 15)
        self.assertGreater(self.n1.logs().count(f"signed certificate for {WP_ID}"), signed_before)
        self.wait_ready()
        self.through_waypoint("/after-restart")

    def test_2b_stalled_waypoint_process_makes_the_node_not_ready(self):
        pid = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        self.wait_ready()
        os.kill(pid, signal.SIGSTOP)
        try:
            status, body = wait_for("not ready while the waypoint process is stopped",
                                    lambda: (lambda r: r if r[0] == 503 else None)(ready(self.n1)),
                                    10)
            self.assertIn("the waypoint data plane has not answered a heartbeat", body)
            self.assertNotIn("the data plane has not answered", body)  # the tunnel answers
        finally:
            os.kill(pid, signal.SIGCONT)
        self.wait_ready()
        self.assertEqual(self.waypoint_pid(), pid)  # reported, never restarted

    def test_3_pod_that_stops_being_a_waypoint_pod_moves_to_the_tunnel_and_back(self):
        tunnel = self.n1.tunnel_pid()
        waypoint = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        by_waypoint = f"waypoint data plane pid={waypoint}: signed certificate for {WP_ID}\n"
        signed = self.n1.logs().count(by_waypoint)
        self.write_config(waypoint_label=False)
        self.n1.wait_log("pod backend/wp moves from the waypoint data plane to the data plane")
        self.n1.wait_log(f"data plane pid={tunnel}: signed certificate for {WP_ID}\n", 15)
        self.echo(self.a, self.wp, 7404)  # an ordinary pod now: ambit-tunnel delivers to its app
        self.write_config(waypoint_label=True)
        self.n1.wait_log("pod backend/wp moves from the data plane to the waypoint data plane")
        self.n1.wait_log(by_waypoint, 15, count=signed + 1)
        self.assertEqual(self.waypoint_pid(), waypoint)  # kept, not restarted
        self.wait_ready()
        self.through_waypoint("/moved-back")
        # New listeners for each move: the process letting go shuts its listeners down, which
        # would leave the other one accepting on a socket that no longer listens.
        self.assertNotIn("listener of backend/wp: Invalid argument", self.n1.logs())

    def test_4_agent_restart_keeps_both_processes(self):
        tunnel = self.n1.tunnel_pid()
        waypoint = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        self.wait_ready()
        self.n1.stop()
        self.assertEqual(self.n1.tunnel_pid(), tunnel)
        self.assertEqual(self.waypoint_pid(), waypoint)
        mark = len(self.n1.logs())
        self.start_agent()
        self.n1.wait_log(f"re-attached to running waypoint data plane pid={waypoint}")
        self.n1.wait_log("adopted pod backend/wp")
        self.wait_ready()
        after = self.n1.logs()[mark:]
        self.assertIn(f"re-attached to running data plane pid={tunnel}", after)
        self.assertNotIn("started waypoint data plane", after)
        self.assertEqual(self.n1.tunnel_pid(), tunnel)
        self.assertEqual(self.waypoint_pid(), waypoint)
        self.through_waypoint("/after-agent-restart")

    def test_5_cleanup_stops_the_waypoint_process(self):
        waypoint = wait_for("the waypoint data plane", self.waypoint_pid, 10)
        tunnel = self.n1.tunnel_pid()
        self.n1.cleanup()
        self.assertEqual(pids_with(f"--control-socket {self.n1.run_dir}/"), [])
        for pid in (waypoint, tunnel):
            self.assertFalse(alive(pid), f"pid {pid} still runs")
        self.assertFalse(os.path.exists(self.n1.run_dir))


class NoWaypointPodTest(unittest.TestCase):

    def test_no_waypoint_process_without_waypoint_pods_here(self):
        with Topology("nwp") as t:
            a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node2")
            n1 = t.add_agent("node1")
            n1.write_config("pods.yaml", "---\n".join(
                [a.yaml(), with_labels(wp, {GATEWAY_LABEL: "waypoint"}), GATEWAY]))
            n1.start("--waypoint-binary", WAYPOINT, wait_pods=[a])
            n1.wait_log(f"certificate {WEB_ID} valid")
            wait_for("ambitd ready", lambda: ready(n1)[0] == 200, 15)
            time.sleep(1)
            self.assertEqual(pids_with(f"--control-socket {n1.run_dir}/waypoint/"), [])
            self.assertFalse(os.path.exists(os.path.join(n1.run_dir, "waypoint")))
            self.assertNotIn("waypoint data plane", n1.logs())


if __name__ == "__main__":
    unittest.main()
