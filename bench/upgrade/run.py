#!/usr/bin/env python3
"""Connections lost per upgrade: an agent take-over, a data-plane roll, and a plain data-plane
restart for comparison.

Two simulated nodes (tests/e2e/topology.py, spawn mode): pod a on node1 talks to pod b on node2
over HBONE. Each round holds N connections from a to b that exchange a verified line every
50 ms, and opens new connections at a fixed rate; after a quiet stretch it upgrades node1 and
keeps going for a while. Per round it reports the held connections lost, the new connections
that failed, and a new connection's time to its first echoed reply (p50/p99) before the upgrade
and during it (from its start to 1 s after it ended). Upgrades:

- take-over: a second ambitd of node1's instance with --take-over; the old one is sent SIGTERM once
  the new one is ready (the DaemonSet's order);
- roll: `ambitctl dataplane roll` (the data-plane hand-over), when this build's ambitctl has it;
- restart: SIGKILL to node1's ambit-tunnel (ending at once, as a crash or a restart without the
  roll), which ambitd restarts: the baseline, which loses every connection the old process held.

Goal: 0 connections lost and 0 new connections failed per take-over and per roll. Needs root.
Bounded: each round at most ROUND_LIMIT_S, each wait at most 30 s, at most --rate x round time new
connections.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# Holds N connections; every 50 ms sends a numbered line on each and checks the echo. A connection
# that fails once counts as lost for the round. Prints one JSON line at the stop file.
HOLDER = r"""
import json, os, socket, sys, time
host, port, n, stop, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
for s in socks:
    s.settimeout(5)
print("connected", flush=True)
alive, errors, seq = [True] * n, {}, 0
deadline = time.time() + limit
while not os.path.exists(stop) and time.time() < deadline:
    seq += 1
    for i, s in enumerate(socks):
        if not alive[i]:
            continue
        msg = f"held{i}-{seq}\n".encode()
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                c = s.recv(len(msg) - len(got))
                if not c:
                    raise ConnectionError("closed by peer")
                got += c
            if got != msg:
                raise ValueError("reply altered")
        except Exception as e:
            alive[i] = False
            errors[str(i)] = type(e).__name__
    time.sleep(0.05)
print(json.dumps({"held": n, "alive": sum(alive), "rounds": seq, "errors": errors}), flush=True)
"""

# Opens a connection every 1/rate s until the stop file (or the limit) and sends one line: the
# time until it came back echoed (connect() itself completes at the pod's own redirect listener,
# so a tunnel that is slow to serve shows only in the reply). One JSON line per connection.
NEWCONN = r"""
import json, os, socket, sys, time
host, port, rate, stop, limit, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6]
deadline = time.time() + limit
nxt = time.time()
seq = 0
with open(out, "w", buffering=1) as f:
    while not os.path.exists(stop) and time.time() < deadline:
        seq += 1
        t0, err, reply = time.time(), None, None
        try:
            s = socket.create_connection((host, port), timeout=3)
            try:
                s.settimeout(3)
                msg = f"new-{seq}\n".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    c = s.recv(100)
                    if not c:
                        break
                    got += c
                if got != msg:
                    err = "reply of %d bytes" % len(got)
                else:
                    reply = time.time() - t0
            finally:
                s.close()
        except OSError as e:
            err = type(e).__name__
        f.write(json.dumps({"t0": t0, "reply": reply, "err": err}) + "\n")
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.time()))
"""

ROUND_LIMIT_S = 90
WAIT_S = 30


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def wait(what, pred, timeout=WAIT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout}s")


class Bench:
    def __init__(self, args):
        from test_faults import TwoNodes  # noqa: E402 (needs AMBIT_BUILD_DIR set)
        self.args = args
        self.nodes = TwoNodes("up")
        self.agent = self.nodes.n1
        self.port = 7950
        self.nodes.echo_server(self.port)
        self.wait_ready()
        self.rounds = 0

    def close(self):
        self.nodes.close()

    def ready(self):
        try:
            return self.agent.ready()[0] == 200
        except OSError:
            return False

    def wait_ready(self):
        wait("node1 ready", self.ready)

    def ambitctl(self, *args, timeout=60):
        from topology import build_dir  # noqa: E402
        return subprocess.run([str(build_dir() / "agent/cli/ambitctl"), *args, "--admin-socket",
                               self.agent.admin_socket], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def has_roll(self):
        """Whether this build's ambitctl lists the `dataplane` command (its usage, no agent)."""
        from topology import build_dir  # noqa: E402
        r = subprocess.run([str(build_dir() / "agent/cli/ambitctl")], capture_output=True,
                           text=True, timeout=10, check=False)
        return any(l.split()[:1] == ["dataplane"] for l in (r.stdout + r.stderr).splitlines())

    # The upgrades. Each returns once node1 serves again under the upgraded process.
    def take_over(self):
        a = self.agent
        old = a.proc
        log = open(os.path.join(self.nodes.topo.workdir, f"ambitd-takeover-{self.rounds}.log"),
                   "w")
        new = subprocess.Popen(a.argv("--take-over"), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.nodes.topo.procs.append(new)
        a.proc = new  # the topology stops and cleans up through the new agent
        a.log_path = log.name
        wait("the old agent stepped aside", lambda: "stepped aside" in open(log.name).read() or
             new.poll() is not None)
        if new.poll() is not None:
            raise RuntimeError(f"the new agent exited: {open(log.name).read()[-2000:]}")
        self.wait_ready()
        old.send_signal(signal.SIGTERM)
        if old.wait(timeout=10) != 0:
            raise RuntimeError("the old agent did not exit 0 on SIGTERM")

    def roll(self):
        r = self.ambitctl("dataplane", "roll", "tunnel")
        if r.returncode != 0:
            raise RuntimeError(f"ambitctl dataplane roll: {r.stdout} {r.stderr}")
        self.wait_ready()

    def serving_tunnel(self):
        """The PID of the ambit-tunnel node1's agent is connected to (ambitctl status)."""
        r = self.ambitctl("status", "-o", "json", timeout=20)
        try:
            planes = json.loads(r.stdout).get("dataPlanes", [])
        except ValueError:
            return None
        pids = [d.get("pid") for d in planes if d.get("name") == "ambit-tunnel" and
                d.get("connected")]
        return pids[0] if pids else None

    def restart(self):
        # SIGKILL: the process ends at once, as in a crash or a restart without the roll (SIGTERM
        # would drain it).
        pid = self.serving_tunnel()
        if not pid:
            raise RuntimeError("no connected ambit-tunnel on node1")
        os.kill(pid, signal.SIGKILL)
        wait("a new ambit-tunnel", lambda: self.serving_tunnel() not in (None, pid),
             timeout=WAIT_S)
        self.wait_ready()

    def round(self, kind, upgrade):
        self.rounds += 1
        a = self.args
        n = self.nodes
        work = n.topo.workdir
        stop = os.path.join(work, f"stop-{self.rounds}")
        out = os.path.join(work, f"new-{self.rounds}.jsonl")
        holder = n.a.popen(["/usr/bin/python3", "-c", HOLDER, n.b.ip4, str(self.port),
                            str(a.held), stop, str(ROUND_LIMIT_S)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if holder.stdout.readline().strip() != "connected":
            holder.wait(timeout=15)
            raise RuntimeError(f"holder did not connect: {holder.stderr.read()}")
        newconn = n.a.popen(["/usr/bin/python3", "-c", NEWCONN, n.b.ip4, str(self.port),
                             str(a.rate), stop, str(ROUND_LIMIT_S), out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(a.before)
        t0 = time.time()
        upgrade()
        t1 = time.time()
        time.sleep(a.after)
        with open(stop, "w"):
            pass
        hout, herr = holder.communicate(timeout=ROUND_LIMIT_S)
        newconn.communicate(timeout=30)
        held = json.loads(hout.strip().splitlines()[-1]) if hout.strip() else None
        if held is None:
            raise RuntimeError(f"holder printed nothing: {herr}")
        with open(out) as f:
            recs = [json.loads(l) for l in f if l.strip()]
        before = [r for r in recs if r["t0"] < t0]
        during = [r for r in recs if t0 <= r["t0"] <= t1 + 1.0]
        ms = lambda rs: [r["reply"] * 1000 for r in rs if r["reply"] is not None]  # noqa: E731
        return {
            "kind": kind, "upgrade_s": t1 - t0, "held": held["held"],
            "lost": held["held"] - held["alive"],
            "new": len(recs), "new_failed": sum(1 for r in recs if r["err"]),
            "new_during": len(during), "new_failed_during": sum(1 for r in during if r["err"]),
            "p50_before_ms": pct(ms(before), 50), "p99_before_ms": pct(ms(before), 99),
            "p50_during_ms": pct(ms(during), 50), "p99_during_ms": pct(ms(during), 99),
        }


def fmt(v, unit=""):
    if v is None:
        return "-"
    return f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    ap.add_argument("--json", default=os.path.join(REPO, "bench", "results", "upgrade.json"))
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--held", type=int, default=20, help="connections held through each upgrade")
    ap.add_argument("--rate", type=float, default=50.0, help="new connections per second")
    ap.add_argument("--before", type=float, default=3.0, help="seconds before the upgrade")
    ap.add_argument("--after", type=float, default=3.0, help="seconds after it")
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer connections")
    args = ap.parse_args()
    if args.quick:
        args.repetitions, args.held, args.rate, args.before, args.after = 1, 5, 20.0, 1.5, 1.5
    os.environ["AMBIT_BUILD_DIR"] = os.path.abspath(args.build_dir)
    sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
    from topology import require_root  # noqa: E402
    require_root()

    bench = Bench(args)
    results, not_measured = [], {}
    try:
        kinds = [("take-over", bench.take_over)]
        if bench.has_roll():
            kinds.append(("roll", bench.roll))
        else:
            not_measured["roll"] = "this build's ambitctl has no `dataplane roll`"
        # The baseline's rounds first: a data plane SIGKILLed after a roll was seen restarted as
        # a standby that never served (bench/upgrade/README.md), which would stop the run.
        plan = [(rep, "restart", bench.restart) for rep in range(args.repetitions)]
        plan += [(rep, kind, fn) for rep in range(args.repetitions) for kind, fn in kinds]
        for rep, kind, fn in plan:  # upgrades interleaved: drift affects each alike
            r = bench.round(kind, fn)
            r["repetition"] = rep
            results.append(r)
            sys.stderr.write(f"{kind} #{rep}: lost {r['lost']}/{r['held']}, new failed "
                             f"{r['new_failed_during']}/{r['new_during']} during "
                             f"({r['upgrade_s']:.2f}s)\n")
    except Exception:
        sys.stderr.write(f"node1's agent log, last lines:\n{bench.agent.logs()[-4000:]}\n")
        raise
    finally:
        bench.close()

    mach = machine()
    print(f"machine: {mach['nproc']} x {mach['cpu']}, kernel {mach['kernel']}; "
          f"{args.repetitions} repetition(s), {args.held} held connections, "
          f"{args.rate:g} new connections/s")
    print(f"{'upgrade':<10}{'lost/held':>12}{'new failed':>14}{'upgrade s':>11}"
          f"{'p50 before':>12}{'p50 during':>12}{'p99 before':>12}{'p99 during':>12}")
    summary = {}
    for kind in ("take-over", "roll", "restart"):
        rs = [r for r in results if r["kind"] == kind]
        if not rs:
            print(f"{kind:<10}{'not measured: ' + not_measured.get(kind, ''):>40}")
            continue
        med = lambda k: (statistics.median([r[k] for r in rs if r[k] is not None])  # noqa: E731
                         if any(r[k] is not None for r in rs) else None)
        s = {"lost_max": max(r["lost"] for r in rs), "lost_median": med("lost"),
             "held": rs[0]["held"], "new_failed_during_max": max(r["new_failed_during"] for r in rs),
             "new_during": sum(r["new_during"] for r in rs), "upgrade_s": med("upgrade_s"),
             "p50_before_ms": med("p50_before_ms"), "p50_during_ms": med("p50_during_ms"),
             "p99_before_ms": med("p99_before_ms"), "p99_during_ms": med("p99_during_ms")}
        summary[kind] = s
        print(f"{kind:<10}{fmt(s['lost_max']) + '/' + str(s['held']):>12}"
              f"{fmt(s['new_failed_during_max']) + '/' + str(s['new_during']):>14}"
              f"{fmt(s['upgrade_s']):>11}{fmt(s['p50_before_ms'], 'ms'):>12}"
              f"{fmt(s['p50_during_ms'], 'ms'):>12}{fmt(s['p99_before_ms'], 'ms'):>12}"
              f"{fmt(s['p99_during_ms'], 'ms'):>12}")
    print("(lost: the worst round; new failed: the worst round / new connections during all "
          "rounds' upgrades; times: medians over rounds)")
    print("\nratios (during / before, time to a new connection's first reply):")
    for kind, s in summary.items():
        for q in ("p50", "p99"):
            b, d = s[f"{q}_before_ms"], s[f"{q}_during_ms"]
            print(f"  {kind} {q}: {d / b:.2f}x" if b and d else f"  {kind} {q}: -")
    targets = []
    for kind in ("take-over", "roll"):
        s = summary.get(kind)
        for name, key in ((f"connections lost per {kind} = 0", "lost_max"),
                          (f"new connections failed during a {kind} = 0",
                           "new_failed_during_max")):
            if s is None:
                targets.append({"target": name, "value": "-", "status": "not measured",
                                "why": not_measured.get(kind, "")})
            else:
                targets.append({"target": name, "value": s[key],
                                "status": "met" if s[key] == 0 else "missed"})
    if "restart" in summary:
        s = summary["restart"]
        targets.append({"target": "baseline: a plain data-plane restart loses the connections "
                        "it held", "value": f"{s['lost_max']}/{s['held']}", "status": "reference"})
    print("\ntargets:")
    for t in targets:
        why = f" ({t['why']})" if t.get("why") else ""
        print(f"  {t['target']}: {t['value']} — {t['status']}{why}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": mach, "config": vars(args), "rounds": results, "summary": summary,
                   "targets": targets}, f, indent=2)
    return 0 if all(t["status"] in ("met", "not measured", "reference") for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
