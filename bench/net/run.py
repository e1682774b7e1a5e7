#!/usr/bin/python3
"""ambit's network benchmark: the bare path (B0), a plain relay pair (B1) and ambit (T) on one
two-node topology in network namespaces, interleaved, with medians, min-max and ratios.

    /usr/bin/python3 bench/net/run.py [--quick] [--build-dir build] [--json PATH]

Variants (see bench/net/README.md):
  B0  plain TCP between two pods that ambit does not enroll, no ambit on the path;
  B1  the same two pods with net_relay (plain epoll relay, 64 KiB buffers, no TLS) in each pod:
      client -> relay in client pod -> relay in server pod -> server (the pure hop cost);
  T   two enrolled pods on two agents: eBPF redirect -> ambit-tunnel -> HBONE (mTLS, HTTP/2
      CONNECT) -> ambit-tunnel -> server.
All traffic stays in namespaces the topology module creates (198.18.0.0/15 only); everything is
torn down on exit, also on failure. Every loop is bounded in count and time.
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

IPERF_PORT = 5201
RR_PORT = 7001
# B1 relay ports: client-side relay (on 127.0.0.1 in the client pod) -> server-side relay.
RELAY = {IPERF_PORT: (15201, 16201), RR_PORT: (17001, 18001)}
VARIANTS = ("B0", "B1", "T")

FULL = dict(reps=3, bulk_s=5, rr_count=20000, crr_count=3000, rate_s=5, idle=1000)
QUICK = dict(reps=1, bulk_s=1, rr_count=2000, crr_count=200, rate_s=1, idle=100)

# (key, label, unit, higher is better)
METRICS = [
    ("bulk1", "bulk 1 stream", "Gbit/s", True),
    ("bulk4", "bulk 4 streams", "Gbit/s", True),
    ("rr_p50", "1 B RR p50", "us", False),
    ("rr_p90", "1 B RR p90", "us", False),
    ("rr_p99", "1 B RR p99", "us", False),
    ("crr", "connect+1 RR", "conn/s", True),
    ("rate_p50", "1 KiB @1000/s p50", "us", False),
    ("rate_p90", "1 KiB @1000/s p90", "us", False),
    ("rate_p99", "1 KiB @1000/s p99", "us", False),
]


def cpu_seconds(pid):
    """utime + stime of a whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


class Bench:
    def __init__(self, topo, cfg, bins, log):
        self.topo, self.cfg, self.bins, self.log = topo, cfg, bins, log
        self.samples = {v: {m[0]: [] for m in METRICS} for v in VARIANTS}
        self.cpu = {v: [] for v in VARIANTS}  # per bulk-1 run: {process: cpu s/GB}

    def setup(self):
        t = self.topo
        # a, b: enrolled (T). c, d: known to the mesh but not enrolled (B0, B1).
        self.a = t.add_pod("a", namespace="default", service_account="client", node="node1")
        self.b = t.add_pod("b", namespace="backend", service_account="server", node="node2")
        self.c = t.add_pod("c", namespace="default", service_account="plain", node="node1")
        self.d = t.add_pod("d", namespace="backend", service_account="plain", node="node2")
        for pod in (self.a, self.b, self.c, self.d):
            # Many short connections per run: let TIME_WAIT ports be reused (pod netns only).
            subprocess.run(["ip", "netns", "exec", pod.netns, "sysctl", "-qw",
                            "net.ipv4.tcp_tw_reuse=1",
                            "net.ipv4.ip_local_port_range=10000 65000"], check=True)
        plain = [p.yaml().replace(f"    ambit.dev/netns: {p.netns_path}\n", "")
                 for p in (self.c, self.d)]
        self.n1, self.n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (self.n1, self.n2):
            agent.write_config("pods.yaml", "---\n".join([self.a.yaml(), self.b.yaml()] + plain))
        self.n1.start(wait_pods=[self.a])
        self.n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid", 30)
        self.n2.start(wait_pods=[self.b])
        self.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/server valid", 30)
        self.tunnels = {}
        for node, agent in (("node1", self.n1), ("node2", self.n2)):
            pid = None
            for _ in range(100):
                pid = agent.tunnel_pid()
                if pid:
                    break
                time.sleep(0.05)
            if not pid:
                raise RuntimeError(f"no ambit-tunnel process for {node}")
            self.tunnels[node] = pid
        self.ambitd = {"node1": self.n1.proc.pid, "node2": self.n2.proc.pid}

        # Servers: one iperf3 and one echo server per server pod.
        for pod, in_cgroup in ((self.b, True), (self.d, False)):
            pod.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], in_cgroup=in_cgroup,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.start_listening(pod, [self.bins["net_rr"], "server", str(RR_PORT)], in_cgroup)
        # B1 relays, one pair per server port, pinned to the same positions as the tunnel sides.
        self.relays = {"node1": [], "node2": []}
        for port, (front, back) in RELAY.items():
            p = self.start_listening(self.d, [self.bins["net_relay"], "0.0.0.0", str(back),
                                              self.d.ip4, str(port)], False)
            self.relays["node2"].append(p.pid)
            p = self.start_listening(self.c, [self.bins["net_relay"], "127.0.0.1", str(front),
                                              self.d.ip4, str(back)], False)
            self.relays["node1"].append(p.pid)
        self.servers = [p for p in self.topo.procs]  # iperf3, echo servers, relays
        self.wait_port(self.b, IPERF_PORT)
        self.wait_port(self.d, IPERF_PORT)

    def start_listening(self, pod, argv, in_cgroup):
        proc = pod.popen(argv, in_cgroup=in_cgroup, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"{argv[0]} did not start in pod {pod.name}: {line!r}")
        return proc

    @staticmethod
    def wait_port(pod, port, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["ip", "netns", "exec", pod.netns, "ss", "-Hltn",
                                  f"sport = :{port}"], capture_output=True, text=True).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {pod.name}:{port}")

    def target(self, variant, port):
        """(client pod, host, port, in_cgroup) for a variant."""
        if variant == "B0":
            return self.c, self.d.ip4, port, False
        if variant == "B1":
            return self.c, "127.0.0.1", RELAY[port][0], False
        return self.a, self.b.ip4, port, True

    def client(self, variant, port, argv_fn, timeout):
        pod, host, p, in_cgroup = self.target(variant, port)
        argv = argv_fn(host, p)
        r = pod.run(argv, in_cgroup=in_cgroup, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{variant}: {' '.join(argv)} failed ({r.returncode}): "
                               f"{r.stderr.strip()[-500:]}")
        return r.stdout

    def rr(self, variant, mode, *args, timeout=60):
        out = self.client(variant, RR_PORT,
                          lambda h, p: [self.bins["net_rr"], mode, h, str(p)] +
                          [str(a) for a in args], timeout)
        return json.loads(out.strip().splitlines()[-1])

    def iperf(self, variant, streams):
        t = self.cfg["bulk_s"]
        out = self.client(variant, IPERF_PORT,
                          lambda h, p: ["iperf3", "-c", h, "-p", str(p), "-t", str(t),
                                        "-P", str(streams), "-J"], timeout=t + 30)
        doc = json.loads(out)
        if "error" in doc or "sum_received" not in doc.get("end", {}):
            raise RuntimeError(f"{variant}: iperf3 -P {streams}: {doc.get('error', 'no summary')}")
        end = doc["end"]
        return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"]["bytes"]

    def procs(self, variant):
        if variant == "T":
            return {"ambit-tunnel node1": [self.tunnels["node1"]],
                    "ambit-tunnel node2": [self.tunnels["node2"]],
                    "ambitd node1": [self.ambitd["node1"]],
                    "ambitd node2": [self.ambitd["node2"]]}
        if variant == "B1":
            return {"relay node1": self.relays["node1"], "relay node2": self.relays["node2"]}
        return {}

    def bulk1(self, variant):
        before = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.procs(variant).items()}
        gbps, sent = self.iperf(variant, 1)
        after = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.procs(variant).items()}
        gb = sent / 1e9
        self.cpu[variant].append({k: (after[k] - before[k]) / gb for k in before} if gb else {})
        return gbps

    def run_once(self, variant):
        dead = [p.args for p in self.servers if p.poll() is not None]
        if dead:
            raise RuntimeError(f"before {variant}: helper exited: {dead}")
        c = self.cfg
        s = self.samples[variant]
        s["bulk1"].append(self.bulk1(variant))
        s["bulk4"].append(self.iperf(variant, 4)[0])
        r = self.rr(variant, "rr", 1, c["rr_count"], 20)
        for q in ("p50", "p90", "p99"):
            s[f"rr_{q}"].append(r[f"{q}_us"])
        s["crr"].append(self.rr(variant, "crr", c["crr_count"], 10)["conns_per_s"])
        r = self.rr(variant, "rate", 1024, 1000, c["rate_s"], timeout=c["rate_s"] * 3 + 30)
        for q in ("p50", "p90", "p99"):
            s[f"rate_{q}"].append(r[f"{q}_us"])

    def check_b0_path(self):
        """Does plaintext to an enrolled pod, sent from outside any redirect, still pass through
        ambit (sk_lookup)? If so, B0 cannot use the enrolled pods; it uses c -> d instead."""
        before = self.n2.logs().count("mode=plaintext")
        r = self.c.run([self.bins["net_rr"], "crr", self.b.ip4, str(RR_PORT), "3", "5"],
                       in_cgroup=False, timeout=15)
        time.sleep(0.3)
        through = self.n2.logs().count("mode=plaintext") > before
        self.log(f"B0 check: plaintext from an unenrolled pod to enrolled pod b "
                 f"{'passes through ambit-tunnel (sk_lookup)' if through else 'bypasses ambit'} "
                 f"(client rc={r.returncode}); B0 uses unenrolled pods c -> d")
        return through

    def idle_memory(self, variant):
        """RSS growth of the data-plane processes per idle connection through `variant`."""
        n = self.cfg["idle"]
        procs = {k: v for k, v in self.procs(variant).items() if not k.startswith("ambitd")}
        pod, host, port, in_cgroup = self.target(variant, RR_PORT)
        before = {k: sum(rss_kib(p) for p in pids) for k, pids in procs.items()}
        proc = pod.popen([self.bins["net_rr"], "idle", host, str(port), str(n), "120"],
                         in_cgroup=in_cgroup, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"idle client ({variant}): {line!r} {proc.stderr.read()}")
            time.sleep(0.5)
            after = {k: sum(rss_kib(p) for p in pids) for k, pids in procs.items()}
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {k: {"rss_before_kib": before[k], "rss_after_kib": after[k],
                    "kib_per_conn": (after[k] - before[k]) / n} for k in before}

    def run(self):
        self.b0_through_ambit = self.check_b0_path()
        for v in VARIANTS:  # warm-up: HBONE pool, certificates, page cache for the binaries
            self.rr(v, "rr", 1, 200, 5)
        reps = self.cfg["reps"]
        for rep in range(reps):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
            for v in order:
                t0 = time.time()
                self.run_once(v)
                self.log(f"rep {rep + 1}/{reps} {v}: {time.time() - t0:.1f}s")
        self.idle = {v: self.idle_memory(v) for v in ("B1", "T")}


def summarize(samples):
    out = {}
    for v in VARIANTS:
        out[v] = {}
        for key, *_ in METRICS:
            xs = samples[v][key]
            if xs:
                out[v][key] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                               "samples": xs}
    return out


def fmt(x):
    if x >= 1000:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(summary):
    lines = [f"{'variant':<8}{'workload':<20}{'unit':<8}{'median':>10}{'min-max':>20}"
             f"{'T/B0':>8}{'T/B1':>8}"]
    for key, label, unit, _ in METRICS:
        for v in VARIANTS:
            s = summary[v].get(key)
            if not s:
                continue
            ratios = ["", ""]
            if v == "T":
                for i, base in enumerate(("B0", "B1")):
                    b = summary[base].get(key)
                    if b and b["median"]:
                        ratios[i] = f"{s['median'] / b['median']:.2f}"
            lines.append(f"{v:<8}{label:<20}{unit:<8}{fmt(s['median']):>10}"
                         f"{fmt(s['min']) + '-' + fmt(s['max']):>20}{ratios[0]:>8}{ratios[1]:>8}")
    return "\n".join(lines)


def targets(summary, idle):
    def med(v, k):
        return summary[v][k]["median"]

    rows = []

    def add(name, value, ok):
        rows.append({"target": name, "value": value,
                     "status": "not measured" if ok is None else ("met" if ok else "missed")})

    r = med("T", "bulk1") / med("B0", "bulk1")
    add("single-stream T/B0 >= 0.35", f"{r:.2f}", r >= 0.35)
    r = med("T", "bulk1") / med("B1", "bulk1")
    add("single-stream T/B1 >= 0.6", f"{r:.2f}", r >= 0.6)
    d = med("T", "rr_p50") - med("B1", "rr_p50")
    add("RR p50 T-B1 <= 10 us", f"{d:.1f} us", d <= 10)
    d = med("T", "rr_p99") - med("B1", "rr_p99")
    add("RR p99 T-B1 <= 20 us", f"{d:.1f} us", d <= 20)
    r = med("T", "rate_p99") / med("B1", "rate_p99")
    add("1 KiB @1000/s p99 T <= 1.15 x B1", f"{r:.2f}x", r <= 1.15)
    c = med("T", "crr")
    add(">= 10000 new tunneled conn/s", f"{c:.0f}/s", c >= 10000)
    if idle and "T" in idle:
        worst = max(x["kib_per_conn"] for x in idle["T"].values())
        add("<= 4 KiB per idle tunneled stream (RSS, worst node)", f"{worst:.2f} KiB",
            worst <= 4)
    add(">= 1400 full mTLS handshakes/s/core (pooling off)", "-", None)
    add("<= 10 KiB per idle pooled TLS connection", "-", None)
    add("ambitd + ambit-tunnel <= 20 MB RSS with 100 pods", "-", None)
    add("authz decision <= 1 us at 10 000 policies", "see bench/authz_bench", None)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: one repetition, seconds")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "net.json"))
    args = ap.parse_args()
    build = pathlib.Path(args.build_dir).resolve()
    os.environ["AMBIT_BUILD_DIR"] = str(build)
    from topology import Topology, require_root  # noqa: E402 (reads AMBIT_BUILD_DIR)

    require_root()
    bins = {"net_rr": build / "bench/net/net_rr", "net_relay": build / "bench/net/net_relay",
            "ambitd": build / "agent/main/ambitd", "ambit-tunnel": build / "agent/main/ambit-tunnel"}
    missing = [str(p) for p in bins.values() if not p.exists()]
    if not shutil.which("iperf3"):
        missing.append("iperf3 (apt-get install iperf3, or bash scripts/setup.sh)")
    if missing:
        sys.stderr.write("bench/net: missing " + ", ".join(missing) +
                         f"\nbuild first: cmake --build {build} --target ambitd ambit-tunnel "
                         "net_rr net_relay\n")
        return 1
    bins = {k: str(v) for k, v in bins.items()}
    cfg = QUICK if args.quick else FULL
    mach = machine()

    def log(msg):
        sys.stderr.write(f"[bench/net] {msg}\n")
        sys.stderr.flush()

    started = time.time()
    with Topology("bn") as topo:
        bench = Bench(topo, cfg, bins, log)
        bench.setup()
        bench.run()
    summary = summarize(bench.samples)
    cpu = {v: {k: statistics.median(run[k] for run in bench.cpu[v])
               for k in (bench.cpu[v][0] if bench.cpu[v] else {})} for v in VARIANTS}
    tgt = targets(summary, bench.idle)

    print(f"machine: {mach['nproc']} x {mach['cpu']}, kernel {mach['kernel']}; "
          f"{'quick' if args.quick else 'full'} run, {cfg['reps']} repetition(s), "
          f"medians (noisy: shared cores)")
    print(table(summary))
    print("\nCPU seconds per GB (single-stream bulk, median):")
    for v in ("B1", "T"):
        for k, x in cpu[v].items():
            print(f"  {v:<3}{k:<22}{x:8.3f}")
    print(f"\nidle connections ({cfg['idle']}), RSS growth per connection:")
    for v, per in bench.idle.items():
        for k, x in per.items():
            print(f"  {v:<3}{k:<22}{x['kib_per_conn']:8.2f} KiB  "
                  f"({x['rss_before_kib']} -> {x['rss_after_kib']} KiB)")
    print("\ntargets (issue 7):")
    for row in tgt:
        print(f"  {row['status']:<13}{row['target']:<52}{row['value']}")
    print(f"\n(B0 check: plaintext to an enrolled pod "
          f"{'passes through' if bench.b0_through_ambit else 'bypasses'} ambit; B0 uses "
          f"unenrolled pods; total {time.time() - started:.0f}s)")

    result = {"machine": mach, "mode": "quick" if args.quick else "full", "config": cfg,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "b0_enrolled_server_through_ambit": bench.b0_through_ambit,
              "results": summary, "cpu_s_per_gb": cpu, "idle": bench.idle, "targets": tgt}
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
