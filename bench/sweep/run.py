#!/usr/bin/python3
"""How cost grows: ambit's benchmarks swept over a range, one JSON and one SVG chart per sweep.

    /usr/bin/python3 bench/sweep/run.py [--build-dir build] [--only pods,load] [--smoke]
        [--out-dir bench/results] [--reps N]
    /usr/bin/python3 bench/sweep/run.py --plot [--out-dir DIR]   # redraw the SVGs from the JSON
    /usr/bin/python3 bench/sweep/run.py --check DIR              # what the CTest smoke checks

Sweeps (bench/README.md, "How cost grows"):
  pods      ambitd and ambit-tunnel RSS/PSS and time to ready vs enrolled pods (10 .. 300)
  peers     the same vs peer pods on other nodes (1 000 .. 100 000)
  policies  time from a policy file write to enforcement vs AuthorizationPolicies (10 .. 10 000)
  conns     data-plane RSS and kernel memory vs concurrent idle connections (1 000 .. 50 000,
            bounded by the descriptor limit), T against B1 and P
  load      requests/s and p99 vs offered open-loop load (1 KiB requests) up to the saturation
            knee, T against B1 and P

The drivers are imported, not copied: bench/net/run.py (the two-node topology with B1 relays, P
stunnels and T, its idle-connection hold and kernel accounting, an agent's footprint),
bench/config/run.py (a policy write timed to enforcement), tests/e2e/topology.py and
scale_config.py. Every point keeps every repetition; medians are computed. Needs root; everything
runs in namespaces the topology creates (198.18.0.0/15 and 2001:2::/48 only) and is torn down on
exit, also on failure. Every loop is bounded in count and in time.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

SWEEPS = ("pods", "peers", "policies", "conns", "load")
VARIANTS = ("T", "B1", "P")
COLORS = {"T": "tab:blue", "B1": "tab:gray", "P": "tab:orange"}

# Full run (`make bench-sweep`): the ranges. The smoke run: one tiny point of each.
FULL = {
    # 200: where between 100 and 300 the cost changes (bench/README.md).
    "pods": dict(points=[10, 50, 100, 200, 300], reps=2, ready_s=60),
    "peers": dict(points=[1_000, 10_000, 100_000], reps=2, ready_s=300),
    "policies": dict(points=[10, 100, 1_000, 10_000], reps=3),
    "conns": dict(points=[1_000, 2_000, 5_000, 10_000, 20_000, 50_000], reps=1),
    # Offered rates start, start*factor, ... until every variant passed its knee (factor sqrt(2):
    # the knee to within 41%, at 2 points per doubling).
    "load": dict(start=2_000, factor=2 ** 0.5, max_points=14, reps=2, seconds=3.0,
                 connections=4, max_s=900),
}
SMOKE = {
    "pods": dict(points=[3], reps=1, ready_s=60),
    "peers": dict(points=[100], reps=1, ready_s=60),
    "policies": dict(points=[10], reps=1),
    "conns": dict(points=[50], reps=1),
    "load": dict(start=200, factor=2.0, max_points=1, reps=1, seconds=0.5, connections=2,
                 max_s=120),
}
# The knee: a variant is saturated at an offered rate once it achieves less than this share of
# it, or once its p99 exceeds both this multiple of its p99 at the lowest rate and P99_FLOOR_US.
ACHIEVED_SHARE = 0.9
P99_BLOWUP = 10.0
P99_FLOOR_US = 10_000.0
FD_SPARE = 512  # what a process holds besides the connections (listeners, sessions, libraries)
# Series drawn per chart; --check counts the SVG groups whose id starts with "series-".
SERIES = {"pods": 4, "peers": 4, "policies": 2, "conns": 6, "load": 6}


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def log(msg):
    sys.stderr.write(f"[bench/sweep] {msg}\n")
    sys.stderr.flush()


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def medians(reps, keys):
    return {k: med([r.get(k) for r in reps]) for k in keys}


class Drivers:
    """The imported benchmark modules; loaded once AMBIT_BUILD_DIR is set (topology.py reads it
    for the binaries)."""

    def __init__(self, build):
        os.environ["AMBIT_BUILD_DIR"] = str(build)
        self.build = build
        self.topology = __import__("topology")
        self.scale = __import__("scale_config")
        self.net = load_module("bench_net_run", REPO / "bench" / "net" / "run.py")
        self.config = load_module("bench_config_run", REPO / "bench" / "config" / "run.py")


# --- agent footprint: enrolled pods and peer pods ------------------------------------------------

def bare_pods(d, topo, n, node, namespace):
    """n pods for enrollment only: a network namespace each with an eth0 holding an address
    (from 198.19.0.0/16 and 2001:2:1::/64: topology.py's /24 per topology holds 253 pods, fewer
    than the sweep needs). eth0's veth peer stays in the same namespace (this kernel has no
    dummy links): no traffic reaches these pods. The topology removes them with its pods."""
    pods = []
    for i in range(n):
        j = i + 1
        pod = d.topology.Pod(topo, f"e{i:03d}", len(topo.pods) + 2, namespace, f"sa{i:03d}", node)
        pod.ip4 = f"198.19.{j // 250}.{j % 250 + 1}"
        pod.ip6 = f"2001:2:1::{j:x}"
        d.topology.run("ip", "netns", "add", pod.netns)
        topo.pods[pod.name] = pod  # from here on, topo.close() deletes it
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["link", "set", "eth0p", "up"],
                    ["addr", "add", f"{pod.ip4}/32", "dev", "eth0"],
                    ["-6", "addr", "add", f"{pod.ip6}/128", "dev", "eth0", "nodad"],
                    ["link", "set", "eth0", "up"]):
            d.topology.run("ip", "-n", pod.netns, *cmd)
        pods.append(pod)
    return pods


def pods_yaml(pods, node):
    return "---\n".join(p.yaml().replace(f"nodeName: {p.node}", f"nodeName: {node}")
                        for p in pods)


def alive(pid):
    """Running (a zombie has exited: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def retire(d, topo, agent):
    """Stops an agent for good (its --cleanup too) so the next one starts on a clean node."""
    tunnel = agent.tunnel_pid()
    agent.cleanup()
    deadline = time.time() + 10
    while tunnel and time.time() < deadline and alive(tunnel):
        time.sleep(0.1)
    if tunnel and alive(tunnel):
        os.kill(tunnel, 9)  # started by this agent; it outlived the agent's own clean-up
    if tunnel:
        try:  # the topology made this process a subreaper: the orphaned tunnel is ours to reap
            os.waitpid(tunnel, os.WNOHANG)
        except ChildProcessError:
            pass
    topo.agents.remove(agent)
    d.topology.remove_cgroup(agent.cgroup)


def footprint_rep(d, topo, node, enrolled, peers, ready_s):
    """A fresh agent with `enrolled` pods (and `peers` peer pods) in its configuration from the
    start: time to ready (every pod's certificate, /healthz/ready 200, the configuration
    generation applied) and its idle memory."""
    agent = topo.add_agent(node)
    agent.write_config("pods.yaml", pods_yaml(enrolled, node))
    if peers:
        d.scale.write_scale_config(agent, peers, 0)

    def ready():
        r = agent.try_ready()
        if not r or r[0] != 200:
            return False
        g = d.config.generation(agent)
        return g is not None and g["applied"] >= 1 and g["desired"] == g["applied"]

    try:
        out = d.net.agent_footprint(agent, [p.service_account for p in enrolled],
                                    enrolled[0].namespace, ready=ready, timeout=ready_s)
    finally:
        retire(d, topo, agent)
    s = out["samples"]
    mb = lambda key: med([x[key] for x in s]) / 1024  # noqa: E731
    return {"ready_s": out["ready_s"], "ambitd_rss_mb": mb("ambitd_kib"),
            "tunnel_rss_mb": mb("tunnel_kib"), "ambitd_pss_mb": mb("ambitd_pss_kib"),
            "tunnel_pss_mb": mb("tunnel_pss_kib"),
            "pss_mb": mb("ambitd_pss_kib") + mb("tunnel_pss_kib"), "samples": s}


FOOT_KEYS = ("ready_s", "ambitd_rss_mb", "tunnel_rss_mb", "ambitd_pss_mb", "tunnel_pss_mb",
             "pss_mb")


def sweep_footprint(d, cfg, kind):
    points = []
    with d.topology.Topology("swf") as topo:
        pool = bare_pods(d, topo, max(cfg["points"]) if kind == "pods" else 2, "sweep", "sweep")
        for n in cfg["points"]:
            reps = []
            for r in range(cfg["reps"]):
                t0 = time.time()
                try:
                    if kind == "pods":
                        reps.append(footprint_rep(d, topo, f"e{n}r{r}", pool[:n], 0,
                                                  cfg["ready_s"]))
                    else:
                        reps.append(footprint_rep(d, topo, f"q{n}r{r}", pool, n,
                                                  cfg["ready_s"]))
                except RuntimeError as e:
                    # A size the agent does not reach is a result too: kept, not drawn.
                    reps.append({"error": str(e)[-3000:]})
                    log(f"{kind} {n} rep {r + 1} FAILED: {str(e)[:300]}")
                    continue
                log(f"{kind} {n} rep {r + 1}: ready in {reps[-1]['ready_s']:.1f}s, RSS ambitd "
                    f"{reps[-1]['ambitd_rss_mb']:.1f} MB, tunnel {reps[-1]['tunnel_rss_mb']:.1f} "
                    f"MB ({time.time() - t0:.0f}s)")
            points.append({"x": n, "reps": reps, "median": medians(reps, FOOT_KEYS)})
    return {"points": points}


# --- policies: write -> enforcement ---------------------------------------------------------

POLICY_KEYS = ("applied_s", "deny_enforced_s")


def sweep_policies(d, cfg):
    points = []
    with d.topology.Topology("swq") as topo:
        bench = d.config.ConfigBench(topo)
        base = [bench.measure(0, 0) for _ in range(cfg["reps"])]
        for n in cfg["points"]:
            reps = []
            for r in range(cfg["reps"]):
                reps.append(bench.measure(0, n))
                log(f"policies {n} rep {r + 1}: applied in {reps[-1]['applied_s']:.2f}s, DENY "
                    f"enforced in {reps[-1]['deny_enforced_s']:.2f}s")
            points.append({"x": n, "reps": reps, "median": medians(reps, POLICY_KEYS)})
        bench.server.kill()
    return {"points": points, "baseline": {"reps": base, "median": medians(base, POLICY_KEYS)}}


# --- the two-node network topology: concurrent connections, open-loop load ---------------------

def fd_limit():
    """Raises the soft descriptor limit to the hard one (every process started from here
    inherits it) and returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def conns_fit(limit):
    """The most connections each variant holds under the descriptor limit: T's processes hold
    one descriptor per connection (client, each tunnel side, server), a B1 relay or a P stunnel
    two (its accepted and its outgoing socket)."""
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    return {"T": limit - FD_SPARE, "B1": (limit - FD_SPARE) // 2, "P": (limit - FD_SPARE) // 2}


def conns_point(out, base_kib):
    """RSS is counted from `base_kib`, the variant's processes before its first point: the
    points rise, so each reuses the heap the smaller one before it left resident, and its own
    before/after difference would count only the connections added since."""
    procs = out["processes"]
    rss = sum(p["rss_after_kib"] for p in procs.values()) - base_kib
    return {"rss_mb": rss / 1024, "rss_kib_per_conn": rss / out["connections"],
            "kernel_mb": out["kernel"]["kib_per_conn"] * out["connections"] / 1024,
            "kernel_kib_per_conn": out["kernel"]["kib_per_conn"],
            "slab_kib_per_conn": out["kernel"]["slab_kib_per_conn"],
            "tcp_mem_kib_per_conn": out["kernel"]["tcp_mem_kib_per_conn"], "detail": out}


CONN_KEYS = ("rss_mb", "rss_kib_per_conn", "kernel_mb", "kernel_kib_per_conn",
             "slab_kib_per_conn", "tcp_mem_kib_per_conn")


def sweep_conns(bench, cfg, limit):
    fit = conns_fit(limit)
    points, base = [], {}
    for n in cfg["points"]:
        for v in VARIANTS:
            x = min(n, fit[v])
            if any(p["x"] == x and p["variant"] == v for p in points):
                continue  # clipped to a point already measured
            bench.cfg["idle"] = bench.cfg["idle_base"] = x
            reps = []
            for r in range(cfg["reps"]):
                t0 = time.time()
                out = bench.idle_memory(v)
                base.setdefault(v, sum(p["rss_before_kib"] for p in out["processes"].values()))
                reps.append(conns_point(out, base[v]))
                log(f"conns {v} {x} rep {r + 1}: RSS +{reps[-1]['rss_mb']:.1f} MB, kernel "
                    f"+{reps[-1]['kernel_mb']:.1f} MB ({time.time() - t0:.0f}s)")
            points.append({"x": x, "variant": v, "reps": reps,
                           "median": medians(reps, CONN_KEYS)})
    return {"points": points, "fd_limit": limit, "max_connections": fit,
            "rss_baseline_kib": base,
            "kernel_memory": "slab (/proc/slabinfo: objects x size, every cache; what "
                             "/proc/meminfo's Slab counts, without partly used pages) + TCP "
                             "buffer pages (/proc/net/sockstat TCP mem), after - before"}


LOAD_KEYS = ("achieved_per_s", "p50_us", "p90_us", "p99_us", "max_us", "lost")


def load_run(d, bench, v, rate, cfg):
    pod, host, port, in_cgroup = bench.target(v, d.net.RR_PORT)
    argv = [bench.bins["net_rr"], "load", host, str(port), "1024", f"{rate:.0f}",
            str(cfg["seconds"]), str(cfg["connections"])]
    r = pod.run(argv, in_cgroup=in_cgroup, timeout=cfg["seconds"] * 3 + 30)
    if r.returncode != 0:
        raise RuntimeError(f"{v}: {' '.join(argv)} failed ({r.returncode}): {r.stderr[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def sweep_load(d, bench, cfg):
    """Raises the offered rate by cfg['factor'] per point; a variant stops at its knee (achieved
    below ACHIEVED_SHARE of offered, or p99 blown up), the sweep when every variant has."""
    active = list(VARIANTS)
    first_p99, knee, points = {}, {}, []
    started = time.time()
    rate = float(cfg["start"])
    for k in range(cfg["max_points"]):
        if not active:
            break
        if time.time() - started > cfg["max_s"]:
            for v in active:
                knee[v] = {"reason": f"time bound {cfg['max_s']}s reached", "offered_per_s": None}
            break
        reps = {v: [] for v in active}
        for r in range(cfg["reps"]):
            order = active[r % len(active):] + active[:r % len(active)]
            for v in order:
                reps[v].append(load_run(d, bench, v, rate, cfg))
        for v in list(active):
            m = medians(reps[v], LOAD_KEYS)
            points.append({"x": rate, "variant": v, "reps": reps[v], "median": m})
            log(f"load {v} offered {rate:.0f}/s: achieved {m['achieved_per_s']:.0f}/s, p99 "
                f"{m['p99_us'] / 1000:.2f} ms")
            first_p99.setdefault(v, m["p99_us"])
            why = None
            if m["achieved_per_s"] < ACHIEVED_SHARE * rate:
                why = f"achieved {m['achieved_per_s']:.0f}/s < {ACHIEVED_SHARE:.0%} of offered"
            elif m["p99_us"] > max(P99_BLOWUP * first_p99[v], P99_FLOOR_US):
                why = (f"p99 {m['p99_us'] / 1000:.1f} ms > {P99_BLOWUP:.0f}x the lowest "
                       f"rate's ({first_p99[v] / 1000:.2f} ms)")
            if why:
                ok = [p for p in points if p["variant"] == v and p["x"] < rate]
                knee[v] = {"reason": why, "saturated_at_per_s": rate,
                           "last_sustained_per_s": ok[-1]["x"] if ok else None,
                           "max_achieved_per_s": max(p["median"]["achieved_per_s"]
                                                     for p in points if p["variant"] == v)}
                active.remove(v)
        rate *= cfg["factor"]
    for v in active:
        knee.setdefault(v, {"reason": f"not reached within {cfg['max_points']} points",
                            "saturated_at_per_s": None})
    return {"points": points, "knee": knee,
            "rule": f"saturated once achieved < {ACHIEVED_SHARE:.0%} of offered, or p99 > "
                    f"{P99_BLOWUP:.0f}x its value at the lowest rate and > "
                    f"{P99_FLOOR_US / 1000:.0f} ms"}


def net_sweeps(d, cfgs, wanted):
    """conns and load on one two-node topology (bench/net/run.py's Bench): memory first, as
    bench/net does, before load leaves freed heap behind that new connections would reuse."""
    limit = fd_limit()
    bins = {"net_rr": d.build / "bench/net/net_rr", "net_relay": d.build / "bench/net/net_relay",
            "net_tls": d.build / "bench/net/net_tls"}
    bins = {k: str(v) for k, v in bins.items()}
    import svid  # noqa: E402 (tests/e2e: SVIDs from an agent's CA API, for Bench.setup)
    stubs = set(sys.path)
    out = {}
    try:
        with d.topology.Topology("swn") as topo:
            bench = d.net.Bench(topo, dict(d.net.QUICK), bins, log, svid)
            bench.setup()
            for v in VARIANTS:  # warm-up: HBONE pool, certificates, page cache
                bench.rr(v, "rr", 1, 200, 5)
            if "conns" in wanted:
                out["conns"] = sweep_conns(bench, cfgs["conns"], limit)
            if "load" in wanted:
                out["load"] = sweep_load(d, bench, cfgs["load"])
    finally:
        for p in set(sys.path) - stubs:  # svid.py's generated gRPC stubs
            if p.startswith(os.path.join(tempfile.gettempdir(), "ambit-stubs-")):
                shutil.rmtree(p, ignore_errors=True)
    return out


# --- charts ---------------------------------------------------------------------------------

TITLES = {
    "pods": "ambitd + ambit-tunnel vs enrolled pods",
    "peers": "ambitd + ambit-tunnel vs peer pods (other nodes)",
    "policies": "policy file write to enforcement vs AuthorizationPolicies",
    "conns": "data-plane memory vs concurrent idle connections",
    "load": "1 KiB requests, open loop: achieved rate and p99 vs offered load",
}


def machine_label(doc):
    m = doc["machine"]
    load = doc.get("loadavg")
    busy = f", load average {load['start']:.1f} -> {load['end']:.1f}" if load else ""
    return f"{m['nproc']} cores ({m['cpu']}), {doc['mode']} run{busy}"


def rounded(x):
    """Floats to 4 significant digits (the noise is larger): a smaller file to commit."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def series(ax, doc, key, label, gid, pick=None, color=None, style="o-", scale=1.0):
    """One line of medians with a min-max band; `gid` names its SVG group for --check."""
    pts = [p for p in doc["points"] if pick is None or pick(p)]
    pts = [p for p in pts if p["median"].get(key) is not None]
    xs = [p["x"] for p in pts]
    ys = [p["median"][key] * scale for p in pts]
    lo = [min(r[key] for r in p["reps"] if key in r) * scale for p in pts]
    hi = [max(r[key] for r in p["reps"] if key in r) * scale for p in pts]
    ax.plot(xs, ys, style, label=label, gid=gid, color=color, markersize=4)
    if any(h != low for h, low in zip(hi, lo)):
        ax.fill_between(xs, lo, hi, alpha=0.2, color=ax.get_lines()[-1].get_color(), lw=0)
    return xs, ys


def plot(doc, path, fmt="svg"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"  # text as text: smaller files, searchable labels
    plt.rcParams["svg.hashsalt"] = "ambit"  # stable ids: a rerun diffs only where data changed
    name = doc["sweep"]
    if name == "policies":
        fig, a = plt.subplots(figsize=(7, 4.5))
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        a, b = axes
    if name in ("pods", "peers"):
        what = "enrolled pods" if name == "pods" else "peer pods"
        series(a, doc, "ambitd_rss_mb", "ambitd RSS", f"series-{name}-ambitd-rss")
        series(a, doc, "tunnel_rss_mb", "ambit-tunnel RSS", f"series-{name}-tunnel-rss")
        series(a, doc, "pss_mb", "ambitd + ambit-tunnel PSS", f"series-{name}-pss")
        a.set_ylabel("memory (MB)")
        series(b, doc, "ready_s", "start to ready", f"series-{name}-ready", color="tab:green")
        b.set_ylabel("time to ready (s)")
        failed = [p["x"] for p in doc["points"] if all("error" in r for r in p["reps"])]
        for i, x in enumerate(failed):  # sizes the agent never got ready at: shown, not hidden
            for ax in axes:
                ax.axvline(x, ls="--", color="tab:red", alpha=0.6,
                           label=None if i else f"not ready within {doc['config']['ready_s']} s")
        for ax in axes:
            ax.set_xlabel(f"{what} (count)")
            if name == "peers":  # 3 decades: log-log, where a slope of 1 is linear growth
                ax.set_xscale("log")
                ax.set_yscale("log")
    elif name == "policies":
        series(a, doc, "applied_s", "N policies written, until applied",
               "series-policies-applied")
        series(a, doc, "deny_enforced_s", "1 DENY written with N in force, until enforced",
               "series-policies-deny")
        base = doc["baseline"]["median"]["deny_enforced_s"]
        a.axhline(base, ls=":", color="gray", label=f"DENY alone ({base * 1000:.0f} ms)")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("AuthorizationPolicies in force (count)")
        a.set_ylabel("file write to enforcement (s)")
    elif name == "conns":
        for v in VARIANTS:
            pick = lambda p, v=v: p["variant"] == v  # noqa: E731
            series(a, doc, "rss_mb", v, f"series-conns-rss-{v}", pick, COLORS[v])
            series(b, doc, "kernel_mb", v, f"series-conns-kernel-{v}", pick, COLORS[v])
        a.set_ylabel("data-plane RSS growth (MB)")
        b.set_ylabel("kernel memory growth (MB)\nslab + TCP buffer pages")
        for ax in axes:  # T's RSS is two orders below B1's and P's: log-log shows all three
            ax.set_xlabel("concurrent idle connections (count)")
            ax.set_xscale("log")
            ax.set_yscale("log")
    elif name == "load":
        offered = sorted({p["x"] for p in doc["points"]})
        a.plot(offered, offered, ":", color="lightgray", label="achieved = offered")
        for v in VARIANTS:
            pick = lambda p, v=v: p["variant"] == v  # noqa: E731
            series(a, doc, "achieved_per_s", v, f"series-load-achieved-{v}", pick, COLORS[v])
            series(b, doc, "p99_us", v, f"series-load-p99-{v}", pick, COLORS[v], scale=1e-3)
            k = doc["knee"].get(v, {}).get("last_sustained_per_s")
            if k:
                a.plot([k], [k], "*", color=COLORS[v], markersize=12)
        a.set_ylabel("achieved requests/s")
        b.set_ylabel("p99 latency from scheduled time (ms)")
        for ax in axes:
            ax.set_xlabel("offered requests/s (1 KiB, open loop)")
            ax.set_xscale("log")
            ax.set_yscale("log")
    for ax in fig.get_axes():
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.minorticks_off()  # on log axes, dozens of unlabelled ticks: size, not information
    fig.suptitle(f"{TITLES[name]}\n{machine_label(doc)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)


def check(out_dir, names):
    """The smoke test's assertions: each sweep's JSON has points with every repetition and a
    median, and its SVG parses and holds the expected number of data series."""
    problems = []
    for name in names:
        j, s = out_dir / f"sweep-{name}.json", out_dir / f"sweep-{name}.svg"
        try:
            doc = json.loads(j.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{j}: {e}")
            continue
        pts = doc.get("points") or []
        if not pts or any(not p.get("reps") or "median" not in p for p in pts):
            problems.append(f"{j}: no points, or a point without repetitions or medians")
        # A failed repetition is a result in a full run (the chart marks it); here it fails.
        for p in pts:
            for r in p.get("reps", []):
                if "error" in r:
                    problems.append(f"{j}: point {p['x']} failed: {r['error'][:500]}")
        try:
            root = ET.parse(s).getroot()
        except (OSError, ET.ParseError) as e:
            problems.append(f"{s}: {e}")
            continue
        ids = [e.get("id") for e in root.iter() if (e.get("id") or "").startswith("series-")]
        if len(ids) != SERIES[name]:
            problems.append(f"{s}: {len(ids)} data series, expected {SERIES[name]}: {ids}")
        print(f"{name}: {len(pts)} point(s), {len(ids)} series in {s.name}")
    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--only", default=",".join(SWEEPS), help="comma-separated sweeps")
    ap.add_argument("--smoke", action="store_true", help="one tiny point of each sweep (CTest)")
    ap.add_argument("--reps", type=int, help="repetitions per point, every sweep")
    ap.add_argument("--plot", action="store_true", help="only redraw the SVGs from the JSON")
    ap.add_argument("--check", action="store_true", help="only check the JSON and SVG files")
    args = ap.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SWEEPS)
    if unknown:
        ap.error(f"unknown sweep(s) {sorted(unknown)}; known: {', '.join(SWEEPS)}")
    out_dir = pathlib.Path(args.out_dir)
    if args.check:
        return check(out_dir, wanted)
    if args.plot:
        for name in wanted:
            plot(json.loads((out_dir / f"sweep-{name}.json").read_text()),
                 out_dir / f"sweep-{name}.svg")
        return 0
    build = pathlib.Path(args.build_dir).resolve()
    missing = [str(build / p) for p in ("agent/main/ambitd", "agent/main/ambit-tunnel",
                                        "agent/cli/ambitctl", "bench/net/net_rr",
                                        "bench/net/net_relay", "bench/net/net_tls")
               if not (build / p).exists()]
    missing += [f"{t} (bash scripts/setup.sh)" for t in ("iperf3", "stunnel4")
                if not shutil.which(t)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("python3-matplotlib (bash scripts/setup.sh)")
    if missing:
        sys.stderr.write("bench/sweep: missing " + ", ".join(missing) + "\n")
        return 1
    d = Drivers(build)
    d.topology.require_root()
    cfgs = {k: dict(v) for k, v in (SMOKE if args.smoke else FULL).items()}
    if args.reps:
        for c in cfgs.values():
            c["reps"] = args.reps
    mach = d.net.machine()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def write(name, result, t0, load0):
        # The load average says how much else ran on the machine meanwhile (it is shared).
        doc = {"sweep": name, "machine": mach, "mode": "smoke" if args.smoke else "full",
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "seconds": round(time.time() - t0, 1),
               "loadavg": {"start": load0, "end": os.getloadavg()[0]}, "config": cfgs[name],
               **result}
        doc = rounded(doc)
        path = out_dir / f"sweep-{name}.json"
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        plot(doc, out_dir / f"sweep-{name}.svg")
        log(f"{name}: wrote {path} and its .svg ({doc['seconds']:.0f}s)")

    for name in ("pods", "peers"):
        if name in wanted:
            t0, load0 = time.time(), os.getloadavg()[0]
            write(name, sweep_footprint(d, cfgs[name], name), t0, load0)
    if "policies" in wanted:
        t0, load0 = time.time(), os.getloadavg()[0]
        write("policies", sweep_policies(d, cfgs["policies"]), t0, load0)
    if {"conns", "load"} & set(wanted):
        t0, load0 = time.time(), os.getloadavg()[0]
        for name, result in net_sweeps(d, cfgs, wanted).items():
            write(name, result, t0, load0)
    log(f"done in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
