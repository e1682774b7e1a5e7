#!/usr/bin/python3
"""Where the waypoint's added latency goes: packet timestamps in the waypoint pod's network
namespace (tcpdump) during an open loop through the waypoint on one connection, paired per
request: request in -> forwarded, the upstream's round trip, response in -> forwarded.

    /usr/bin/python3 bench/waypoint/stages.py --build-dir build [--variant W|WJ] [--rate 200]

Run by hand (root); builds the same topology as run.py (its Bench.setup, unchanged), torn down
on exit. One connection at a low rate, so each request's packets are unambiguous."""
import os, subprocess, sys, time, statistics, pathlib, argparse
REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "waypoint"))
ap = argparse.ArgumentParser(); ap.add_argument("--build-dir", required=True); ap.add_argument("--rate", type=int, default=200)
ap.add_argument("--seconds", type=int, default=5); ap.add_argument("--variant", default="W")
args = ap.parse_args()
os.environ["AMBIT_BUILD_DIR"] = args.build_dir
import run as wp
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from topology import Topology
b = pathlib.Path(args.build_dir)
bins = {"wp_http_server": str(b / "bench/waypoint/wp_http_server")}
cfg = dict(wp.QUICK)
log = lambda m: sys.stderr.write(m + "\n")
with Topology("bs") as topo:
    bench = wp.Bench(topo, cfg, bins, log)
    bench.setup()
    bench.check_paths()
    bench.h2load(args.variant, ["-c", "1", "-n", "300"], 60)  # warm
    pcap = os.path.join(topo.workdir, "wp.txt")
    td = subprocess.Popen(["ip", "netns", "exec", bench.wp.netns, "tcpdump", "-i", "any", "-n",
                           "-tt", "-l", "-q", "tcp and greater 60"],
                          stdout=open(pcap, "w"), stderr=subprocess.DEVNULL)
    time.sleep(1)
    n = args.rate * args.seconds
    bench.h2load(args.variant, ["-c", "1", "-n", str(n), "--rps", str(args.rate)], 120)
    time.sleep(0.5)
    td.terminate(); td.wait()
    a, srv = bench.a.ip4, bench.b.ip4
    ev = []
    for line in open(pcap):
        p = line.split()
        try:
            t = float(p[0])
        except (ValueError, IndexError):
            continue
        if " > " not in line or "length 0" in line:
            continue
        i = p.index(">")
        src, dst = p[i - 1], p[i + 1].rstrip(":")
        sip, dip = src.rsplit(".", 1)[0], dst.rsplit(".", 1)[0]
        if sip == a: ev.append((t, "req_in"))
        elif dip == srv: ev.append((t, "req_out"))
        elif sip == srv: ev.append((t, "resp_in"))
        elif dip == a: ev.append((t, "resp_out"))
    # A request cycle: first req_in, first req_out after it, first resp_in, first resp_out.
    order = ["req_in", "req_out", "resp_in", "resp_out"]
    cycles, cur = [], []
    for t, k in ev:
        want = order[len(cur)]
        if k == want:
            cur.append(t)
            if len(cur) == 4:
                cycles.append(cur); cur = []
        elif k == "req_in" and not cur:
            cur = [t]
    def med(xs): return statistics.median(xs) * 1e6 if xs else float("nan")
    req = [c[1] - c[0] for c in cycles]; up = [c[2] - c[1] for c in cycles]
    resp = [c[3] - c[2] for c in cycles]; total = [c[3] - c[0] for c in cycles]
    print(f"{args.variant} at {args.rate}/s on 1 connection, {len(cycles)} cycles (of {n}) seen in the waypoint pod:")
    print(f"  waypoint, request in -> out      p50 {med(req):7.1f} us")
    print(f"  upstream (tunnel2, server) round p50 {med(up):7.1f} us")
    print(f"  waypoint, response in -> out     p50 {med(resp):7.1f} us")
    print(f"  total at the waypoint pod        p50 {med(total):7.1f} us")
