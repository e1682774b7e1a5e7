#!/usr/bin/env python3
"""Configuration at scale: how long a configuration takes from the file write to the data plane
enforcing it, and what it costs in memory, at 1 000 / 10 000 / 100 000 peer pods with 100 /
1 000 / 10 000 AuthorizationPolicies. The baseline, measured in the same run on the same node,
is a DENY written into an otherwise empty configuration.

One simulated node (tests/e2e/topology.py): web calls api over HBONE through the real tunnel.
For each size: write the peers and policies (time until the data plane acknowledges that
generation), then write one DENY for api's port (time until web's new connections are refused),
then remove everything (RSS after the configuration shrank). Needs root. Bounded: every wait
stops after 300 s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))
from apps import MULTI_SERVER  # noqa: E402
from scale_config import remove_scale_config, write_scale_config  # noqa: E402
from topology import Topology, build_dir, deny_port_policy, rss_kib  # noqa: E402

PROBE = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 9000), timeout=3)
    s.sendall(b"ping\n")
    print("ok" if s.recv(100) == b"ping\n" else "no")
except Exception:
    print("no")
"""
SIZES = [(1_000, 100), (10_000, 1_000), (100_000, 10_000)]
LIMIT_S = 300


def generation(agent):
    r = subprocess.run([str(build_dir() / "agent/cli/ambitctl"), "policies", "-o", "json",
                        "--admin-socket", agent.admin_socket], capture_output=True, text=True,
                       timeout=120, check=False)
    return json.loads(r.stdout)["generation"] if r.returncode == 0 else None


def scale_policies(agent):
    """How many of scale_config's DENY policies ambitd lists (None while it does not answer)."""
    r = subprocess.run([str(build_dir() / "agent/cli/ambitctl"), "policies", "-o", "json",
                        "--admin-socket", agent.admin_socket], capture_output=True, text=True,
                       timeout=120, check=False)
    if r.returncode != 0:
        return None
    return sum(1 for p in json.loads(r.stdout)["policies"]
               if p["namespace"].startswith("scale-") and p["name"].startswith("deny-"))


def rss_by_mapping(pid):
    """Resident KiB of a process by kind of mapping: the main heap, anonymous mappings (thread
    arenas, large blocks) and everything else (code, files, stacks)."""
    out = {"heap": 0, "anon": 0, "other": 0}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                name = fields[5] if len(fields) > 5 else ""
                kind = "heap" if name == "[heap]" else "anon" if name == "" else "other"
            elif fields[0] == "Rss:":
                out[kind] += int(fields[1])
    return out


def wait(pred, what):
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not happen within {LIMIT_S}s")


class ConfigBench:
    """One simulated node in `topo`: web calls api (port 9000) over HBONE through the real
    tunnel. measure() is one repetition at one size; bench/sweep/run.py imports this too."""

    def __init__(self, topo, smaps=False):
        self.topo, self.smaps = topo, smaps
        self.web = topo.add_pod("web", namespace="frontend", service_account="web")
        self.api = topo.add_pod("api", namespace="backend", service_account="api")
        self.agent = topo.add_agent("node1")
        topo.write_pods(self.agent, [self.web, self.api])
        self.agent.start(wait_pods=[self.web, self.api])
        self.agent.wait_log("certificate spiffe://cluster.local/ns/frontend/sa/web valid")
        self.agent.wait_log("certificate spiffe://cluster.local/ns/backend/sa/api valid")
        self.server = self.api.popen(["/usr/bin/python3", "-u", "-c", MULTI_SERVER, "9000"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        assert b"listening" in os.read(self.server.stdout.fileno(), 100)

    def allowed(self):
        return self.web.python(PROBE, self.api.ip4).stdout.strip() == "ok"

    def in_sync(self):
        g = generation(self.agent)
        return g is not None and g["desired"] == g["applied"]

    def measure(self, peers, policies):
        """Writes `peers` peer pods and `policies` DENY policies (time until the data plane
        acknowledges that generation), then one DENY for api's port (time until web's next
        connection is refused), then removes everything (RSS once it shrank back)."""
        agent = self.agent
        wait(self.allowed, "the first connection")
        wait(self.in_sync, "a settled configuration")
        start = time.monotonic()
        scaled = peers or policies
        size = write_scale_config(agent, peers, policies) if scaled else 0
        before = generation(agent)["applied"]
        if peers:
            wait(lambda: self.in_sync() and generation(agent)["applied"] > before, "apply")
        elif policies:
            # Policies that select no pod of this node leave the data plane's generation as it
            # was: they are applied once ambitd lists them all.
            wait(lambda: scale_policies(agent) == policies and self.in_sync(), "apply")
        applied_s = time.monotonic() - start
        dp = agent.tunnel_pid()
        rss = (rss_kib(agent.proc.pid), rss_kib(dp))
        if self.smaps and scaled:
            print(f"  RSS KiB by mapping: ambitd {rss_by_mapping(agent.proc.pid)}, "
                  f"ambit-tunnel {rss_by_mapping(dp)}", flush=True)
        start = time.monotonic()
        agent.write_config("zz-deny.yaml", deny_port_policy("backend", "bench-deny", 9000))
        wait(lambda: not self.allowed(), "the DENY taking effect")
        enforced_s = time.monotonic() - start
        os.unlink(os.path.join(agent.config_dir, "zz-deny.yaml"))
        remove_scale_config(agent)
        wait(self.allowed, "the configuration shrinking back")
        wait(self.in_sync, "the shrunk configuration applied")
        time.sleep(1)
        after = (rss_kib(agent.proc.pid), rss_kib(agent.tunnel_pid()))
        return {"peers": peers, "policies": policies, "config_bytes": size,
                "applied_s": applied_s, "deny_enforced_s": enforced_s,
                "rss_kib": {"ambitd": rss[0], "ambit-tunnel": rss[1]},
                "rss_after_shrink_kib": {"ambitd": after[0], "ambit-tunnel": after[1]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-peers", type=int, default=100_000)
    ap.add_argument("--smaps", action="store_true",
                    help="also print each process's RSS by kind of mapping")
    ap.add_argument("--only-peers", type=int, action="append",
                    help="measure only these sizes (repeatable), e.g. --only-peers 100000")
    ap.add_argument("--policies", type=int,
                    help="write this many DENY policies at every size instead of one per ten "
                         "peers (0: what the peer pods alone cost)")
    args = ap.parse_args()
    os.environ["AMBIT_BUILD_DIR"] = os.path.abspath(args.build_dir)
    rows = []
    with Topology("cfg") as t:
        bench = ConfigBench(t, smaps=args.smaps)
        measure = bench.measure
        base = [measure(0, 0) for _ in range(3)]
        baseline = statistics.median(r["deny_enforced_s"] for r in base)
        base_rss = base[-1]["rss_kib"]
        print(f"baseline: a DENY in an empty configuration enforced in {baseline * 1000:.0f} ms "
              f"(median of 3); RSS ambitd {base_rss['ambitd']} KiB, ambit-tunnel "
              f"{base_rss['ambit-tunnel']} KiB")
        # B/pod: RSS with the configuration in force minus the empty-configuration RSS above,
        # over the peers. "after": RSS once the configuration shrank back to empty.
        print(f"{'peers':>8} {'policies':>8} {'MB':>6} {'apply s':>8} {'DENY s':>8} "
              f"{'x base':>7} {'ambitd B/pod':>13} {'tunnel B/pod':>13} {'ambitd after':>13} "
              f"{'tunnel after':>13}")
        for peers, policies in SIZES:
            if peers > args.max_peers or (args.only_peers and peers not in args.only_peers):
                continue
            if args.policies is not None:
                policies = args.policies
            r = measure(peers, policies)
            r["deny_ratio_to_baseline"] = r["deny_enforced_s"] / baseline if baseline else None
            per_pod = {k: (r["rss_kib"][k] - base_rss[k]) * 1024 / peers for k in base_rss}
            r["bytes_per_peer_pod"] = per_pod
            rows.append(r)
            print(f"{peers:>8} {policies:>8} {r['config_bytes'] / 1e6:>6.1f} "
                  f"{r['applied_s']:>8.2f} {r['deny_enforced_s']:>8.2f} "
                  f"{r['deny_ratio_to_baseline']:>7.1f} {per_pod['ambitd']:>13.0f} "
                  f"{per_pod['ambit-tunnel']:>13.0f} "
                  f"{r['rss_after_shrink_kib']['ambitd']:>9} KiB "
                  f"{r['rss_after_shrink_kib']['ambit-tunnel']:>9} KiB", flush=True)
        bench.server.kill()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline_deny_s": baseline, "baseline": base, "sizes": rows}, f, indent=2)


if __name__ == "__main__":
    main()
