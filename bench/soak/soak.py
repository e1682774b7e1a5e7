#!/usr/bin/python3
"""ambit's soak run: many concurrent tunneled connections with churn across two simulated nodes
for a long time, watching whether ambitd and ambit-tunnel grow.

    make soak                                     # 10 minutes, 10 000 connections
    SOAK_SECONDS=120 SOAK_CONNS=2000 make soak    # shorter, smaller
    /usr/bin/python3 bench/soak/soak.py [--build-dir build] [--seconds N] [--conns N] ...

Pod a (node1, enrolled) holds --conns connections to pod b (node2, enrolled) at once, each
through eBPF redirect -> ambit-tunnel -> HBONE (mTLS, HTTP/2 CONNECT) -> ambit-tunnel -> echo
server. Each connection makes a round trip when it opens and every ~10 s, lives 20-60 s, then
its slot opens a new one (bench/soak/load.py). Every --sample seconds the run records the RSS and
the open descriptors of ambitd and ambit-tunnel on both nodes; at the end it prints, per process,
the least-squares slope over the second half of the run, its last sample left out (KiB/min;
fds/min of the floor, each sample's minimum with its neighbours, as bursts of churn make
descriptors spike for a moment). Pass: every slope
below --max-kib-per-min and --max-fds-per-min, the data planes never restarted, the load reached
its concurrency, and almost no connection failed. Not part of CI (it runs for minutes).

Same rules as the end-to-end tests: tests/e2e/topology.py builds the topology (198.18.0.0/15
only, inside namespaces of its own) and removes it on exit, also on failure. The run is bounded
in time: the load stops after --seconds; the script gives up 60 s after that.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from topology import fd_count, rss_kib  # noqa: E402
LOAD = str(pathlib.Path(__file__).resolve().parent / "load.py")
PORT = 7070
FD_LIMIT = 65536


def env(name, default):
    return type(default)(os.environ.get(name, default))






def established(pod):
    """Client connections established in `pod` to its tunnel's outbound listener (the kernel's
    count: the client's own counter lags while its event loop is busy)."""
    out = subprocess.run(["ip", "netns", "exec", pod.netns, "ss", "-Htn", "state", "established",
                          "dport = :15001"], capture_output=True, text=True).stdout
    return out.count("\n")


def slope_per_min(points):
    """Least-squares slope of [(t seconds, y)] in y per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60.0 * sum((t - mt) * (y - my) for t, y in points) / var


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.environ.get("BUILD_DIR", str(REPO / "build")))
    p.add_argument("--seconds", type=float, default=env("SOAK_SECONDS", 600.0))
    p.add_argument("--conns", type=int, default=env("SOAK_CONNS", 10000))
    p.add_argument("--sample", type=float, default=env("SOAK_SAMPLE_SECONDS", 5.0))
    p.add_argument("--ramp", type=float, default=env("SOAK_RAMP_PER_S", 500.0),
                   help="new connections per second while the load builds up")
    p.add_argument("--life-min", type=float, default=20.0)
    p.add_argument("--life-max", type=float, default=60.0)
    p.add_argument("--ping-every", type=float, default=10.0)
    p.add_argument("--max-kib-per-min", type=float, default=env("SOAK_MAX_KIB_PER_MIN", 512.0))
    p.add_argument("--max-fds-per-min", type=float, default=env("SOAK_MAX_FDS_PER_MIN", 20.0))
    p.add_argument("--max-failed-ratio", type=float, default=0.001,
                   help="connections that failed to open or broke, over those opened")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "soak.json"))
    return p.parse_args()


class LastLine(threading.Thread):
    """Keeps the last JSON line a process prints (its counters), so its pipe never fills."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.last, self.peak_open = stream, {}, 0

    def run(self):
        for line in self.stream:
            try:
                self.last = json.loads(line)
                self.peak_open = max(self.peak_open, self.last.get("open", 0))
            except ValueError:
                sys.stderr.write(f"load: {line}")


def main():
    args = parse_args()
    os.environ["AMBIT_BUILD_DIR"] = str(pathlib.Path(args.build_dir).resolve())
    from topology import Topology  # noqa: E402 (after AMBIT_BUILD_DIR is set)

    # Inherited by every process started below: the client, the server and both data planes
    # each hold one descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(FD_LIMIT, hard) if hard != resource.RLIM_INFINITY else FD_LIMIT
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    if args.conns + 1024 > limit:
        sys.exit(f"soak: {args.conns} connections do not fit the descriptor limit {limit}")

    samples = {}  # process -> [(t, rss KiB, fds)]
    result = {"seconds": args.seconds, "conns": args.conns, "sample_seconds": args.sample}
    with Topology("soak") as t:
        a = t.add_pod("a", namespace="default", service_account="client", node="node1")
        b = t.add_pod("b", namespace="backend", service_account="server", node="node2")
        for pod in (a, b):
            subprocess.run(["ip", "netns", "exec", pod.netns, "sysctl", "-qw",
                            "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000",
                            "net.core.somaxconn=4096"], check=True)
        n1, n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (n1, n2):
            t.write_pods(agent, [a, b])
        n1.start(wait_pods=[a])
        n2.start(wait_pods=[b])
        n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid", 30)
        n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/server valid", 30)
        server = b.popen(["/usr/bin/python3", LOAD, "server", str(PORT)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if "listening" not in server.stdout.readline():
            sys.exit(f"soak: echo server did not start: {server.stderr.read()}")
        pids = {"node1/ambitd": n1.proc.pid, "node1/ambit-tunnel": n1.tunnel_pid(),
                "node2/ambitd": n2.proc.pid, "node2/ambit-tunnel": n2.tunnel_pid()}
        if not all(pids.values()):
            sys.exit(f"soak: a process is missing: {pids}")
        samples = {k: [] for k in pids}

        start = time.time()
        client = a.popen(["/usr/bin/python3", LOAD, "client", b.ip4, str(PORT), str(args.conns),
                          str(args.seconds), str(args.ramp), str(args.life_min),
                          str(args.life_max), str(args.ping_every)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        counters = LastLine(client.stdout)
        counters.start()
        print(f"soak: {args.conns} connections for {args.seconds:.0f}s, samples every "
              f"{args.sample:.0f}s; pids {pids}", flush=True)
        next_print = start
        restarted = []
        load_open = []  # (t, connections the client holds open)
        while client.poll() is None and time.time() < start + args.seconds + 60:
            now = time.time()
            load_open.append((now - start, counters.last.get("open", 0), established(a)))
            for name, pid in pids.items():
                try:
                    samples[name].append((now - start, rss_kib(pid), fd_count(pid)))
                except FileNotFoundError:
                    restarted.append(name)
            for agent, node in ((n1, "node1"), (n2, "node2")):
                if agent.tunnel_pid() != pids[f"{node}/ambit-tunnel"]:
                    restarted.append(f"{node}/ambit-tunnel")
            if restarted:
                break
            if now >= next_print:
                c = counters.last
                print(f"  {now - start:6.0f}s open={load_open[-1][2]} opened={c.get('opened', 0)}"
                      f" failed={c.get('connect_failed', 0)}+{c.get('broken', 0)} " +
                      " ".join(f"{k}={v[-1][1] // 1024}MiB/{v[-1][2]}fd"
                               for k, v in samples.items()), flush=True)
                next_print = now + 30
            time.sleep(max(0.0, args.sample - (time.time() - now)))
        if client.poll() is None:
            client.kill()
            restarted = restarted or ["(load did not finish in time)"]
        client.wait(timeout=30)
        counters.join(timeout=5)
        client_err = client.stderr.read()

    totals = counters.last
    failed = totals.get("connect_failed", 0) + totals.get("broken", 0)
    opened = max(1, totals.get("opened", 0))
    print(f"\nload: {totals.get('opened', 0)} connections opened "
          f"({totals.get('opened', 0) / args.seconds:.0f}/s), "
          f"{totals.get('round_trips', 0)} round trips, peak {counters.peak_open} open at once, "
          f"{totals.get('connect_failed', 0)} failed to open, {totals.get('broken', 0)} broke "
          f"{totals.get('errors', {})}")
    # The second half of the load, without its last sample: at the end every connection closes
    # at once, which is the load stopping, not the processes shrinking.
    lo, hi = args.seconds / 2, args.seconds - args.sample
    window = [(n, k) for t, n, k in load_open if lo <= t <= hi]
    mean_open = sum(k for _, k in window) / len(window) if window else 0
    print(f"established tunneled connections over the second half: mean {mean_open:.0f}, "
          f"min {min((k for _, k in window), default=0)}, "
          f"max {max((k for _, k in window), default=0)}"
          f" (the client's own count: mean "
          f"{sum(n for n, _ in window) / max(1, len(window)):.0f})")
    rows, ok = [], True
    print(f"\n{'process':<20} {'RSS MiB (window)':>20} {'KiB/min':>9} {'fds (window)':>16} "
          f"{'fds/min':>8}  verdict")
    for name, points in samples.items():
        late = [p for p in points if lo <= p[0] <= hi]
        kib = slope_per_min([(p[0], p[1]) for p in late])
        # Descriptors spike for a sample while a burst of connections turns over; a leak raises
        # the floor. So the slope of the floor: each sample's minimum with two neighbours a side.
        floor = [(late[i][0], min(p[2] for p in late[max(0, i - 2):i + 3]))
                 for i in range(len(late))]
        fds = slope_per_min(floor)
        flat = kib <= args.max_kib_per_min and fds <= args.max_fds_per_min and len(late) >= 3
        ok &= flat
        first, last = (late[0], late[-1]) if late else ((0, 0, 0), (0, 0, 0))
        rows.append(dict(process=name, kib_per_min=kib, fds_per_min=fds, samples=len(late),
                         rss_kib=[first[1], last[1]], fds=[first[2], last[2]], flat=flat))
        print(f"{name:<20} {first[1] / 1024:>9.1f} -> {last[1] / 1024:<8.1f} {kib:>9.1f} "
              f"{first[2]:>7} -> {last[2]:<6} {fds:>8.1f}  {'flat' if flat else 'GROWING'}")
    problems = []
    if not ok:
        problems.append(f"a slope is above {args.max_kib_per_min:.0f} KiB/min or "
                        f"{args.max_fds_per_min:.0f} fds/min (or too few samples)")
    if restarted:
        problems.append(f"stopped early: {sorted(set(restarted))}")
    if mean_open < 0.9 * args.conns:
        problems.append(f"the load held only {mean_open:.0f} of {args.conns} connections")
    if failed / opened > args.max_failed_ratio:
        problems.append(f"{failed} of {opened} connections failed")
    if client.returncode != 0:
        problems.append(f"load client exited {client.returncode}: {client_err[-500:]}")
    result.update(processes=rows, load=totals, peak_open=counters.peak_open,
                  mean_open=mean_open, window_seconds=[lo, hi],
                  thresholds=dict(kib_per_min=args.max_kib_per_min,
                                  fds_per_min=args.max_fds_per_min),
                  samples={k: v for k, v in samples.items()}, problems=problems,
                  passed=not problems)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nthresholds: {args.max_kib_per_min:.0f} KiB/min, {args.max_fds_per_min:.0f} fds/min "
          f"(least squares over the second half); JSON in {args.json}")
    if problems:
        print("SOAK FAILED: " + "; ".join(problems))
        return 1
    print("SOAK PASSED: every process flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
