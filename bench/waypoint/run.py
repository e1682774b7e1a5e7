#!/usr/bin/python3
"""ambit's waypoint benchmark: requests/s per waypoint core and the latency the waypoint adds,
against a peer L7 proxy (HAProxy) on the same topology, in the same run, interleaved.

    /usr/bin/python3 bench/waypoint/run.py [--quick] [--build-dir build] [--json PATH]

Variants (see bench/waypoint/README.md):
  D      client pod -> ambit tunnels (eBPF redirect, HBONE) -> server pod; no waypoint;
  W      the same, through ambit-waypoint (an L7 AuthorizationPolicy on paths);
  WJ     W with a JWT on every request, validated (RequestAuthentication) and required (policy);
  WX     W with a CUSTOM policy: every request checked by an HTTP ext_authz provider (a C++
         authorizer answering 200, so the authorizer is not the bottleneck);
  P      the peer: client -> TLS -> HAProxy (in a pod of its own) -> HTTP -> server pod;
  Pbase  client -> server pod, plain HTTP, the same pods and bridge as P;
  Apy    client -> tests/authorizers/http_authz.py (allow), the same pods as Pbase: what a Python
         authorizer costs per check, beside the C++ one WX uses;
  R      client -> HAProxy relaying TCP (no TLS, no HTTP) -> server pod: what one more process on
         the path costs with no protocol work at all, the floor under P's and W's added latency.
Load: h2load (nghttp2-client), HTTP/1.1 keep-alive. Closed loop (fixed request count, C
connections) for requests/s and the proxy process's CPU seconds (/proc/<pid>/stat) for
requests/s per core; open loop at 1 000 requests/s (h2load --rps) for p50/p90/p99.
All traffic stays in namespaces the topology module creates (198.18.0.0/15 only); everything is
torn down on exit, also on failure. Every loop is bounded in count and time.
"""

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
PY_AUTHZ = REPO / "tests" / "authorizers" / "http_authz.py"
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))
from bench_json import write_result  # noqa: E402

APP_PORT = 8080      # wp_http_server in the server pods
AUTHZ_PORT = 8000    # wp_http_server as the ext_authz provider
PEER_PORT = 8443     # HAProxy's TLS listener
PY_AUTHZ_PORT = 8100  # tests/authorizers/http_authz.py (variant Apy)
RELAY_PORT = 8081    # HAProxy's plain TCP relay (variant R)
ISSUER = "https://issuer.bench.ambit.test"
PROVIDER = "bench-ext-authz"
VARIANTS = ("D", "W", "WJ", "WX", "P", "Pbase", "Apy", "R")
# variant -> its baseline (Apy: the C++ server on the same path)
PROXIED = {"W": "D", "WJ": "D", "WX": "D", "P": "Pbase", "Apy": "Pbase", "R": "Pbase"}
PATHS = {"D": "/plain/bench", "W": "/plain/bench", "WJ": "/jwt/bench", "WX": "/ext/bench",
         "P": "/plain/bench", "Pbase": "/plain/bench", "Apy": "/ext/bench", "R": "/plain/bench"}

FULL = dict(reps=3, conns=16, requests=20000, closed_s=60, rate=1000, rate_s=5, warm=500)
QUICK = dict(reps=1, conns=8, requests=1000, closed_s=30, rate=1000, rate_s=1, warm=100)
# Open loop: this many connections share the rate (h2load --rps is per connection).
RATE_CONNS = 4

# Istio resources. The waypoint serves backend/waypoint; pod b uses it, pod e does not.
GATEWAY_AND_POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-paths
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/plain/*", "/ext/*"]
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/jwt/*"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: bench-jwt
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  jwtRules:
  - issuer: "{issuer}"
    audiences: ["bench"]
    jwks: '{jwks}'
"""

CUSTOM_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-ext-authz
  namespace: backend
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: CUSTOM
  provider:
    name: {provider}
  rules:
  - to:
    - operation:
        paths: ["/ext/*"]
"""

MESH = """\
extensionProviders:
- name: {provider}
  envoyExtAuthzHttp:
    service: ext-authz.backend.svc.cluster.local
    port: {port}
    timeout: 1s
"""

AUTHZ_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: ext-authz
  namespace: backend
spec:
  clusterIP: {vip}
  selector:
    app: x
  ports:
  - name: http
    port: {port}
    targetPort: {port}
"""

# HAProxy: one process, as many threads as the waypoint has workers, TLS 1.3 with AES-GCM
# (the mesh's suites) and an ECDSA P-256 certificate (like an SVID), HTTP/1.1 keep-alive on both
# sides with server connections reused, no logging (the waypoint's access log is on, which
# favours the peer). A second frontend relays plain TCP to the same server (variant R).
HAPROXY_CFG = """\
global
  nbthread {threads}
  maxconn 4000
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384
  ssl-default-bind-options ssl-min-ver TLSv1.3
  tune.ssl.cachesize 20000

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s

frontend bench
  bind {ip}:{port} ssl crt {pem} alpn http/1.1
  default_backend app

backend app
  server app {server}:{server_port} maxconn 1000

frontend relay
  mode tcp
  bind {ip}:{relay_port}
  default_backend relay_app

backend relay_app
  mode tcp
  server app {server}:{server_port}
"""


def cpu_seconds(pid):
    """utime + stime of a whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
            "haproxy": _first_line(["haproxy", "-v"]), "h2load": _first_line(["h2load",
                                                                             "--version"])}


def _first_line(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def percentile(sorted_xs, q):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(q / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def parse_h2load(out):
    """h2load's summary: requests done/succeeded/failed, status classes, wall seconds, req/s."""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    f = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if not (m and s and f):
        raise RuntimeError(f"cannot read h2load's summary:\n{out[-1500:]}")
    secs = float(f.group(1)) / (1000 if f.group(2) == "ms" else 1)
    return {"total": int(m.group(1)), "done": int(m.group(3)), "succeeded": int(m.group(4)),
            "failed": int(m.group(5)), "errored": int(m.group(6)), "2xx": int(s.group(1)),
            "4xx": int(s.group(3)), "5xx": int(s.group(4)), "seconds": secs,
            "req_per_s": float(f.group(3))}


class Bench:
    def __init__(self, topo, cfg, bins, log):
        self.topo, self.cfg, self.bins, self.log = topo, cfg, bins, log
        self.samples = {v: {"rps": [], "rps_core": [], "cpu_util": [], "p50": [], "p90": [],
                            "p99": [], "rate": []} for v in VARIANTS}
        self.not_measured = {}  # variant -> why

    # ---- setup -------------------------------------------------------------------------------
    def setup(self):
        from jwt_issuer import Issuer
        from topology import WAYPOINT_GATEWAY, with_labels
        t = self.topo
        self.a = t.add_pod("a", namespace="default", service_account="client", node="node1")
        self.b = t.add_pod("b", namespace="backend", service_account="api", node="node2")
        self.e = t.add_pod("e", namespace="backend", service_account="direct", node="node2")
        self.x = t.add_pod("x", namespace="backend", service_account="ext-authz", node="node2")
        self.wp = t.add_pod("wp", namespace="backend", service_account="waypoint", node="node3")
        # The peer's pods: known to no agent, so nothing of ambit is on their path.
        self.c = t.add_pod("c", namespace="peer", service_account="client", node="none")
        self.p = t.add_pod("p", namespace="peer", service_account="proxy", node="none")
        self.d = t.add_pod("d", namespace="peer", service_account="api", node="none")
        for pod in (self.a, self.c):
            # Many connections per run: let TIME_WAIT ports be reused (pod netns only).
            subprocess.run(["ip", "netns", "exec", pod.netns, "sysctl", "-qw",
                            "net.ipv4.tcp_tw_reuse=1",
                            "net.ipv4.ip_local_port_range=10000 65000"], check=True)
        self.issuer = Issuer(ISSUER, sub="bench", aud="bench")
        self.token = self.issuer.token(lifetime=3600)
        self.authz_vip = f"198.18.{t.subnet}.201"
        use = {"istio.io/use-waypoint": "waypoint"}
        docs = [self.a.yaml(), with_labels(self.b, use), self.e.yaml(), self.x.yaml(),
                with_labels(self.wp, {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
                WAYPOINT_GATEWAY,
                GATEWAY_AND_POLICIES.replace("{issuer}", ISSUER).replace(
                    "{jwks}", self.issuer.jwks),
                CUSTOM_POLICY.format(provider=PROVIDER),
                AUTHZ_SERVICE.format(vip=self.authz_vip, port=AUTHZ_PORT)]
        self.n1, self.n2, self.n3 = (t.add_agent(n) for n in ("node1", "node2", "node3"))
        for n in (self.n1, self.n2, self.n3):
            n.write_config("pods.yaml", "---\n".join(docs))
            n.write_config("mesh.yaml", MESH.format(provider=PROVIDER, port=AUTHZ_PORT))
        self.n1.start(wait_pods=[self.a])
        self.n2.start(wait_pods=[self.b, self.e, self.x])
        self.n3.start(wait_pods=[self.wp])
        self.n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid", 30)
        self.n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid", 30)
        self.n3.wait_log("certificate spiffe://cluster.local/ns/backend/sa/waypoint valid", 30)
        self.waypoint_pid = self._wait_pid(
            ["pgrep", "-f", "--", f"ambit-waypoint .*--control-socket {self.n3.run_dir}/"],
            "ambit-waypoint of node3")
        self.workers = self._waypoint_workers()

        # Applications: the same fixed-answer server behind every variant, one thread each (the
        # server costs the same on every path).
        for pod, in_cgroup in ((self.b, True), (self.e, True), (self.d, False)):
            self._start_listening(pod, [self.bins["wp_http_server"], "0.0.0.0", str(APP_PORT),
                                        "1"], in_cgroup)
        self._start_listening(self.x, [self.bins["wp_http_server"], "0.0.0.0", str(AUTHZ_PORT),
                                       "1"], True)
        self.py_authz = self._start_listening(
            self.d, ["/usr/bin/python3", str(PY_AUTHZ), "--listen", f"0.0.0.0:{PY_AUTHZ_PORT}"],
            False)
        # The peer proxy, with a certificate made now.
        pem = os.path.join(t.workdir, "haproxy.pem")
        key = os.path.join(t.workdir, "haproxy.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", pem,
                        "-days", "1", "-subj", "/CN=bench-peer"], check=True,
                       capture_output=True)
        with open(pem, "a") as out, open(key) as k:
            out.write(k.read())
        cfg_path = os.path.join(t.workdir, "haproxy.cfg")
        with open(cfg_path, "w") as f:
            f.write(HAPROXY_CFG.format(threads=self.workers, ip=self.p.ip4, port=PEER_PORT,
                                       pem=pem, server=self.d.ip4, server_port=APP_PORT,
                                       relay_port=RELAY_PORT))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", cfg_path], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its configuration: {check.stderr}")
        self.haproxy = self.p.popen(["haproxy", "-db", "-f", cfg_path], in_cgroup=False,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            self._wait_port(self.p, PEER_PORT)
        except RuntimeError:
            if self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.haproxy.stderr.read()[-800:]}")
            raise
        self.helpers = list(self.topo.procs)

    def _waypoint_workers(self):
        with open(f"/proc/{self.waypoint_pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        if "--workers" in argv:
            return int(argv[argv.index("--workers") + 1])
        return 2  # dataplane_main.cc's default

    @staticmethod
    def _wait_pid(argv, what, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
            if out:
                return int(out[0])
            time.sleep(0.05)
        raise RuntimeError(f"no {what} process within {timeout}s")

    def _start_listening(self, pod, argv, in_cgroup):
        proc = pod.popen(argv, in_cgroup=in_cgroup, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"{argv[0]} did not start in pod {pod.name}: {line!r} "
                               f"{proc.stderr.read() if proc.poll() is not None else ''}")
        return proc

    @staticmethod
    def _wait_port(pod, port, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["ip", "netns", "exec", pod.netns, "ss", "-Hltn",
                                  f"sport = :{port}"], capture_output=True, text=True).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {pod.name}:{port}")

    # ---- variants ----------------------------------------------------------------------------
    def target(self, v):
        """(client pod, in its cgroup, URL, extra h2load args, proxy pid or None)."""
        path = PATHS[v]
        if v == "D":
            return self.a, True, f"http://{self.e.ip4}:{APP_PORT}{path}", [], None
        if v in ("W", "WJ", "WX"):
            extra = ["-H", f"authorization: Bearer {self.token}"] if v == "WJ" else []
            return (self.a, True, f"http://{self.b.ip4}:{APP_PORT}{path}", extra,
                    self.waypoint_pid)
        if v == "P":
            return (self.c, False, f"https://{self.p.ip4}:{PEER_PORT}{path}", [],
                    self.haproxy.pid)
        if v == "R":
            return (self.c, False, f"http://{self.p.ip4}:{RELAY_PORT}{path}", [],
                    self.haproxy.pid)
        if v == "Apy":
            return (self.c, False, f"http://{self.d.ip4}:{PY_AUTHZ_PORT}{path}",
                    ["-H", "x-ext-authz: allow"], self.py_authz.pid)
        return self.c, False, f"http://{self.d.ip4}:{APP_PORT}{path}", [], None

    def curl(self, v, path=None, headers=()):
        pod, in_cgroup, url, _, _ = self.target(v)
        if path is not None:
            url = url.rsplit("/", 2)[0] + path
        argv = ["curl", "-sS", "-k", "-m", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}"]
        for h in headers:
            argv += ["-H", h]
        r = pod.run(argv + [url], in_cgroup=in_cgroup, timeout=15)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def check_paths(self):
        """Each variant answers what it should before it is timed: a misconfigured path fails
        the run instead of timing 403s. WX is marked not measured when the waypoint does not
        ask the authorizer."""
        for v in ("D", "W", "P", "Pbase", "R"):
            code, body = self.curl(v)
            if (code, body) != (200, "ok"):
                raise RuntimeError(f"{v}: expected 200 'ok', got {code} {body!r}")
        code, _ = self.curl("Apy")
        if code != 403:
            raise RuntimeError(f"Apy without x-ext-authz: expected 403, got {code}")
        code, body = self.curl("Apy", None, ["x-ext-authz: allow"])
        if code != 200:
            raise RuntimeError(f"Apy with x-ext-authz: allow: expected 200, got {code} {body!r}")
        code, body = self.curl("WJ", "/jwt/bench")
        if code != 403:
            raise RuntimeError(f"WJ without a token: expected 403, got {code} {body!r}")
        code, body = self.curl("WJ", "/jwt/bench", [f"authorization: Bearer {self.token}"])
        if (code, body) != (200, "ok"):
            raise RuntimeError(f"WJ with a token: expected 200 'ok', got {code} {body!r}")
        # The authorizer answers 403 to a checked path under /deny/: a deny there and an allow
        # elsewhere prove the waypoint asked it.
        allow, allow_body = self.curl("WX", "/ext/bench")
        deny, deny_body = self.curl("WX", "/ext/deny/bench")
        if (allow, allow_body) == (200, "ok") and deny == 403 and deny_body == "denied":
            return
        if allow == 403 and deny == 403:
            why = (f"the waypoint denies CUSTOM requests without asking the provider "
                   f"({allow_body!r}): external authorization is not wired in this build")
        else:
            why = (f"unexpected answers through the waypoint: allow path {allow} "
                   f"{allow_body!r}, deny path {deny} {deny_body!r}")
        self.not_measured["WX"] = why
        self.log(f"WX not measured: {why}")

    def h2load(self, v, argv, timeout):
        pod, in_cgroup, url, extra, _ = self.target(v)
        full = ["h2load", "--h1", "-t", "1"] + extra + argv + [url]
        try:
            r = pod.run(full, in_cgroup=in_cgroup, timeout=timeout)
        except AssertionError as e:  # the pod runner's timeout
            raise RuntimeError(f"{v}: h2load exceeded {timeout}s: {e}") from None
        if r.returncode != 0:
            raise RuntimeError(f"{v}: {' '.join(full)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout)[-800:]}")
        out = parse_h2load(r.stdout)
        if out["2xx"] != out["total"]:
            raise RuntimeError(f"{v}: {out['total']} requests, only {out['2xx']} answered 2xx "
                               f"({out['4xx']} 4xx, {out['5xx']} 5xx, {out['errored']} errored)")
        return out

    def closed_loop(self, v):
        c = self.cfg
        pid = self.target(v)[4]
        cpu0 = cpu_seconds(pid) if pid else None
        out = self.h2load(v, ["-c", str(c["conns"]), "-n", str(c["requests"])],
                          timeout=c["closed_s"])
        s = self.samples[v]
        s["rps"].append(out["req_per_s"])
        if pid:
            cpu = cpu_seconds(pid) - cpu0
            s["cpu_util"].append(cpu / out["seconds"])
            if cpu > 0:
                s["rps_core"].append(out["total"] / cpu)
        return out

    def open_loop(self, v):
        c = self.cfg
        n = c["rate"] * c["rate_s"]
        log = os.path.join(self.topo.workdir, f"h2load-{v}.log")
        self.h2load(v, ["-c", str(RATE_CONNS), "-n", str(n),
                        "--rps", str(c["rate"] // RATE_CONNS), "--log-file", log],
                    timeout=c["rate_s"] * 3 + 30)
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]
        os.unlink(log)
        starts = sorted(int(r[0]) for r in rows)
        lat = sorted(int(r[2]) for r in rows)
        s = self.samples[v]
        for q in (50, 90, 99):
            s[f"p{q}"].append(percentile(lat, q))
        span = (starts[-1] - starts[0]) / 1e6 if len(starts) > 1 else 0
        if span > 0:
            s["rate"].append((len(starts) - 1) / span)

    def run(self, only=None):
        self.check_paths()
        active = [v for v in VARIANTS if v not in self.not_measured and (not only or v in only)]
        for v in active:  # warm-up: HBONE pools, waypoint upstreams, TLS, page cache
            self.h2load(v, ["-c", str(self.cfg["conns"]), "-n", str(self.cfg["warm"])], 60)
        reps = self.cfg["reps"]
        for rep in range(reps):
            k = rep % len(active)
            for v in active[k:] + active[:k]:
                dead = [p.args for p in self.helpers if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"before {v}: a helper exited: {dead}")
                t0 = time.time()
                self.closed_loop(v)
                self.open_loop(v)
                self.log(f"rep {rep + 1}/{reps} {v}: {time.time() - t0:.1f}s")


# (key, label, unit)
METRICS = [
    ("rps", "closed loop", "req/s"),
    ("rps_core", "per proxy core", "req/s/core"),
    ("cpu_util", "proxy CPU", "cores"),
    ("p50", "@1000/s p50", "us"),
    ("p90", "@1000/s p90", "us"),
    ("p99", "@1000/s p99", "us"),
    ("rate", "@1000/s achieved", "req/s"),
]


def summarize(samples):
    out = {}
    for v in VARIANTS:
        out[v] = {}
        for key, *_ in METRICS:
            xs = [x for x in samples[v][key] if x is not None]
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


def table(summary, not_measured):
    lines = [f"{'variant':<8}{'workload':<20}{'unit':<12}{'median':>10}{'min-max':>20}"
             f"{'added':>10}"]
    for key, label, unit in METRICS:
        for v in VARIANTS:
            s = summary[v].get(key)
            if v in not_measured:
                if key == "rps":
                    lines.append(f"{v:<8}{'(all)':<20}{'':<12}{'not measured':>10}")
                continue
            if not s:
                continue
            added = ""
            base = PROXIED.get(v)
            if key in ("p50", "p90", "p99") and base and summary[base].get(key):
                added = f"{s['median'] - summary[base][key]['median']:+.1f}"
            lines.append(f"{v:<8}{label:<20}{unit:<12}{fmt(s['median']):>10}"
                         f"{fmt(s['min']) + '-' + fmt(s['max']):>20}{added:>10}")
    return "\n".join(lines)


def med(summary, v, k):
    s = summary[v].get(k)
    return s["median"] if s else None


def ratios(summary):
    rows = []
    p = med(summary, "P", "rps_core")
    for v in ("W", "WJ", "WX"):
        w = med(summary, v, "rps_core")
        rows.append((f"{v}/P requests/s per core", f"{w / p:.2f}" if w and p else "-"))
    for v, base in PROXIED.items():
        for q in ("p50", "p99"):
            a, b = med(summary, v, q), med(summary, base, q)
            rows.append((f"added {q} {v}-{base}", f"{a - b:+.1f} us" if a and b else "-"))
    return rows


def targets(summary, not_measured):
    rows = []

    def add(name, value, ok, why=None):
        rows.append({"target": name, "value": value,
                     "status": "not measured" if ok is None else ("met" if ok else "missed"),
                     **({"why": why} if why else {})})

    p = med(summary, "P", "rps_core")
    for v in ("W", "WJ", "WX"):
        w = med(summary, v, "rps_core")
        name = f"{v} requests/s per core >= P's"
        if v in not_measured or not (w and p):
            add(name, "-", None, not_measured.get(v))
        else:
            add(name, f"{w:.0f} vs {p:.0f} ({w / p:.2f}x)", w >= p)
    for v in ("WJ", "W", "WX"):
        a, d = med(summary, v, "p50"), med(summary, "D", "p50")
        name = f"added p50 {v}-D < 100 us at 1000 req/s" + (" (JWT)" if v == "WJ" else "")
        if v in not_measured or a is None or d is None:
            add(name, "-", None, not_measured.get(v))
        else:
            add(name, f"{a - d:.1f} us", a - d < 100)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: one repetition, seconds")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "waypoint.json"))
    ap.add_argument("--only", default="",
                    help="time only these variants (comma-separated, e.g. W,WJ: to profile one)")
    args = ap.parse_args()
    only = [v for v in args.only.split(",") if v]
    if any(v not in VARIANTS for v in only):
        ap.error(f"--only takes variants of {','.join(VARIANTS)}")
    build = pathlib.Path(args.build_dir).resolve()
    os.environ["AMBIT_BUILD_DIR"] = str(build)
    from topology import Topology, require_root  # noqa: E402 (reads AMBIT_BUILD_DIR)

    require_root()
    bins = {"wp_http_server": build / "bench/waypoint/wp_http_server",
            "ambitd": build / "agent/main/ambitd",
            "ambit-tunnel": build / "agent/main/ambit-tunnel",
            "ambit-waypoint": build / "agent/main/ambit-waypoint"}
    missing = [str(p) for p in bins.values() if not p.exists()]
    for tool, pkg in (("h2load", "nghttp2-client"), ("haproxy", "haproxy")):
        if not shutil.which(tool):
            missing.append(f"{tool} (apt-get install {pkg}, or bash scripts/setup.sh)")
    if not PY_AUTHZ.exists():
        missing.append(str(PY_AUTHZ))
    if missing:
        sys.stderr.write("bench/waypoint: missing " + ", ".join(missing) +
                         f"\nbuild first: cmake --build {build} --target ambitd ambit-tunnel "
                         "ambit-waypoint wp_http_server\n")
        return 1
    bins = {k: str(v) for k, v in bins.items()}
    cfg = dict(QUICK if args.quick else FULL)
    mach = machine()

    def log(msg):
        sys.stderr.write(f"[bench/waypoint] {msg}\n")
        sys.stderr.flush()

    started = time.time()
    with Topology("bw") as topo:
        bench = Bench(topo, cfg, bins, log)
        bench.setup()
        log(f"set up in {time.time() - started:.1f}s (waypoint workers: {bench.workers})")
        bench.run(only)
    summary = summarize(bench.samples)
    tgt = targets(summary, bench.not_measured)

    print(f"machine: {mach['nproc']} x {mach['cpu']}, kernel {mach['kernel']}; "
          f"{'quick' if args.quick else 'full'} run, {cfg['reps']} repetition(s), "
          f"medians (noisy: shared cores)")
    print(f"load: h2load --h1, closed loop {cfg['requests']} requests on {cfg['conns']} "
          f"connections; open loop {cfg['rate']}/s for {cfg['rate_s']}s on {RATE_CONNS} "
          f"connections; waypoint and HAProxy {bench.workers} threads each")
    print(table(summary, bench.not_measured))
    print("\nratios (medians):")
    for name, value in ratios(summary):
        print(f"  {name:<32}{value}")
    print(f"\nload average (1/5/15 min) at start {mach['loadavg']}, at end "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}")
    for v, why in bench.not_measured.items():
        print(f"\n{v} not measured: {why}")
    print("\ngoals (issue 15):")
    for row in tgt:
        print(f"  {row['status']:<13}{row['target']:<50}{row['value']}")
    r, base = med(summary, "R", "p50"), med(summary, "Pbase", "p50")
    if r is not None and base is not None:
        print(f"  (the floor on this machine: one more process on the path with no protocol "
              f"work, R-Pbase, adds {r - base:+.1f} us p50)")
    print(f"\n(peer: {mach['haproxy']}; load: {mach['h2load']}; total "
          f"{time.time() - started:.0f}s)")

    result = {"machine": mach, "mode": "quick" if args.quick else "full", "config": cfg,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "waypoint_workers": bench.workers, "results": summary,
              "not_measured": bench.not_measured, "ratios": dict(ratios(summary)),
              "targets": tgt}
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
