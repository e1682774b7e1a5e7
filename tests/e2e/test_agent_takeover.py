"""End to end: an agent upgrade with both agents on the node, `ambitd --take-over`.

Two nodes (tests/e2e/topology.py): a (node1) streams to b (node2) over HBONE on long-lived
connections and opens new ones in a bounded loop, while tcpdump watches the wire. Then a second
ambitd of node1's instance, same flags plus `--take-over`, is started beside the running one (both
in one network namespace, as on bare metal: the same metrics, readiness and admin addresses):

- it asks the running agent to step aside over <run dir>/agent-handoff.sock, takes the instance
  lock, re-attaches to the running data plane (same PID: not restarted) and becomes ready;
- the old agent logs to which PID it handed over, no longer listens anywhere (its readiness port
  and admin socket are the new agent's: `ambitctl` talks to the new one), stays alive idle, and
  exits 0 on SIGTERM without touching the instance (pins, capture and data plane stay);
- every held connection survives with intact bytes, every new connection during the take-over
  succeeds, and nothing but HBONE crosses the wire (the load's marker never appears in it);
- spawn mode (ambitd started the tunnel) and external mode (the tunnel started apart) alike.

Besides: without `--take-over` the second agent is refused as before, naming the flag; with it,
against an instance whose lock is held by a process that serves no hand-off (a stale socket file
left behind, as from an older agent) it exits with a message saying so, and once the lock is free
it starts normally over the stale socket; bytes that are no request get a refusal and the running
agent carries on.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import echo_loop  # noqa: E402
from test_dataplane_external import (DataPlaneProcess, listener_pids, ready,  # noqa: E402
                                     status, wait_for)
from test_faults import TwoNodes, stop_capture  # noqa: E402
from topology import build_dir, run  # noqa: E402

TUNNEL = str(build_dir() / "agent/main/ambit-tunnel")
EXTERNAL = ("--dataplane", "external")

# A held connection that streams continuously: sends numbered 512-byte blocks of a pattern
# derived from its seed every 10 ms and checks each echoed block byte for byte, until the stop
# file exists. Prints one JSON line: blocks sent, blocks echoed intact, the first error.
STREAM = r"""
import hashlib, json, os, socket, sys, time
host, port, seed, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=10)
print("connected", flush=True)
sent = good = 0
err = None
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    block = (hashlib.sha256(f"{seed}-{sent}".encode()).hexdigest() * 8).encode()
    try:
        s.sendall(block)
        sent += 1
        got = b""
        while len(got) < len(block):
            chunk = s.recv(len(block) - len(got))
            if not chunk:
                raise ConnectionError("closed by peer")
            got += chunk
    except OSError as e:
        err = f"{type(e).__name__} at block {sent}"
        break
    if got != block:
        err = f"block {sent} came back altered"
        break
    good += 1
    time.sleep(0.01)
print(json.dumps({"sent": sent, "good": good, "err": err}), flush=True)
"""


def read_file(path):
    with open(path) as f:
        return f.read()


def log_step(what):
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {what}\n")


def take_over_argv(agent, *extra):
    return agent.argv(*extra, "--take-over")


class TakeOverBase:
    """The take-over scenario; the subclasses run it in spawn and external mode."""

    MODE = ()
    HELD = 3
    PORT = 7900
    LOAD_INTERVAL = 0.02  # a new connection every 20 ms
    LOAD_SECONDS = 30

    def setUp(self):
        self.nodes = TwoNodes(self.NAME, start=False)
        self.addCleanup(self.nodes.close)
        n = self.nodes
        self.tunnels = {}
        if self.MODE == EXTERNAL:
            for agent in (n.n1, n.n2):
                t = DataPlaneProcess(n.topo.procs, TUNNEL,
                                     os.path.join(agent.run_dir, "dataplane.sock"),
                                     os.path.join(n.topo.workdir, f"tunnel-{agent.node}.log"))
                t.start()
                t.wait_listening()
                self.tunnels[agent.node] = t
        log_step("starting the agents")
        n.start(self.MODE)
        for agent in (n.n1, n.n2):
            self.wait_ready(agent)
        log_step("agents ready")

    def wait_ready(self, agent, timeout=30):
        try:
            wait_for(f"{agent.node} ready", lambda: ready(agent)[0] == 200, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}: {ready(agent)[1]}\n{agent.logs()[-4000:]}") from None

    def tunnel_pid(self, agent):
        if self.MODE == EXTERNAL:
            return self.tunnels[agent.node].proc.pid
        return agent.tunnel_pid()

    def start_streams(self, port, stop):
        streams = []
        for i in range(self.HELD):
            p = self.nodes.a.popen(["/usr/bin/python3", "-c", STREAM, self.nodes.b.ip4, str(port),
                                    f"held{i}", stop],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            streams.append(p)
            line = p.stdout.readline().strip()
            if line != "connected":
                p.wait(timeout=15)
                raise AssertionError(f"held connection {i} did not connect: {p.stderr.read()}")
        return streams

    def test_take_over(self):
        n = self.nodes
        old = n.n1
        port = self.PORT
        n.echo_server(port)
        self.assertTrue(n.probe(port)["ok"])
        tunnel_before = self.tunnel_pid(old)
        self.assertIsNotNone(tunnel_before)

        marker = "AMBIT-TAKEOVER-PLAINTEXT-93ac"
        dump, pcap = n.capture(f"takeover-{self.NAME}")
        stop = os.path.join(n.topo.workdir, f"stop-{self.NAME}")
        streams = self.start_streams(port, stop)
        load_out = os.path.join(n.topo.workdir, f"load-{self.NAME}.jsonl")
        load = n.a.popen(echo_loop(n.b.ip4, port, self.LOAD_SECONDS, marker, load_out, stop=stop,
                                   interval=self.LOAD_INTERVAL, timeout=5, max_connections=3000),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # traffic flows before the take-over

        old_proc = old.proc
        old.log.close()
        old.log = None
        old_log = old.logs()
        new_log_path = os.path.join(n.topo.workdir, f"ambitd-node1-new-{self.NAME}.log")
        t0 = time.time()
        with open(new_log_path, "w") as log:
            new_proc = subprocess.Popen(take_over_argv(old, *self.MODE), stdout=log,
                                        stderr=subprocess.STDOUT)
        n.topo.procs.append(new_proc)
        # From here the topology stops and cleans up through the new agent (the old one is
        # killed with the topology's processes should the test fail before its SIGTERM).
        old.proc = new_proc
        log_step(f"second agent started, pid {new_proc.pid}")

        def new_logs():
            with open(new_log_path) as f:
                return f.read()

        wait_for("the new agent took over",
                 lambda: "stepped aside; taking over" in new_logs() or new_proc.poll() is not None,
                 20, 0.02)
        self.assertIsNone(new_proc.poll(), new_logs())
        try:
            wait_for("the new agent ready", lambda: ready(old)[0] == 200, 30)
        except AssertionError as e:
            raise AssertionError(f"{e}: {ready(old)}\n{new_logs()[-4000:]}") from None
        took = time.time() - t0
        log_step(f"new agent ready after {took:.2f}s")
        # The old agent handed over, to the new one's PID, and idles.
        wait_for("the old agent's hand-off line",
                 lambda: f"handed over the instance to agent pid {new_proc.pid} " in old.logs(),
                 5)
        self.assertIn(f"agent pid {new_proc.pid} (build ", old.logs())
        self.assertIn(f"agent pid {old_proc.pid} (build ", new_logs())
        time.sleep(1.0)  # traffic keeps flowing under the new agent
        self.assertIsNone(old_proc.poll(), "the old agent exited before SIGTERM")

        # Listeners: readiness, metrics and admin are the new agent's; the old has none.
        self.assertEqual(listener_pids(old.admin_socket), {new_proc.pid})
        ss = run("ss", "-tlnpH", check=False).stdout
        for p in (old.readiness_port, old.metrics_port):
            lines = [l for l in ss.splitlines() if f"127.0.0.1:{p} " in l]
            self.assertTrue(lines, f"nothing listens on {p}")
            self.assertTrue(all(f"pid={new_proc.pid}," in l for l in lines), lines)
        self.assertNotIn(f"pid={old_proc.pid},", run("ss", "-xlpnH", check=False).stdout)
        self.assertNotIn(f"pid={old_proc.pid},", ss)
        # ambitctl talks to the new agent: ready, the same data plane connected.
        st = status(old)
        self.assertTrue(st["ready"], st)
        tunnel = [d for d in st["dataPlanes"] if d["name"] == "ambit-tunnel"][0]
        self.assertTrue(tunnel["connected"], st)
        self.assertEqual(self.tunnel_pid(old), tunnel_before, "the data plane was restarted")

        # SIGTERM: the old agent exits 0 and touches nothing.
        old_proc.send_signal(signal.SIGTERM)
        self.assertEqual(old_proc.wait(timeout=10), 0, old.logs()[-3000:])
        # Its last words (in spawn mode the tunnel it started logs into the same file).
        after = old.logs()[len(old_log):]
        tail = [l for l in after[after.index("handed over the instance"):].splitlines()
                if " agent: " in l]
        self.assertEqual(len(tail), 1, tail)
        self.assertIn("after the hand-off; exiting", tail[0])
        self.assertNotIn(" agent: ", after[after.index("after the hand-off; exiting"):])
        time.sleep(1.0)
        self.assertTrue(n.probe(port)["ok"], "a new connection failed after the old agent exited")
        self.assertEqual(ready(old)[0], 200)
        self.assertTrue(os.path.isdir(old.pin_root), "the old agent removed the pins")

        log_step("old agent exited")
        with open(stop, "w"):
            pass
        _, err = load.communicate(timeout=30)
        self.assertEqual(load.returncode, 0, err)
        for i, s in enumerate(streams):
            out, err = s.communicate(timeout=30)
            got = json.loads(out.strip().splitlines()[-1])
            self.assertIsNone(got["err"], f"held connection {i}: {got} {err}")
            self.assertGreater(got["good"], 100, got)
            self.assertEqual(got["sent"], got["good"], got)
        with open(load_out) as f:
            records = [json.loads(l) for l in f if l.strip()]
        during = [r for r in records if t0 <= r["t0"] <= t0 + took]
        failed = [r for r in records if r["err"]]
        self.assertEqual(failed, [], f"{len(failed)} of {len(records)} new connections failed")
        self.assertGreater(len(during), 5, f"too few connections during the take-over ({took}s)")
        lines, raw = stop_capture(dump, pcap)
        self.assertNotIn(marker.encode(), raw, "plaintext on the wire")
        self.assertNotIn(b"held0-", raw)
        self.assertTrue([l for l in lines if re.search(r"\.15008[ :]", l)], "no HBONE captured")
        self.assertEqual([l for l in lines if not re.search(r"\.15008[ :]", l)], [],
                         "traffic on the wire outside HBONE")
        sys.stderr.write(f"take-over ({self.NAME}): ready after {took:.2f}s, {len(records)} new "
                         f"connections ({len(during)} during it), none failed\n")


class SpawnTakeOverTest(TakeOverBase, unittest.TestCase):
    NAME = "ts"
    MODE = ()


class ExternalTakeOverTest(TakeOverBase, unittest.TestCase):
    NAME = "te"
    MODE = EXTERNAL


class TakeOverRefusalTest(unittest.TestCase):
    """Without --take-over; a lock holder that serves no hand-off; bytes that are no request."""

    def setUp(self):
        self.nodes = TwoNodes("tr", start=False)
        self.addCleanup(self.nodes.close)

    def second(self, agent, *extra, timeout=40):
        r = subprocess.run(agent.argv(*extra), capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def test_refused_without_take_over_and_garbage_request(self):
        n = self.nodes
        n.n1.start(wait_pods=[n.a])
        code, out = self.second(n.n1)
        self.assertEqual(code, 1, out)
        self.assertIn(f"is in use by pid {n.n1.proc.pid}", out)
        self.assertIn("ambitd --take-over asks a running agent to step aside", out)
        # Bytes that are no request: refused with why, the agent carries on.
        sock = os.path.join(n.n1.run_dir, "agent-handoff.sock")
        n.n1.wait_log("certificate", 30)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(5)
            s.connect(sock)
            s.send(b"\xff\xff\xff not a request")
            answer = s.recv(4096)
        self.assertIn(b"does not parse", answer)
        # A connection that sends nothing is closed after a while, never blocks the agent.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(10)
            s.connect(sock)
            self.assertEqual(s.recv(4096), b"")
        self.assertIsNone(n.n1.proc.poll())
        self.assertEqual(listener_pids(sock), {n.n1.proc.pid})
        wait_for("still ready", lambda: ready(n.n1)[0] == 200, 20)

    def test_two_take_overs_at_once(self):
        """Two new agents ask at the same moment: one takes over; the other is refused or finds
        the instance taken (and exits 1 saying so), or takes over from the winner in turn. Never
        two agents active at once; every agent that stepped aside exits 0 on SIGTERM."""
        n = self.nodes
        agent = n.n1
        agent.start(wait_pods=[n.a])
        wait_for("ready", lambda: ready(agent)[0] == 200, 30)
        first = agent.proc
        procs, logs = [], []
        for i in range(2):
            path = os.path.join(n.topo.workdir, f"ambitd-two-{i}.log")
            with open(path, "w") as log:
                p = subprocess.Popen(take_over_argv(agent), stdout=log, stderr=subprocess.STDOUT)
            n.topo.procs.append(p)
            procs.append(p)
            logs.append(path)
        sock = os.path.join(agent.run_dir, "agent-handoff.sock")
        # Settled: the admin socket and the hand-off socket served by one of the two.
        wait_for("one new agent serving", lambda: len(listener_pids(agent.admin_socket)) == 1 and
                 listener_pids(agent.admin_socket) <= {p.pid for p in procs} and
                 listener_pids(sock) == listener_pids(agent.admin_socket), 30)
        wait_for("ready", lambda: ready(agent)[0] == 200, 30)
        time.sleep(1.0)
        active = listener_pids(agent.admin_socket).pop()
        agent.proc = next(p for p in procs if p.pid == active)  # cleaned up through it
        self.assertIn(f"handed over the instance to agent pid ", read_file(agent.log_path))
        self.assertIsNone(first.poll(), "the first agent exited before SIGTERM")
        other = next(p for p in procs if p.pid != active)
        other_log = read_file(logs[procs.index(other)])
        log_step("the other new agent " + ("stepped aside in turn" if other.poll() is None else
                                           f"exited: {other_log.strip().splitlines()[-1]}"))
        if other.poll() is None:
            # It took over first and then stepped aside for the winner.
            self.assertIn(f"handed over the instance to agent pid {active} ", other_log)
            other.send_signal(signal.SIGTERM)
            self.assertEqual(other.wait(timeout=10), 0, other_log)
        else:
            self.assertEqual(other.returncode, 1, other_log)
            self.assertRegex(other_log, r"already stepping aside for pid|--take-over failed")
        first.send_signal(signal.SIGTERM)
        self.assertEqual(first.wait(timeout=10), 0)
        self.assertEqual(listener_pids(agent.admin_socket), {active})
        wait_for("still ready", lambda: ready(agent)[0] == 200, 20)

    def test_lock_holder_without_hand_off_and_stale_socket(self):
        import fcntl
        n = self.nodes
        agent = n.n1
        os.makedirs(agent.run_dir, exist_ok=True)
        sock = os.path.join(agent.run_dir, "agent-handoff.sock")
        # A socket file nobody listens on, as an agent that died leaves behind.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind(sock)
        s.close()
        lock_path = f"/run/lock/ambit/{agent.instance}.lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            code, out = self.second(agent, "--take-over", "--take-over-timeout", "5s")
            self.assertEqual(code, 1, out)
            self.assertIn(f"is in use by pid {os.getpid()}", out)
            self.assertIn("--take-over failed: no agent serves the hand-off socket", out)
            self.assertIn("must be stopped first", out)
            self.assertFalse(os.path.exists(agent.pin_root), "it touched the instance")
        # The holder is gone, the stale socket stays: --take-over starts as any agent does.
        agent.start("--take-over", wait_pods=[n.a])
        wait_for("ready", lambda: ready(agent)[0] == 200, 30)
        self.assertEqual(listener_pids(sock), {agent.proc.pid})


if __name__ == "__main__":
    unittest.main()
