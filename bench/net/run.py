#!/usr/bin/python3
"""ambit's network benchmark: the bare path (B0), a plain relay pair (B1) and ambit (T) on one
two-node topology in network namespaces, interleaved, with medians, min-max and ratios.

    /usr/bin/python3 bench/net/run.py [--quick] [--build-dir build] [--json PATH]

Variants (see bench/net/README.md):
  B0  plain TCP between two pods that ambit does not enroll, no ambit on the path;
  B1  the same two pods with net_relay (plain epoll relay, 64 KiB buffers, no TLS) in each pod:
      client -> relay in client pod -> relay in server pod -> server (the pure hop cost);
  P   the same two pods with stunnel (Debian stunnel4) as a mutual-TLS tunnel pair in their
      place: client -> stunnel on 127.0.0.1 -> TLS 1.3 with client certificates from one CA
      (verifyChain both ways, TCP_NODELAY both sides) -> stunnel in the server pod -> server
      (the classic way to wrap TCP in TLS: the peer a user would pick instead);
  T   two enrolled pods on two agents: eBPF redirect -> ambit-tunnel -> HBONE (mTLS, HTTP/2
      CONNECT) -> ambit-tunnel -> server.
Also, against ambit only: full mTLS handshakes per second (pooling off: net_tls opens a fresh TLS
connection per handshake to the server tunnel's 15008), memory per idle pooled TLS connection,
per idle tunneled connection (10 000 in a full run; process RSS and kernel slab), and the RSS of
ambitd + ambit-tunnel with 100 enrolled pods.
All traffic stays in namespaces the topology module creates (198.18.0.0/15 only); everything is
torn down on exit, also on failure. Every loop is bounded in count and time.
"""

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import select
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))
from bench_json import write_result  # noqa: E402
from topology import rss_kib  # noqa: E402

IPERF_PORT = 5201
RR_PORT = 7001
# B1 relay ports: client-side relay (on 127.0.0.1 in the client pod) -> server-side relay.
RELAY = {IPERF_PORT: (15201, 16201), RR_PORT: (17001, 18001)}
# P stunnel ports: client-side stunnel (127.0.0.1 in the client pod) -> server-side stunnel.
STUNNEL = {IPERF_PORT: (25201, 26201), RR_PORT: (27001, 28001)}
VARIANTS = ("B0", "B1", "P", "T")
# What T is compared with, in the table's ratio columns.
BASELINES = ("B0", "B1", "P")

# idle: idle connections through T; idle_base: through B0, B1 and P (a relay or stunnel holds two
# descriptors per connection, so fewer fit under the descriptor limit).
FULL = dict(reps=3, bulk_s=5, rr_count=20000, crr_count=3000, rate_s=5, idle=10000,
            idle_base=5000, hs_count=3000, hs_s=15, tls_idle=1000, pods=100)
QUICK = dict(reps=1, bulk_s=1, rr_count=2000, crr_count=200, rate_s=1, idle=100,
             idle_base=100, hs_count=100, hs_s=3, tls_idle=50, pods=3)
# Every process the suite starts inherits this descriptor limit (or the hard limit, if lower).
FD_LIMIT = 65536
FD_SPARE = 512  # listeners, HBONE sessions, pipes, libraries
# The identity net_tls presents: pod c's (known to the mesh, not enrolled), from node1's CA API.
TLS_CLIENT_ID = "spiffe://cluster.local/ns/default/sa/plain"

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
    # ambit only: fresh TLS connections to the server tunnel's 15008, pooling off.
    ("hs_rate", "mTLS handshakes", "hs/s", True),
    ("hs_core", "handshakes/server core", "hs/s", True),
    # Memory: per idle connection, RSS of the process(es) named in the breakdown, and kernel slab
    # (every socket on the path, the client's and server's included).
    ("tls_idle_rss", "idle pooled TLS RSS", "KiB/conn", False),
    ("tls_idle_kern", "idle pooled TLS kernel", "KiB/conn", False),
    ("idle_rss", "idle conn RSS worst", "KiB/conn", False),
    ("idle_kern", "idle conn kernel", "KiB/conn", False),
    ("pods_rss", "RSS ambitd+tunnel", "MB", False),
    ("pods_pss", "PSS ambitd+tunnel", "MB", False),
]


def cpu_seconds(pid):
    """utime + stime of a whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    """Proportional set size: shared library pages split among the processes mapping them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def top_mappings(pid, n=10):
    """The `n` largest contributors to a process's RSS, by mapped file (or [heap] / [anon]):
    [name, RSS KiB, PSS KiB]."""
    agg, name = {}, None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                    name = os.path.basename(parts[5]) if len(parts) >= 6 else "[anon]"
                    agg.setdefault(name, [0, 0])
                elif parts and parts[0] in ("Rss:", "Pss:") and name is not None:
                    agg[name][0 if parts[0] == "Rss:" else 1] += int(parts[1])
    except OSError:
        return []
    return sorted(([k, *v] for k, v in agg.items()), key=lambda r: -r[1])[:n]


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def slab_kib():
    """Kernel slab in use, all caches (KiB), and per cache. Machine-wide: other work on the
    machine adds noise, which is why the idle runs use thousands of connections."""
    per = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            fields = line.split()
            per[fields[0]] = int(fields[2]) * int(fields[3]) / 1024  # num_objs * objsize
    return sum(per.values()), per


def tcp_mem_kib():
    """Pages charged to TCP socket buffers (/proc/net/sockstat "mem", machine-wide), in KiB."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    return 0


class KernelDelta:
    """Slab and TCP buffer memory before / after, per connection."""

    def __init__(self):
        self.slab0, self.per0 = slab_kib()
        self.tcp0 = tcp_mem_kib()

    def per_conn(self, n):
        slab1, per1 = slab_kib()
        tcp1 = tcp_mem_kib()
        grew = sorted(((per1.get(k, 0) - self.per0.get(k, 0), k) for k in per1), reverse=True)
        return {"slab_kib_per_conn": (slab1 - self.slab0) / n,
                "tcp_mem_kib_per_conn": (tcp1 - self.tcp0) / n,
                "kib_per_conn": (slab1 - self.slab0 + tcp1 - self.tcp0) / n,
                "top_slabs_kib_per_conn": {k: round(d / n, 3) for d, k in grew[:8]}}


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def agent_footprint(agent, service_accounts, namespace, ready=None, timeout=120, samples=3):
    """Starts `agent` (its configuration already written) and waits until every service account
    in `namespace` has a valid certificate and `ready()` (if given) holds: the time to ready.
    Then, idle (start-up work done), samples the RSS, anonymous RSS and PSS of its ambitd and
    ambit-tunnel `samples` times. bench/sweep/run.py calls this too."""
    want = set(service_accounts)
    t0 = time.time()
    agent.start()
    cert = re.compile(rf"certificate spiffe://cluster\.local/ns/{re.escape(namespace)}/sa/(\S+) "
                      r"valid serial")
    deadline = time.time() + timeout
    while True:
        have = want & set(cert.findall(agent.logs()))
        if len(have) == len(want) and (ready is None or ready()):
            break
        if agent.proc.poll() is not None:
            raise RuntimeError(f"{agent.node}: ambitd exited ({agent.proc.returncode}) with "
                               f"{len(have)}/{len(want)} certificates:\n{agent.logs()[-2000:]}")
        if time.time() > deadline:
            raise RuntimeError(f"{agent.node}: {len(have)}/{len(want)} pods got a certificate "
                               f"within {timeout}s:\n{agent.logs()[-2000:]}")
        time.sleep(0.1)
    ready_s = time.time() - t0
    tunnel = None
    for _ in range(100):
        tunnel = agent.tunnel_pid()
        if tunnel:
            break
        time.sleep(0.05)
    if not tunnel:
        raise RuntimeError(f"no ambit-tunnel process for {agent.node}")
    time.sleep(2.0)  # idle: start-up work done
    rows = []
    for i in range(samples):
        if i:
            time.sleep(0.5)
        pid = agent.proc.pid
        rows.append({"ambitd_kib": rss_kib(pid), "tunnel_kib": rss_kib(tunnel),
                     "ambitd_anon_kib": rss_anon_kib(pid), "tunnel_anon_kib": rss_anon_kib(tunnel),
                     "ambitd_pss_kib": pss_kib(pid), "tunnel_pss_kib": pss_kib(tunnel)})
    return {"ready_s": ready_s, "tunnel_pid": tunnel, "samples": rows}


class Bench:
    def __init__(self, topo, cfg, bins, log, svid):
        self.topo, self.cfg, self.bins, self.log, self.svid = topo, cfg, bins, log, svid
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
        # node1 also serves its CA API (on the host's loopback), for net_tls's SVID.
        tokens = os.path.join(t.workdir, "ca-tokens")
        with open(tokens, "w") as f:
            f.write("bench-token node1\n")
        self.n1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens, wait_pods=[self.a])
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
        self.certdir = self.svid.issue(self.n1, TLS_CLIENT_ID, "bench-token",
                                       os.path.join(t.workdir, "net-tls-svid"))

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
        self.stunnels = self.start_stunnels()
        self.servers = [p for p in self.topo.procs]  # iperf3, echo servers, relays, stunnels
        self.wait_port(self.b, IPERF_PORT)
        self.wait_port(self.d, IPERF_PORT)

    def start_stunnels(self):
        """P: one stunnel per pod (c: client side, d: server side), a service per server port.
        Its own CA and certificates (ECDSA P-256, as ambit's SVIDs), TLS 1.3 only with the suite
        and group ambit's tunnels negotiate, so the two differ in their software alone."""
        d = os.path.join(self.topo.workdir, "stunnel")
        os.makedirs(d, exist_ok=True)

        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj",
                "/CN=bench-stunnel-ca")
        for name in ("client", "server"):
            openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj",
                    f"/CN=bench-stunnel-{name}")
            openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey",
                    f"{d}/ca.key", "-CAcreateserial", "-days", "2", "-out", f"{d}/{name}.pem")
        common = ["sslVersionMin = TLSv1.3", "ciphersuites = TLS_AES_128_GCM_SHA256",
                  "curves = X25519", f"CAfile = {d}/ca.pem", "verifyChain = yes",
                  "requireCert = yes", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
        procs = {}
        for node, pod, name, client in (("node2", self.d, "server", False),
                                        ("node1", self.c, "client", True)):
            lines = ["foreground = yes", "pid =", "syslog = no", "debug = err"]
            for port, (front, back) in STUNNEL.items():
                lines += [f"[p{port}]", f"cert = {d}/{name}.pem", f"key = {d}/{name}.key",
                          *common]
                if client:
                    lines += ["client = yes", f"accept = 127.0.0.1:{front}",
                              f"connect = {self.d.ip4}:{back}"]
                else:
                    lines += [f"accept = 0.0.0.0:{back}", f"connect = {self.d.ip4}:{port}"]
            conf = f"{d}/{name}.conf"
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            log = open(f"{d}/{name}.log", "w")
            procs[node] = pod.popen([shutil.which("stunnel4") or "stunnel4", conf],
                                    in_cgroup=False, stdout=log, stderr=log)
            log.close()
            for front_back in STUNNEL.values():
                self.wait_port(pod, front_back[0] if client else front_back[1])
        return {node: [p.pid] for node, p in procs.items()}

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
        if variant == "P":
            return self.c, "127.0.0.1", STUNNEL[port][0], False
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
        if variant == "P":
            return {"stunnel node1": self.stunnels["node1"],
                    "stunnel node2": self.stunnels["node2"]}
        return {}

    def bulk1(self, variant):
        before = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.procs(variant).items()}
        gbps, sent = self.iperf(variant, 1)
        after = {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.procs(variant).items()}
        gb = sent / 1e9
        self.cpu[variant].append({k: (after[k] - before[k]) / gb for k in before} if gb else {})
        return gbps

    def profile_bulk(self, variant, out_dir):
        """One single-stream bulk run of `variant` with `perf record --call-graph dwarf` on each
        side's processes (one perf per side), then what each side's CPU went on (see
        PROFILE_GROUPS)."""
        os.makedirs(out_dir, exist_ok=True)
        recs = {}
        for side, pids in self.procs(variant).items():
            if not side.startswith(("ambit-tunnel", "relay", "stunnel")):
                continue
            data = os.path.join(out_dir, f"{variant}-{side.replace(' ', '-')}.data")
            recs[side] = (data, subprocess.Popen(
                ["perf", "record", "-q", "--call-graph", "dwarf,16384", "-F", "499", "-o", data,
                 "-p", ",".join(str(p) for p in pids)],
                stdout=subprocess.DEVNULL))  # its errors reach the bench's stderr
        time.sleep(0.5)  # perf attached before the first byte
        try:
            gbps = self.bulk1(variant)
        finally:
            for _, proc in recs.values():
                proc.send_signal(2)  # SIGINT: perf writes its file and exits
            for _, proc in recs.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        report = {"variant": variant, "gbps": gbps, "cpu_s_per_gb": self.cpu[variant][-1],
                  "sides": {}}
        for side, (data, _) in recs.items():
            report["sides"][side] = profile_groups(data)
        return report

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

    def _wait_fds(self, pids, before, n, timeout=30):
        """Waits (bounded) until the processes hold no more descriptors than before a test, so
        that connections being torn down do not leak into the next measurement. The HBONE pool
        may keep the sessions the n streams needed (up to 100 streams each) open while idle."""
        deadline = time.time() + timeout
        pooled = n // 100 + 2
        while time.time() < deadline:
            if all(fd_count(p) <= before[p] + pooled for p in pids):
                return
            time.sleep(0.1)
        self.log(f"descriptors not back to their count after {timeout}s: "
                 f"{ {p: (before[p], fd_count(p)) for p in pids} }")

    def _hold(self, pod, argv, in_cgroup, procs, n, what):
        """Starts a client that opens n connections and holds them; returns the RSS and kernel
        memory growth per connection of `procs` ({name: [pid]}), then lets the client go."""
        pids = [p for pids in procs.values() for p in pids]
        fds = {p: fd_count(p) for p in pids}
        before = {k: sum(rss_kib(p) for p in ps) for k, ps in procs.items()}
        kernel = KernelDelta()
        proc = pod.popen(argv, in_cgroup=in_cgroup, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 300)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith("ready"):
                proc.kill()
                raise RuntimeError(f"{what}: {line!r} {proc.stderr.read()[-1000:]}")
            time.sleep(1.0)  # the far side finishes its connects and settles
            after = {k: sum(rss_kib(p) for p in ps) for k, ps in procs.items()}
            kern = kernel.per_conn(n)
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._wait_fds(pids, fds, n)
        return {"connections": n, "kernel": kern,
                "processes": {k: {"rss_before_kib": before[k], "rss_after_kib": after[k],
                                  "kib_per_conn": (after[k] - before[k]) / n} for k in before}}

    def idle_memory(self, variant):
        """Per idle connection through `variant`: RSS growth of its data-plane processes (not
        ambitd) and kernel memory growth."""
        n = self.cfg["idle" if variant == "T" else "idle_base"]
        procs = {k: v for k, v in self.procs(variant).items() if not k.startswith("ambitd")}
        pod, host, port, in_cgroup = self.target(variant, RR_PORT)
        out = self._hold(pod, [self.bins["net_rr"], "idle", host, str(port), str(n), "300"],
                         in_cgroup, procs, n, f"idle client ({variant})")
        s = self.samples[variant]
        if out["processes"]:
            s["idle_rss"].append(max(x["kib_per_conn"] for x in out["processes"].values()))
        s["idle_kern"].append(out["kernel"]["kib_per_conn"])
        return out

    def tls_idle_memory(self):
        """Per idle pooled HBONE connection (TLS up, HTTP/2 settings exchanged, no stream): RSS
        growth of the server-side ambit-tunnel, and kernel memory."""
        n = self.cfg["tls_idle"]
        out = self._hold(self.c, [self.bins["net_tls"], "idle", self.certdir, self.b.ip4, "15008",
                                  str(n), "300"], False,
                         {"ambit-tunnel node2 (server)": [self.tunnels["node2"]]}, n,
                         "idle TLS client")
        s = self.samples["T"]
        s["tls_idle_rss"].append(next(iter(out["processes"].values()))["kib_per_conn"])
        s["tls_idle_kern"].append(out["kernel"]["kib_per_conn"])
        return out

    def handshakes(self):
        """Full mTLS handshakes against node2's ambit-tunnel (no resumption, no pooling): rate,
        and handshakes per CPU second of that tunnel (= per core)."""
        pid = self.tunnels["node2"]
        c0 = cpu_seconds(pid)
        r = self.c.run([self.bins["net_tls"], "handshakes", self.certdir, self.b.ip4, "15008",
                        str(self.cfg["hs_count"]), str(self.cfg["hs_s"]), "2"],
                       in_cgroup=False, timeout=self.cfg["hs_s"] + 30)
        cpu = cpu_seconds(pid) - c0
        if r.returncode != 0:
            raise RuntimeError(f"net_tls handshakes failed ({r.returncode}): {r.stderr[-800:]}")
        doc = json.loads(r.stdout.strip().splitlines()[-1])
        s = self.samples["T"]
        s["hs_rate"].append(doc["per_s"])
        if cpu > 0:
            s["hs_core"].append(doc["count"] / cpu)
        self.hs_runs.append(dict(doc, server_cpu_s=cpu))

    def pods_memory(self):
        """A third agent with cfg['pods'] enrolled pods (one service account each, so one SVID
        each: the costly case), idle: RSS and PSS of its ambitd + ambit-tunnel. The other two
        agents and their data planes are stopped first: a node runs one agent, and theirs would
        share its library pages and so divide its PSS by three."""
        for node, agent in (("node1", self.n1), ("node2", self.n2)):
            agent.cleanup()
            pid = self.tunnels[node]
            deadline = time.time() + 10
            while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
        t, n = self.topo, self.cfg["pods"]
        pods = [t.add_pod(f"p{i:03d}", namespace="idle", service_account=f"sa{i:03d}",
                          node="node3") for i in range(n)]
        n3 = t.add_agent("node3")
        n3.write_config("pods.yaml", "---\n".join(p.yaml() for p in pods))
        out = agent_footprint(n3, [p.service_account for p in pods], "idle")
        for row in out["samples"]:
            self.samples["T"]["pods_rss"].append(
                (row["ambitd_kib"] + row["tunnel_kib"]) * 1024 / 1e6)
            self.samples["T"]["pods_pss"].append(
                (row["ambitd_pss_kib"] + row["tunnel_pss_kib"]) * 1024 / 1e6)
        maps = {"ambitd": top_mappings(n3.proc.pid),
                "ambit-tunnel": top_mappings(out["tunnel_pid"])}
        n3.stop()  # its data plane and pods go with the topology
        return {"pods": n, "identities": n, "ready_s": out["ready_s"], "samples": out["samples"],
                "mappings": maps}

    def run(self):
        self.b0_through_ambit = self.check_b0_path()
        for v in VARIANTS:  # warm-up: HBONE pool, certificates, page cache for the binaries
            self.rr(v, "rr", 1, 200, 5)
        # Memory first, before the load runs leave freed heap behind that new connections
        # would reuse (which would understate their cost).
        self.start_rss = {k: rss_kib(p[0]) for k, p in self.procs("T").items()}
        self.tls_idle = self.tls_idle_memory()
        self.log(f"idle pooled TLS ({self.cfg['tls_idle']}) measured")
        self.idle = {}
        for v in VARIANTS:
            t0 = time.time()
            self.idle[v] = self.idle_memory(v)
            self.log(f"idle {v} ({self.idle[v]['connections']}): {time.time() - t0:.1f}s")
        self.hs_runs = []
        reps = self.cfg["reps"]
        for rep in range(reps):
            k = rep % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            for v in order:
                t0 = time.time()
                self.run_once(v)
                self.log(f"rep {rep + 1}/{reps} {v}: {time.time() - t0:.1f}s")
            t0 = time.time()
            self.handshakes()
            self.log(f"rep {rep + 1}/{reps} handshakes: {time.time() - t0:.1f}s")
        t0 = time.time()
        self.pods = self.pods_memory()
        self.log(f"{self.cfg['pods']} enrolled pods: {time.time() - t0:.1f}s")


# What a side's CPU goes on, as shares of its samples (inclusive: a sample counts towards every
# group whose symbol is on its stack, so groups may overlap; "self" groups count the leaf only).
PROFILE_GROUPS = [
    # (label, "children" = symbol anywhere on the stack | "self" = leaf symbol or DSO, patterns)
    ("read() of a socket, in the kernel", "children", ("ksys_read", "__sys_recvfrom")),
    ("send() / write() to a socket, in the kernel", "children", ("__sys_sendto", "ksys_write")),
    ("receiving stack run inline (softirq, any syscall)", "children", ("handle_softirqs",
                                                                        "__do_softirq")),
    ("the VM's interrupt enable (pvm_irq_enable, leaf)", "self", ("pvm_irq_enable",)),
    ("epoll_wait", "children", ("__x64_sys_epoll_wait", "do_epoll_wait")),
    ("SSL_write (sealing, records to the wire buffer)", "children", ("SSL_write",)),
    ("SSL_read (socket reads, opening)", "children", ("SSL_read",)),
    ("libcrypto: AES-GCM and the rest (leaf)", "self", ("libcrypto",)),
    ("memmove / memcpy in user space (leaf)", "self", ("__memmove", "__memcpy")),
    ("copy to / from user in the kernel (leaf)", "self", ("copy_user", "_copy_to_iter",
                                                          "_copy_from_iter")),
    ("nghttp2 (leaf)", "self", ("libnghttp2",)),
    ("libssl (leaf)", "self", ("libssl",)),
]


def profile_groups(data):
    """Shares of a perf.data file's samples per PROFILE_GROUPS entry."""
    def report(*args):
        r = subprocess.run(["perf", "report", "-i", data, "--stdio", "-q", "-g", "none",
                            "--percent-limit", "0.05", *args],
                           capture_output=True, text=True, timeout=300)
        rows = []
        for line in r.stdout.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?(.*)$", line)
            if m:
                rows.append((float(m.group(1)), float(m.group(2) or 0), m.group(3)))
        return rows

    children = report("--children", "--sort", "sym")
    leaf_sym = report("--no-children", "--sort", "sym")
    leaf_dso = report("--no-children", "--sort", "dso")
    out = {}
    for label, kind, pats in PROFILE_GROUPS:
        if kind == "children":
            # The largest inclusive share among the patterns (a syscall and its wrapper nest).
            out[label] = max([c for c, _, name in children if any(p in name for p in pats)],
                             default=0.0)
        else:
            rows = leaf_dso if pats[0].startswith("lib") else leaf_sym
            out[label] = sum(c for c, _, name in rows if any(p in name for p in pats))
    out["top leaf symbols"] = [(round(c, 1), name.strip()) for c, _, name in leaf_sym[:12]]
    return out


def print_profiles(profiles, mach, cfg):
    print(f"machine: {mach['nproc']} x {mach['cpu']}, kernel {mach['kernel']}; one "
          f"{cfg['bulk_s']} s single-stream bulk run per variant under perf record "
          "--call-graph dwarf (499 Hz)")
    for r in profiles:
        print(f"\n{r['variant']}: {r['gbps']:.2f} Gbit/s; CPU s/GB: " +
              ", ".join(f"{k} {x:.3f}" for k, x in r["cpu_s_per_gb"].items()))
        sides = list(r["sides"])
        print(f"  {'share of the side samples, %':<52}" + "".join(f"{s:>22}" for s in sides))
        for label, *_ in PROFILE_GROUPS:
            print(f"  {label:<52}" + "".join(f"{r['sides'][s][label]:>22.1f}" for s in sides))
        for s in sides:
            print(f"  top leaf symbols, {s}: " +
                  "; ".join(f"{name} {c}" for c, name in r["sides"][s]["top leaf symbols"][:8]))


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
    lines = [f"{'variant':<8}{'workload':<24}{'unit':<10}{'median':>10}{'min-max':>20}" +
             "".join(f"{'T/' + b:>8}" for b in BASELINES)]
    for key, label, unit, _ in METRICS:
        for v in VARIANTS:
            s = summary[v].get(key)
            if not s:
                continue
            ratios = [""] * len(BASELINES)
            if v == "T":
                for i, base in enumerate(BASELINES):
                    b = summary[base].get(key)
                    if b and b["median"]:
                        ratios[i] = f"{s['median'] / b['median']:.2f}"
            lines.append(f"{v:<8}{label:<24}{unit:<10}{fmt(s['median']):>10}"
                         f"{fmt(s['min']) + '-' + fmt(s['max']):>20}" + "".join(f"{r:>8}" for r in ratios))
    return "\n".join(lines)


def targets(summary, cfg):
    def med(v, k):
        s = summary[v].get(k)
        return s["median"] if s else None

    rows = []

    def add(name, value, ok):
        rows.append({"target": name, "value": value,
                     "status": "not measured" if ok is None else ("met" if ok else "missed")})

    def ratio(k, base):
        t, b = med("T", k), med(base, k)
        return None if t is None or not b else t / b

    def goal(name, value, ok, fmt_value):
        add(name, "-" if value is None else fmt_value(value), None if value is None else ok(value))

    goal("single-stream bulk T/B1 >= 0.85", ratio("bulk1", "B1"), lambda r: r >= 0.85,
         lambda r: f"{r:.2f}")
    goal("4-stream bulk T/B1 >= 0.80", ratio("bulk4", "B1"), lambda r: r >= 0.80,
         lambda r: f"{r:.2f}")
    # Against the peer a user would pick instead: at least as good on every throughput and
    # latency workload (higher is better for throughput, lower for latency).
    for key, label, _, higher in METRICS[:9]:
        r = ratio(key, "P")
        goal(f"{label}: T {'>=' if higher else '<='} P", r,
             (lambda r: r >= 1.0) if higher else (lambda r: r <= 1.0), lambda r: f"{r:.2f}x")
    d = None if med("T", "rr_p99") is None else med("T", "rr_p99") - med("B1", "rr_p99")
    goal("1 B RR p99 T-B1 <= 20 us", d, lambda d: d <= 20, lambda d: f"{d:+.1f} us")
    goal("connect+1 RR T/B1 >= 0.90", ratio("crr", "B1"), lambda r: r >= 0.90,
         lambda r: f"{r:.2f}")
    h = med("T", "hs_core")
    goal(">= 1400 full mTLS handshakes/s/core (server)", h, lambda h: h >= 1400,
         lambda h: f"{h:.0f}/s")
    goal("<= 12 KiB per idle pooled TLS connection (RSS)", med("T", "tls_idle_rss"),
         lambda m: m <= 12, lambda m: f"{m:.2f} KiB")
    goal(f"<= 4 KiB per idle tunneled stream (RSS, worst side, {cfg['idle']})",
         med("T", "idle_rss"), lambda m: m <= 4, lambda m: f"{m:.2f} KiB")
    goal(f"ambitd + ambit-tunnel <= 30 MB RSS with {cfg['pods']} pods", med("T", "pods_rss"),
         lambda m: m <= 30, lambda m: f"{m:.1f} MB")
    goal(f"ambitd + ambit-tunnel <= 16 MB PSS with {cfg['pods']} pods", med("T", "pods_pss"),
         lambda m: m <= 16, lambda m: f"{m:.1f} MB")
    add("authz decision <= 1 us at 10 000 policies", "see bench/authz_bench", None)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: one repetition, seconds")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "net.json"))
    ap.add_argument("--profile", metavar="DIR",
                    help="instead of the suite: one single-stream bulk run per variant B1, P "
                         "and T under perf record (DWARF call graphs), and where each side's CPU "
                         "goes "
                         "(perf.data files kept in DIR)")
    args = ap.parse_args()
    build = pathlib.Path(args.build_dir).resolve()
    os.environ["AMBIT_BUILD_DIR"] = str(build)
    from topology import Topology, require_root  # noqa: E402 (reads AMBIT_BUILD_DIR)

    require_root()
    import svid  # noqa: E402 (tests/e2e: SVIDs from an agent's CA API)
    # Thousands of idle connections: every process started from here inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    bins = {"net_rr": build / "bench/net/net_rr", "net_relay": build / "bench/net/net_relay",
            "net_tls": build / "bench/net/net_tls",
            "ambitd": build / "agent/main/ambitd", "ambit-tunnel": build / "agent/main/ambit-tunnel"}
    missing = [str(p) for p in bins.values() if not p.exists()]
    tools = (("iperf3", "iperf3"), ("stunnel4", "stunnel4"))
    if args.profile:
        tools += (("perf", "linux-perf"),)
    for tool, pkg in tools:
        if not shutil.which(tool):
            missing.append(f"{tool} (apt-get install {pkg}, or bash scripts/setup.sh)")
    if missing:
        sys.stderr.write("bench/net: missing " + ", ".join(missing) +
                         f"\nbuild first: cmake --build {build} --target ambitd ambit-tunnel "
                         "net_rr net_relay\n")
        return 1
    bins = {k: str(v) for k, v in bins.items()}
    cfg = dict(QUICK if args.quick else FULL)
    mach = machine()

    def log(msg):
        sys.stderr.write(f"[bench/net] {msg}\n")
        sys.stderr.flush()

    for key, per_conn in (("idle", 1), ("idle_base", 2)):
        fit = (fd_limit - FD_SPARE) // per_conn
        if fd_limit != resource.RLIM_INFINITY and cfg[key] > fit:
            log(f"descriptor limit {fd_limit}: {key} {cfg[key]} -> {fit}")
            cfg[key] = fit

    started = time.time()
    stubs = [p for p in sys.path if p.startswith(os.path.join(tempfile.gettempdir(),
                                                             "ambit-stubs-"))]
    try:
        with Topology("bn") as topo:
            bench = Bench(topo, cfg, bins, log, svid)
            bench.setup()
            if args.profile:
                profiles = []
                for v in ("B1", "P", "T"):
                    bench.iperf(v, 1)  # warm-up: the HBONE pool, page cache, ARP
                    profiles.append(bench.profile_bulk(v, args.profile))
                    log(f"profiled {v}")
            else:
                bench.run()
    finally:
        # svid.py generates its gRPC stubs into a temporary directory on sys.path.
        for p in sys.path:
            if p.startswith(os.path.join(tempfile.gettempdir(), "ambit-stubs-")) and \
                    p not in stubs:
                shutil.rmtree(p, ignore_errors=True)
    if args.profile:
        print_profiles(profiles, mach, cfg)
        write_result({"machine": mach, "config": cfg, "profiles": profiles},
                     os.path.join(args.profile, "profile.json"))
        return 0
    summary = summarize(bench.samples)
    cpu = {v: {k: statistics.median(run[k] for run in bench.cpu[v])
               for k in (bench.cpu[v][0] if bench.cpu[v] else {})} for v in VARIANTS}
    tgt = targets(summary, cfg)

    print(f"machine: {mach['nproc']} x {mach['cpu']}, kernel {mach['kernel']}; "
          f"{'quick' if args.quick else 'full'} run, {cfg['reps']} repetition(s), "
          f"medians (noisy: shared cores)")
    print(table(summary))
    print("\nCPU seconds per GB (single-stream bulk, median):")
    for v in ("B1", "P", "T"):
        for k, x in cpu[v].items():
            print(f"  {v:<3}{k:<22}{x:8.3f}")
    print(f"\nfull mTLS handshakes ({cfg['hs_count']} per repetition, 2 client threads, no "
          f"resumption), server ambit-tunnel CPU:")
    for r in bench.hs_runs:
        print(f"  {r['count']:>6} in {r['seconds']:.2f}s = {r['per_s']:.0f}/s; server CPU "
              f"{r['server_cpu_s']:.2f}s = {r['server_cpu_s'] / max(r['count'], 1) * 1e6:.0f} "
              f"us/handshake")
    print(f"\nidle pooled TLS connections ({cfg['tls_idle']}, to node2's 15008), per connection:")
    for k, x in bench.tls_idle["processes"].items():
        print(f"  {k:<28}{x['kib_per_conn']:8.2f} KiB RSS  "
              f"({x['rss_before_kib']} -> {x['rss_after_kib']} KiB)")
    print(f"  {'kernel (slab + TCP buffers)':<28}{bench.tls_idle['kernel']['kib_per_conn']:8.2f}"
          f" KiB  (both ends' sockets)")
    print(f"\nidle connections ({cfg['idle']} through T, {cfg['idle_base']} through B0, B1 "
          f"and P), per connection:")
    for v, out in bench.idle.items():
        for k, x in out["processes"].items():
            print(f"  {v:<3}{k:<25}{x['kib_per_conn']:8.2f} KiB RSS  "
                  f"({x['rss_before_kib']} -> {x['rss_after_kib']} KiB)")
        print(f"  {v:<3}{'kernel (slab + TCP bufs)':<25}{out['kernel']['kib_per_conn']:8.2f} KiB"
              f"  (every socket on the path)")
    p = bench.pods
    last = p["samples"][-1]
    print(f"\n{p['pods']} enrolled pods ({p['identities']} identities) on one agent, idle "
          f"(ready in {p['ready_s']:.1f}s), RSS (anonymous / PSS):\n"
          f"  ambitd {last['ambitd_kib']} KiB ({last['ambitd_anon_kib']} / "
          f"{last['ambitd_pss_kib']}), ambit-tunnel {last['tunnel_kib']} KiB "
          f"({last['tunnel_anon_kib']} / {last['tunnel_pss_kib']}); the other agents stopped")
    for proc, rows in p.get("mappings", {}).items():
        print(f"  largest in {proc} (RSS / PSS KiB): " +
              ", ".join(f"{name} {rss}/{pss}" for name, rss, pss in rows))
    print("\ngoals:")
    for row in tgt:
        print(f"  {row['status']:<13}{row['target']:<60}{row['value']}")
    print(f"\n(B0 check: plaintext to an enrolled pod "
          f"{'passes through' if bench.b0_through_ambit else 'bypasses'} ambit; B0 uses "
          f"unenrolled pods; total {time.time() - started:.0f}s)")

    result = {"machine": mach, "mode": "quick" if args.quick else "full", "config": cfg,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "b0_enrolled_server_through_ambit": bench.b0_through_ambit,
              "results": summary, "cpu_s_per_gb": cpu, "start_rss_kib": bench.start_rss,
              "handshakes": bench.hs_runs, "idle_pooled_tls": bench.tls_idle,
              "idle": bench.idle, "enrolled_pods": bench.pods, "targets": tgt}
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
