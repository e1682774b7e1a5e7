"""End to end: rolling a data-plane process (ambit-tunnel, ambit-waypoint) without dropping or
refusing a connection (docs/ARCHITECTURE.md#restarts).

Two simulated nodes on one bridge (tests/e2e/topology.py). node1 runs a and c (default/web),
node2 runs b (backend/api), d (backend/api, bound to the waypoint by istio.io/use-waypoint) and
wp (the pod of Gateway backend/waypoint, served by node2's ambit-waypoint). Echo servers on b
(7700) and on a and c (7701); an HTTP/1.1 application on d (8080).

- SpawnRollTest (ambitd starts the data planes; `ambitctl dataplane roll`):
  - node1's tunnel (the client side: the outbound pool), node2's tunnel (the server side:
    inbound sessions) and node2's waypoint are rolled in turn while long-lived connections keep
    exchanging lines (a -> b and c -> b over IPv4 and IPv6, b -> a and b -> c back, one HTTP
    keep-alive connection a -> d through the waypoint) and clients open new connections in a
    bounded loop (a -> b, b -> c over IPv6, a -> d through the waypoint). Every held connection
    keeps working with its bytes intact, every new connection succeeds, the new process serves
    (a new PID, the old one listed as draining, its connections still in `ambitctl
    connections`), the old one exits with status 0 once its last connection closed, and tcpdump
    on the wire shows none of the clients' plaintext.
  - A connection held open past --dataplane-drain-grace: SIGTERM meanwhile does not cut the
    grace short; the old process exits at the deadline and says how many connections it
    closed.
  - A successor that refuses its configuration (the tunnel wrapper adds --max-config-bytes 1
    while a flag file exists) is abandoned at once and stopped; one that exits before it serves
    (the wrapper stops itself before it execs the tunnel, the test kills it) is abandoned. Either
    way the primary keeps its PID, is never restarted, and serves held and new connections.
  - The promoted process is a primary like any other: SIGKILLed after a roll (its predecessor
    gone, or still draining a held connection), ambitd restarts a primary on the control socket
    within seconds (not a standby waiting on <socket>.next), readiness is 200 again and new
    connections are served; the held connection of the draining predecessor keeps working.
  - Four clients of each kind open new connections back to back (through the waypoint and
    tunnel to tunnel) while node2's and node1's tunnels are rolled six times: CONNECTs that
    cross a drained process's GOAWAY are opened again, so no request gets a 503 or a reset; a
    failed request is reported with its status and body.
- ExternalRollTest (--dataplane=external on node1): the test starts node1's tunnel itself; a
  second one started on the same control socket stands by on <socket>.next, ambitd rolls to it
  by itself, the first drains (held connections keep working, new ones succeed) and exits 0 once
  its connections closed. Then the promoted one is SIGKILLed and a fresh tunnel started on the
  control socket: ambitd connects to it as to a primary (not on <socket>.next).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import echo_loop, exchange  # noqa: E402
from test_dataplane_external import DataPlaneProcess  # noqa: E402
from test_faults import ECHO, HOLD, ready_status, stop_capture  # noqa: E402
from topology import (ECHO_HTTP_APP, Topology, build_dir, run, wait_listening,  # noqa: E402
                      waypoint_gateway, with_labels)

AMBITCTL = str(build_dir() / "agent/cli/ambitctl")
TUNNEL = str(build_dir() / "agent/main/ambit-tunnel")
TRUST = "spiffe://cluster.local"
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
MARKER = "AMBIT-ROLL-PLAINTEXT-7c3f"
GRACE = 8  # --dataplane-drain-grace, seconds
STANDBY_TIMEOUT = 10  # --dataplane-standby-timeout, seconds

# Holds one HTTP/1.1 keep-alive connection; one GET /<line> per stdin line; prints
# "<status> <path the app saw> <client the app saw>" or the error's name.
HTTP_HOLD = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
c.connect()
print("connected", flush=True)
for line in sys.stdin:
    try:
        c.request("GET", "/" + line.strip())
        r = c.getresponse()
        seen = json.loads(r.read())
        print(r.status, seen["path"], seen["client"], flush=True)
    except Exception as e:
        print(type(e).__name__, flush=True)
"""

# New HTTP connections one after another until the stop file exists or SECONDS pass: one JSON
# line per connection to OUT, {"t0", "t1", "err"}; err null when 200 came back with the path,
# else the error with the status and the start of the body that came back.
HTTP_LOOP = r"""
import http.client, json, os, sys, time
host, port, seconds, stop, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.05
deadline = time.time() + seconds
seq = 0
with open(out, "w", buffering=1) as f:
    while time.time() < deadline and not os.path.exists(stop) and seq < 2000:
        seq += 1
        t0, err, status, raw = time.time(), None, None, b""
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", f"/loop-{seq}")
            r = c.getresponse()
            status, raw = r.status, r.read()
            body = json.loads(raw)
            if r.status != 200 or body["path"] != f"/loop-{seq}":
                err = f"status {r.status}"
            c.close()
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        if err is not None:
            # What came back, so a failure says whether the proxy or the app answered.
            err += f" (status {status}, body {raw[:300]!r})"
        f.write(json.dumps({"t0": t0, "t1": time.time(), "err": err}) + "\n")
        time.sleep(interval)
"""


def wait_for(what, predicate, timeout, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


def alive(pid):
    """True while pid runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or during the read
        return False


def ambitctl(agent, *args, timeout=120):
    return run(AMBITCTL, *args, "--admin-socket", agent.admin_socket, check=False,
               timeout=timeout)


def plane(agent, name):
    """The `ambitctl status` entry of data plane `name` (ambit-tunnel, ambit-waypoint)."""
    r = ambitctl(agent, "status", "-o", "json")
    if not r.stdout:
        raise AssertionError(f"ambitctl status: {r.returncode} {r.stderr}")
    for d in json.loads(r.stdout)["dataPlanes"]:
        if d["name"] == name:
            return d
    raise AssertionError(f"no {name} in ambitctl status: {r.stdout}")


def write_wrapper(path, flag, stop_flag):
    """ambit-tunnel as ambitd starts it. While `flag` exists the process it starts refuses every
    configuration (--max-config-bytes 1, the last of a repeated flag wins): it never serves.
    While `stop_flag` exists it stops itself (SIGSTOP) before it execs the tunnel."""
    with open(path + ".tmp", "w") as f:
        f.write(f"#!/bin/sh\nif [ -e {stop_flag} ]; then kill -STOP $$; fi\n"
                f"if [ -e {flag} ]; then exec {TUNNEL} \"$@\" --max-config-bytes 1; fi\n"
                f"exec {TUNNEL} \"$@\"\n")
    os.chmod(path + ".tmp", 0o755)
    os.rename(path + ".tmp", path)


class RollNodes:
    """The two-node topology of this file; `external` runs node1's data planes apart."""

    def __init__(self, name, external=False):
        self.topo = Topology(name)
        self.topo.__enter__()
        try:
            t = self.topo
            self.a = t.add_pod("a", namespace="default", service_account="web", node="node1")
            self.c = t.add_pod("c", namespace="default", service_account="web", node="node1")
            self.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
            self.d = t.add_pod("d", namespace="backend", service_account="api", node="node2")
            self.wp = t.add_pod("wp", namespace="backend", service_account="waypoint",
                                node="node2")
            self.n1, self.n2 = t.add_agent("node1"), t.add_agent("node2")
            config = "---\n".join([
                self.a.yaml(), self.c.yaml(), self.b.yaml(),
                with_labels(self.d, {"istio.io/use-waypoint": "waypoint"}),
                with_labels(self.wp, {GATEWAY_LABEL: "waypoint"}), waypoint_gateway("workload")])
            for agent in (self.n1, self.n2):
                agent.write_config("pods.yaml", config)
            self.flag = os.path.join(t.workdir, "standby-refuses")
            self.stop_flag = os.path.join(t.workdir, "standby-stops")
            self.wrapper = os.path.join(t.workdir, "ambit-tunnel")
            write_wrapper(self.wrapper, self.flag, self.stop_flag)
            roll_args = ("--dataplane-drain-grace", f"{GRACE}s",
                         "--dataplane-standby-timeout", f"{STANDBY_TIMEOUT}s")
            self.tunnel1 = None
            if external:
                self.tunnel1 = DataPlaneProcess(t.procs, TUNNEL,
                                                os.path.join(self.n1.run_dir, "dataplane.sock"),
                                                os.path.join(t.workdir, "tunnel1-first.log"))
                self.tunnel1.start()
                self.tunnel1.wait_listening()
                self.n1.start("--dataplane", "external", *roll_args,
                              wait_pods=[self.a, self.c])
            else:
                self.n1.start("--tunnel-binary", self.wrapper, *roll_args,
                              wait_pods=[self.a, self.c])
            self.n2.start("--tunnel-binary", self.wrapper, *roll_args,
                          wait_pods=[self.b, self.d, self.wp])
            self.n1.wait_log(f"certificate {TRUST}/ns/default/sa/web valid", 30)
            self.n2.wait_log(f"certificate {TRUST}/ns/backend/sa/api valid", 30)
            self.n2.wait_log(f"certificate {TRUST}/ns/backend/sa/waypoint valid", 30)
            self.servers = []
            for pod, port in ((self.b, 7700), (self.a, 7701), (self.c, 7701)):
                out = os.path.join(t.workdir, f"echo-{pod.name}.out")
                with open(out, "w") as f:
                    self.servers.append(pod.popen(["/usr/bin/python3", "-u", "-c", ECHO,
                                                   str(port)], stdout=f,
                                                  stderr=subprocess.STDOUT))
                wait_for(f"echo server in {pod.name}", lambda: "listening" in open(out).read(),
                         10, 0.05)
            app = self.d.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_listening(app)
        except BaseException:
            self.topo.close()
            raise

    def close(self):
        # AMBIT_E2E_LOG_DIR keeps the agents' and data planes' logs of a run for reading later.
        keep = os.environ.get("AMBIT_E2E_LOG_DIR")
        if keep:
            os.makedirs(keep, exist_ok=True)
            for f in os.listdir(self.topo.workdir):
                if f.endswith(".log"):
                    shutil.copy(os.path.join(self.topo.workdir, f), keep)
        self.topo.close()

    def hold(self, src, host, port):
        p = src.popen(["/usr/bin/python3", "-u", "-c", HOLD, host, str(port)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
        line = p.stdout.readline().strip()
        if line != "connected":
            raise AssertionError(f"hold {src.name} -> {host}:{port}: {line!r} {p.stderr.read()}")
        return p

    def tunnel_holds(self):
        """Held connections both ways between the nodes, IPv4 and IPv6, several pods."""
        return [self.hold(self.a, self.b.ip4, 7700), self.hold(self.a, self.b.ip6, 7700),
                self.hold(self.c, self.b.ip4, 7700), self.hold(self.b, self.a.ip4, 7701),
                self.hold(self.b, self.c.ip6, 7701)]

    def http_hold(self):
        p = self.a.popen(["/usr/bin/python3", "-u", "-c", HTTP_HOLD, self.d.ip4, "8080"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        line = p.stdout.readline().strip()
        if line != "connected":
            raise AssertionError(f"HTTP hold a -> d: {line!r} {p.stderr.read()}")
        return p

    def http_exchange(self, hold, word):
        """One request on the held HTTP connection: through the waypoint (d sees wp's address)."""
        hold.stdin.write(f"{MARKER}-{word}\n")
        hold.stdin.flush()
        got = hold.stdout.readline().split()
        if got != ["200", f"/{MARKER}-{word}", self.wp.ip4]:
            raise AssertionError(f"held HTTP connection broke at {word!r}: {got}")

    def loops(self, name, seconds=90, interval=0.05, parallel=1):
        """Clients opening new connections until the stop file appears (bounded in time);
        `parallel` copies of each."""
        stop = os.path.join(self.topo.workdir, f"stop-{name}")
        runs = []
        for i in range(parallel):
            for src, host, port in ((self.a, self.b.ip4, 7700), (self.b, self.c.ip6, 7701)):
                out = os.path.join(self.topo.workdir, f"loop-{name}-{src.name}-{i}.jsonl")
                proc = src.popen(echo_loop(host, port, seconds, f"{MARKER}-{name}", out,
                                           stop=stop, interval=interval, timeout=5,
                                           max_connections=3000),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                runs.append((proc, out))
            out = os.path.join(self.topo.workdir, f"loop-{name}-http-{i}.jsonl")
            proc = self.a.popen(["/usr/bin/python3", "-c", HTTP_LOOP, self.d.ip4, "8080",
                                 str(seconds), stop, out, str(interval)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            runs.append((proc, out))
        return stop, runs

    @staticmethod
    def stop_loops(stop, runs):
        with open(stop, "w"):
            pass
        records = {}
        for proc, out in runs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise AssertionError(f"load client failed: {err}")
            with open(out) as f:
                records[os.path.basename(out)] = [json.loads(l) for l in f if l.strip()]
        return records

    def capture(self, name):
        pcap = os.path.join(self.topo.workdir, f"{name}.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", self.topo.wire, "tcpdump", "-i", "br0",
                                 "-n", "-U", "--immediate-mode", "-s", "0", "-w", pcap, "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.topo.procs.append(dump)
        time.sleep(1.0)  # tcpdump needs a moment before it captures
        return dump, pcap


def close_holds(holds):
    for h in holds:
        h.stdin.close()
    for h in holds:
        h.wait(timeout=15)


class SpawnRollTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.nodes = RollNodes("r")

    @classmethod
    def tearDownClass(cls):
        cls.nodes.close()

    def assert_loops_all_served(self, records, name):
        for loop, recs in records.items():
            self.assertGreater(len(recs), 5, f"{name}: too few connections in {loop}")
            failed = [r for r in recs if r["err"] is not None]
            self.assertEqual(failed, [], f"{name}: new connections failed in {loop} "
                             f"({len(failed)} of {len(recs)})\n{self.nodes.n1.logs()[-3000:]}\n"
                             f"{self.nodes.n2.logs()[-3000:]}")

    def roll(self, agent, process, name):
        """Rolls `process` (tunnel, waypoint) of `agent` under held and new connections; returns
        (old pid, new pid, seconds from the last held connection closing to the old exit)."""
        n = self.nodes
        binary = "ambit-waypoint" if process == "waypoint" else "ambit-tunnel"
        old = plane(agent, binary)["pid"]
        self.assertTrue(old and alive(old), f"{binary} of {agent.node} not running")
        drained_lines = agent.logs().count("drained: the last connection and HBONE session ended; exiting")
        holds = n.tunnel_holds()
        web = n.http_hold()
        dump, pcap = n.capture(name)
        exchange(holds, f"{MARKER}-before")
        n.http_exchange(web, "before")
        stop, runs = n.loops(name)
        time.sleep(1)
        r = ambitctl(agent, "dataplane", "roll", process, "-o", "json")
        self.assertEqual(r.returncode, 0, f"{r.stdout}{r.stderr}\n{agent.logs()[-4000:]}")
        answer = json.loads(r.stdout)
        self.assertEqual(answer["mode"], "spawn")
        self.assertEqual(answer["oldPid"], old)
        new = answer["newPid"]
        self.assertNotEqual(new, old)
        self.assertTrue(alive(new))
        # The successor serves; the predecessor drains what it holds.
        status = plane(agent, binary)
        self.assertEqual(status["pid"], new)
        self.assertEqual(status.get("drainingPids"), [old], status)
        self.assertTrue(alive(old), "the old process left before its connections closed")
        if process == "tunnel":
            # The draining process's connections are still listed (its stats socket moved
            # aside): the five held ones at least, though the new process holds none of them.
            conns = json.loads(ambitctl(agent, "connections", "-o", "json").stdout)
            self.assertGreaterEqual(len(conns["connections"]), len(holds), conns)
        for i in range(3):
            exchange(holds, f"{MARKER}-during{i}")
            n.http_exchange(web, f"during{i}")
            time.sleep(0.5)
        time.sleep(1)  # new connections keep coming while the old one drains
        records = n.stop_loops(stop, runs)
        exchange(holds, f"{MARKER}-after")
        n.http_exchange(web, "after")
        self.assertTrue(alive(old), "the old process left before its connections closed")
        closed = time.time()
        close_holds(holds + [web])
        wait_for(f"old {binary} pid {old} exiting", lambda: not alive(old), GRACE + 5, 0.05)
        took = time.time() - closed
        agent.wait_log(f"pid={old} exited with status 0", 5)
        self.assertLess(took, GRACE - 2, "the old process waited for the grace, not its "
                                         "connections")
        agent.wait_log("drained: the last connection and HBONE session ended; exiting", 5, count=drained_lines + 1)
        lines, raw = stop_capture(dump, pcap)
        self.assertNotIn(MARKER.encode(), raw, "plaintext on the wire")
        self.assertTrue([l for l in lines if re.search(r"\.15008[ :]", l)], "no HBONE captured")
        self.assert_loops_all_served(records, name)
        # The new process serves what comes next, and is what ambitctl status shows.
        wait_for("the drained pid gone from status",
                 lambda: not plane(agent, binary).get("drainingPids"), 5)
        last = n.tunnel_holds()
        exchange(last, f"{MARKER}-next")
        close_holds(last)
        served = sum(len(v) for v in records.values())
        print(f"\n{name}: {binary} {old} -> {new}; {served} new connections during the roll, "
              f"none failed; old exited {took:.2f}s after its last connection closed")
        return old, new

    def test_1_roll_client_node_tunnel(self):
        self.roll(self.nodes.n1, "tunnel", "client")

    def test_2_roll_server_node_tunnel(self):
        self.roll(self.nodes.n2, "tunnel", "server")

    def test_3_roll_waypoint(self):
        n = self.nodes
        old, new = self.roll(n.n2, "waypoint", "waypoint")
        logs = n.n2.logs()
        # The waypoint's certificate was issued to the successor before the predecessor drained.
        self.assertIn(f"waypoint data plane pid={new}: signed certificate for "
                      f"{TRUST}/ns/backend/sa/waypoint", logs)
        self.assertIn("(upgrade)", logs)  # HBONE sessions drained for the successor

    def test_4_grace_deadline_closes_what_is_left(self):
        n = self.nodes
        agent = n.n1
        old = plane(agent, "ambit-tunnel")["pid"]
        held = n.hold(n.a, n.b.ip4, 7700)
        exchange([held], f"{MARKER}-held")
        r = ambitctl(agent, "dataplane", "roll", "-o", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rolled = time.time()
        new = json.loads(r.stdout)["newPid"]
        exchange([held], f"{MARKER}-still")  # served by the draining process
        # The kubelet's SIGTERM (the old pod deleted) does not cut the grace short.
        os.kill(old, signal.SIGTERM)
        agent.wait_log("signal while draining: exiting at the latest at", 5)
        time.sleep(0.5)
        self.assertTrue(alive(old), "SIGTERM cut the drain short")
        exchange([held], f"{MARKER}-after-sigterm")
        wait_for(f"old tunnel {old} exiting at the deadline", lambda: not alive(old), GRACE + 5,
                 0.05)
        took = time.time() - rolled
        self.assertGreater(took, GRACE - 1.5, "exited before the grace with a connection open")
        # The held connection and the one pooled HBONE session that carries it.
        agent.wait_log("drain grace over: closing 1 connection(s) and 1 HBONE session(s) still "
                       "open; exiting", 5)
        agent.wait_log(f"pid={old} exited with status 0", 5)
        held.stdin.close()
        held.wait(timeout=10)
        # New connections are the new process's.
        fresh = n.hold(n.a, n.b.ip4, 7700)
        exchange([fresh], f"{MARKER}-fresh")
        close_holds([fresh])
        self.assertEqual(plane(agent, "ambit-tunnel")["pid"], new)

    def check_primary_kept(self, agent, primary):
        self.assertEqual(plane(agent, "ambit-tunnel")["pid"], primary)
        self.assertTrue(alive(primary))
        held = self.nodes.hold(self.nodes.a, self.nodes.b.ip6, 7700)
        exchange([held], f"{MARKER}-kept")
        close_holds([held])

    def test_5_standby_refusing_its_configuration_is_abandoned(self):
        n = self.nodes
        agent = n.n1
        primary = plane(agent, "ambit-tunnel")["pid"]
        held = n.hold(n.c, n.b.ip4, 7700)
        exchange([held], f"{MARKER}-x")
        with open(n.flag, "w"):
            pass
        self.addCleanup(lambda: os.path.exists(n.flag) and os.unlink(n.flag))
        r = ambitctl(agent, "dataplane", "roll")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("refused configuration generation", r.stderr)
        line = [l for l in agent.logs().splitlines() if "roll abandoned" in l][-1]
        standby = int(re.search(r"standby pid (\d+)", line).group(1))
        self.assertNotEqual(standby, primary)
        wait_for("the abandoned standby stopped", lambda: not alive(standby), 10)
        self.assertIn("abandoned", plane(agent, "ambit-tunnel").get("roll", ""))
        exchange([held], f"{MARKER}-y")
        close_holds([held])
        self.check_primary_kept(agent, primary)
        # No restart and no back-off: the primary's session was never touched.
        self.assertNotIn(f"pid={primary} exited", agent.logs())
        self.assertFalse(os.path.exists(os.path.join(agent.run_dir, "dataplane.sock.next")))

    def test_6_standby_exiting_before_promotion_leaves_the_primary(self):
        n = self.nodes
        agent = n.n1
        primary = plane(agent, "ambit-tunnel")["pid"]
        held = n.hold(n.a, n.b.ip6, 7700)
        exchange([held], f"{MARKER}-x")
        # The wrapper stops itself before it execs the tunnel: the successor exists (ambitd
        # spawned it) and never gets to serve; the test then kills it.
        with open(n.stop_flag, "w"):
            pass
        self.addCleanup(lambda: os.path.exists(n.stop_flag) and os.unlink(n.stop_flag))
        roller = subprocess.Popen([AMBITCTL, "dataplane", "roll", "--admin-socket",
                                   agent.admin_socket], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        n.topo.procs.append(roller)

        def stopped_standby():
            for pid in run("pgrep", "-f", "--", n.wrapper, check=False).stdout.split():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "T":
                            return int(pid)
                except (FileNotFoundError, ProcessLookupError):
                    continue
            return None
        standby = wait_for("the successor started", stopped_standby, 10, 0.05)
        os.unlink(n.stop_flag)
        os.kill(standby, signal.SIGKILL)
        out, err = roller.communicate(timeout=30)
        self.assertNotEqual(roller.returncode, 0, out)
        self.assertIn(f"pid={standby} exited before it listened", err)
        self.assertIn("abandoned", plane(agent, "ambit-tunnel").get("roll", ""))
        exchange([held], f"{MARKER}-y")
        close_holds([held])
        self.check_primary_kept(agent, primary)
        self.assertNotIn(f"pid={primary} exited", agent.logs())

    def roll_then_kill_promoted(self, held):
        """Rolls node1's tunnel and SIGKILLs the promoted process once it has taken the control
        socket over. ambitd restarts a primary like after any crash: quickly, on the control
        socket, answering heartbeats and serving. Returns (old pid, killed pid, restarted pid)."""
        n = self.nodes
        agent = n.n1
        sock = os.path.join(agent.run_dir, "dataplane.sock")
        old = plane(agent, "ambit-tunnel")["pid"]
        restarts = int(plane(agent, "ambit-tunnel").get("restarts", 0))
        r = ambitctl(agent, "dataplane", "roll", "-o", "json")
        self.assertEqual(r.returncode, 0, f"{r.stdout}{r.stderr}\n{agent.logs()[-4000:]}")
        new = json.loads(r.stdout)["newPid"]
        self.assertNotEqual(new, old)
        agent.wait_log(f"this standby (pid {new}) is the primary now", 10)
        if held is None:
            wait_for(f"old tunnel {old} exiting", lambda: not alive(old), GRACE + 5, 0.05)
        else:
            self.assertTrue(alive(old), "the old process left while a connection was open")
        os.kill(new, signal.SIGKILL)
        killed = time.time()
        restarted = wait_for(
            "a restarted primary tunnel",
            lambda: (lambda d: d["pid"] if d.get("connected") and d.get("pid") not in (0, old, new)
                     else None)(plane(agent, "ambit-tunnel")), 5, 0.05)
        took = time.time() - killed
        self.assertTrue(alive(restarted))
        logs = agent.logs()
        self.assertIn(f"pid={new} killed by signal 9; restart #", logs)
        self.assertNotIn(f"pid={restarted} did not open", logs)
        self.assertNotIn(".sock.next within", logs)
        self.assertNotIn(f"(standby) pid={restarted}", logs)
        status = plane(agent, "ambit-tunnel")
        self.assertEqual(int(status.get("restarts", 0)), restarts + 1, status)
        self.assertEqual(status.get("socket"), sock, status)
        # It serves the control socket itself and holds its lock; nothing stands by on .next.
        self.assertFalse(os.path.exists(sock + ".next"), "a standby socket after the restart")
        with open(sock + ".lock") as f:
            self.assertEqual(int(f.read().split()[0]), restarted)
        # Ready again: the restarted process got its pods and configuration and answers pings.
        wait_for("readiness 200 after the restart", lambda: ready_status(agent) == 200, 15)
        fresh = n.hold(n.a, n.b.ip4, 7700)
        exchange([fresh], f"{MARKER}-after-kill")
        close_holds([fresh])
        # Still ready after several heartbeat rounds, and still the same process.
        time.sleep(3)
        self.assertEqual(ready_status(agent), 200, agent.logs()[-3000:])
        self.assertEqual(plane(agent, "ambit-tunnel")["pid"], restarted)
        print(f"\nroll {old} -> {new}; {new} killed; primary {restarted} serving after "
              f"{took:.2f}s")
        return old, new, restarted

    def test_7_promoted_tunnel_killed_is_restarted_as_primary(self):
        self.roll_then_kill_promoted(held=None)

    def test_8_promoted_tunnel_killed_while_predecessor_drains(self):
        n = self.nodes
        held = n.hold(n.a, n.b.ip6, 7700)
        exchange([held], f"{MARKER}-before")
        old, _, restarted = self.roll_then_kill_promoted(held)
        # The draining predecessor still carries the held connection, untouched by the restart.
        self.assertTrue(alive(old))
        exchange([held], f"{MARKER}-still-draining")
        self.assertEqual(plane(n.n1, "ambit-tunnel").get("drainingPids"), [old])
        close_holds([held])
        wait_for(f"old tunnel {old} exiting", lambda: not alive(old), GRACE + 5, 0.05)
        n.n1.wait_log(f"pid={old} exited with status 0", 5)
        self.assertEqual(plane(n.n1, "ambit-tunnel")["pid"], restarted)

    def test_9_no_request_lost_to_goaway_over_repeated_rolls(self):
        """Short requests back to back, through the waypoint (a -> d: its upstream to node2's
        tunnel) and tunnel to tunnel (a -> b, b -> c), while node2's tunnel and node1's are rolled
        in turn: a CONNECT that crosses the draining process's shutdown notice is served by it,
        and one it refuses unprocessed (REFUSED_STREAM) is opened again on a new connection,
        never answered with an error. Four clients of each kind at once, so streams are being
        opened on every session when its GOAWAY goes out. Bounded: six rolls, at most 3000 connections per
        client, 120 s."""
        n = self.nodes
        before = {a.node: a.logs().count("opened again on another HBONE connection")
                  for a in (n.n1, n.n2)}
        stop, runs = n.loops("repeat", seconds=120, interval=0.0, parallel=4)
        try:
            time.sleep(1)
            for agent in (n.n2, n.n1, n.n2, n.n2, n.n1, n.n2):
                old = plane(agent, "ambit-tunnel")["pid"]
                r = ambitctl(agent, "dataplane", "roll", "tunnel", "-o", "json")
                self.assertEqual(r.returncode, 0, f"{r.stdout}{r.stderr}\n{agent.logs()[-4000:]}")
                self.assertNotEqual(json.loads(r.stdout)["newPid"], old)
                # Only short connections: the old process leaves as soon as the ones it had end.
                wait_for(f"old tunnel {old} of {agent.node} exiting", lambda: not alive(old),
                         GRACE + 5, 0.05)
                time.sleep(0.5)
        finally:
            records = n.stop_loops(stop, runs)
        # None may fail: a CONNECT crossing a drained tunnel's shutdown notice is served by it, and
        # one refused unprocessed is opened again on a new connection.
        served = sum(len(v) for v in records.values())
        failed = [(loop, r) for loop, recs in records.items() for r in recs
                  if r["err"] is not None]
        for loop, recs in records.items():
            self.assertGreater(len(recs), 5, f"repeated rolls: too few connections in {loop}")
        self.assertEqual(failed, [],
                         f"repeated rolls: {len(failed)} of {served} new connections "
                         f"failed\n{n.n1.logs()[-3000:]}\n{n.n2.logs()[-3000:]}")
        retried = {a.node: a.logs().count("opened again on another HBONE connection") -
                   before[a.node] for a in (n.n1, n.n2)}
        print(f"\nrepeated rolls: {served} new connections, {len(failed)} failed; tunnel CONNECTs "
              f"retried after a refusal: {retried}")


class ExternalRollTest(unittest.TestCase):

    def setUp(self):
        self.nodes = RollNodes("x", external=True)
        self.addCleanup(self.nodes.close)

    def test_second_container_on_the_socket_is_rolled_to(self):
        n = self.nodes
        agent = n.n1
        first = n.tunnel1
        self.assertEqual(plane(agent, "ambit-tunnel")["mode"], "external")
        r = ambitctl(agent, "dataplane", "roll")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("a roll is a new container", r.stdout)
        holds = n.tunnel_holds()
        dump, pcap = n.capture("external")
        exchange(holds, f"{MARKER}-before")
        stop, runs = n.loops("external")
        time.sleep(1)
        second = DataPlaneProcess(n.topo.procs, TUNNEL, first.socket,
                                  os.path.join(n.topo.workdir, "tunnel1-second.log"))
        second.start()
        wait_for("the second tunnel standing by", lambda: "standing by on" in second.logs(), 10,
                 0.05)
        agent.wait_log("rolled at ", 30)
        wait_for("the second tunnel promoted", lambda: "taking the socket over" in second.logs(),
                 15, 0.05)
        self.assertIn("draining for a successor", first.logs())
        self.assertFalse(first.exited(), "the first left before its connections closed")
        for i in range(3):
            exchange(holds, f"{MARKER}-during{i}")
            time.sleep(0.5)
        records = n.stop_loops(stop, runs)
        exchange(holds, f"{MARKER}-after")
        close_holds(holds)
        first.proc.wait(timeout=GRACE + 5)
        self.assertEqual(first.proc.returncode, 0, first.logs())
        self.assertIn("drained: the last connection and HBONE session ended; exiting", first.logs())
        lines, raw = stop_capture(dump, pcap)
        self.assertNotIn(MARKER.encode(), raw, "plaintext on the wire")
        for loop, recs in records.items():
            self.assertGreater(len(recs), 5, loop)
            self.assertEqual([r for r in recs if r["err"]], [], f"{loop}\n{agent.logs()[-3000:]}")
        # ambitd stayed connected throughout: no reconnect, the second is the primary now.
        self.assertNotIn("ended its control session", agent.logs())
        self.assertEqual(plane(agent, "ambit-tunnel")["pid"], second.proc.pid)
        last = n.tunnel_holds()
        exchange(last, f"{MARKER}-next")
        close_holds(last)


    def test_promoted_killed_then_fresh_one_is_connected_as_primary(self):
        n = self.nodes
        agent = n.n1
        first = n.tunnel1
        second = DataPlaneProcess(n.topo.procs, TUNNEL, first.socket,
                                  os.path.join(n.topo.workdir, "tunnel1-second.log"))
        second.start()
        agent.wait_log("rolled at ", 30)
        wait_for("the second tunnel promoted", lambda: "taking the socket over" in second.logs(),
                 15, 0.05)
        first.proc.wait(timeout=GRACE + 5)
        self.assertEqual(plane(agent, "ambit-tunnel")["pid"], second.proc.pid)
        # The promoted one ends (its container killed); the kubelet starts a fresh one, which
        # finds the lock free and serves the control socket itself: ambitd connects there.
        second.kill()
        agent.wait_log("ended its control session", 5)
        third = DataPlaneProcess(n.topo.procs, TUNNEL, first.socket,
                                 os.path.join(n.topo.workdir, "tunnel1-third.log"))
        third.start()
        third.wait_listening()
        self.assertNotIn("standing by on", third.logs())
        wait_for("ambitd connected to the fresh tunnel",
                 lambda: (lambda d: d.get("connected") and d.get("pid") == third.proc.pid)(
                     plane(agent, "ambit-tunnel")), 10, 0.05)
        wait_for("readiness 200 with the fresh tunnel", lambda: ready_status(agent) == 200, 15)
        self.assertFalse(os.path.exists(first.socket + ".next"))
        last = n.tunnel_holds()
        exchange(last, f"{MARKER}-third")
        close_holds(last)


if __name__ == "__main__":
    unittest.main()
