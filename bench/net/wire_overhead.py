#!/usr/bin/env python3
"""Cost of ambit's wire accounting (ambitctl verify mtls) on the single-stream bulk workload.

The T path of bench/net (client in enrolled pod a on node1, eBPF redirect, ambit-tunnel, HBONE
to node2, ambit-tunnel, server in enrolled pod b), one iperf3 stream, with the accounting tc
programs attached (as ambitd attaches them: both pods' eth0, ingress and egress) and with them
removed, interleaved in the same run (the order alternates each repetition). Removing them is
`tc filter del` of ambit's filter (handle 0xa3b1, priority 1); putting the same programs back is
`tc filter replace ... object-pinned` of each program, pinned for the run in a bpffs instance
mounted on a temporary directory (unmounted at the end). Prints the medians, min-max, the ratio and met/missed against the issue's goal
(under 2% throughput); writes bench/results/wire_overhead.json.

Usage (root, after a build): nice /usr/bin/python3 bench/net/wire_overhead.py [--reps 3]
[--seconds 5] [--build-dir build]
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))
from bench_json import write_result  # noqa: E402
IPERF_PORT = 5201
GOAL = 0.02  # at most 2% less throughput with the accounting attached
HANDLE, PRIO = "0xa3b1", "1"


def tc(pod, *args, check=True):
    return subprocess.run(["ip", "netns", "exec", pod.netns, "tc"] + list(args), check=check,
                          capture_output=True, text=True)


class Accounting:
    """ambit's wire filters on one pod's eth0: off() removes them, on() puts the same programs
    back."""

    def __init__(self, pod, pin_dir):
        self.pod, self.pins, self.ids = pod, {}, []
        for hook in ("ingress", "egress"):
            out = tc(pod, "filter", "show", "dev", "eth0", hook).stdout
            m = re.search(rf"handle {HANDLE} \S+ .* id (\d+)", out)
            if not m:
                raise RuntimeError(f"no ambit wire filter on {pod.name} eth0 {hook}:\n{out}")
            pin = os.path.join(pin_dir, f"{pod.name}-{hook}")
            subprocess.run(["bpftool", "prog", "pin", "id", m.group(1), pin], check=True)
            self.pins[hook] = pin
            self.ids.append(int(m.group(1)))

    def off(self):
        for hook in self.pins:
            if HANDLE in tc(self.pod, "filter", "show", "dev", "eth0", hook).stdout:
                tc(self.pod, "filter", "del", "dev", "eth0", hook, "protocol", "all", "pref",
                   PRIO, "handle", HANDLE, "bpf")

    def on(self):
        for hook, pin in self.pins.items():
            tc(self.pod, "filter", "replace", "dev", "eth0", hook, "protocol", "all", "pref",
               PRIO, "handle", HANDLE, "bpf", "direct-action", "object-pinned", pin)

    def attached(self):
        return all(HANDLE in tc(self.pod, "filter", "show", "dev", "eth0", h).stdout
                   for h in self.pins)


def iperf(a, b, seconds):
    r = a.run(["iperf3", "-c", b.ip4, "-p", str(IPERF_PORT), "-t", str(seconds), "-P", "1",
               "-J"], timeout=seconds + 30)
    doc = json.loads(r.stdout)
    if "error" in doc:
        raise RuntimeError(f"iperf3: {doc['error']}")
    end = doc["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"]["bytes"]


def prog_stats(ids):
    """(run_time_ns, run_cnt) summed over the programs (kernel.bpf_stats_enabled on)."""
    ns = cnt = 0
    for i in ids:
        doc = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)],
                                        check=True, capture_output=True, text=True).stdout)
        ns += doc.get("run_time_ns", 0)
        cnt += doc.get("run_cnt", 0)
    return ns, cnt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "wire_overhead.json"))
    args = ap.parse_args()
    os.environ["AMBIT_BUILD_DIR"] = str(pathlib.Path(args.build_dir).resolve())
    from topology import Topology, require_root  # noqa: E402 (reads AMBIT_BUILD_DIR)

    require_root()
    if not shutil.which("iperf3"):
        sys.stderr.write("wire_overhead: iperf3 missing (bash scripts/setup.sh)\n")
        return 1
    samples = {"with": [], "without": []}
    prog = {"ns": 0, "runs": 0, "bytes": 0}  # the accounting programs' run time, "with" runs
    with Topology("wo") as t:
        a = t.add_pod("a", namespace="default", service_account="client", node="node1")
        b = t.add_pod("b", namespace="backend", service_account="server", node="node2")
        n1, n2 = t.add_agent("node1"), t.add_agent("node2")
        for agent in (n1, n2):
            agent.write_config("pods.yaml", a.yaml() + "---\n" + b.yaml())
        n1.start(wait_pods=[a])
        n2.start(wait_pods=[b])
        n1.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid", 30)
        n2.wait_log("certificate spiffe://cluster.local/ns/backend/sa/server valid", 30)
        b.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        # A bpffs instance of the run's own, outside /sys: `ip netns exec` remounts /sys, so tc
        # inside the pod would not see pins under /sys/fs/bpf.
        pin_dir = tempfile.mkdtemp(prefix="ambit-bench-wire-")
        subprocess.run(["mount", "-t", "bpf", "bpf", pin_dir], check=True)
        try:
            acct = [Accounting(a, pin_dir), Accounting(b, pin_dir)]
            ids = [i for x in acct for i in x.ids]
            iperf(a, b, 1)  # warm-up: HBONE pool, page cache
            # The programs' own run time, independent of how loaded the shared cores are: the
            # kernel counts it only while kernel.bpf_stats_enabled is 1 (restored after).
            with open("/proc/sys/kernel/bpf_stats_enabled") as f:
                stats_before = f.read().strip()
            for rep in range(args.reps):
                order = ["with", "without"] if rep % 2 == 0 else ["without", "with"]
                for variant in order:
                    for x in acct:
                        x.on() if variant == "with" else x.off()
                    assert all(x.attached() == (variant == "with") for x in acct)
                    if variant == "with":
                        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"],
                                       check=True)
                        ns0, cnt0 = prog_stats(ids)
                    try:
                        gbps, sent = iperf(a, b, args.seconds)
                    finally:
                        if variant == "with":
                            ns1, cnt1 = prog_stats(ids)
                            subprocess.run(["sysctl", "-qw",
                                            f"kernel.bpf_stats_enabled={stats_before}"])
                    if variant == "with":
                        prog["ns"] += ns1 - ns0
                        prog["runs"] += cnt1 - cnt0
                        prog["bytes"] += sent
                    samples[variant].append(gbps)
                    sys.stderr.write(f"[wire_overhead] rep {rep + 1}/{args.reps} {variant}: "
                                     f"{gbps:.2f} Gbit/s\n")
            for x in acct:
                x.on()  # as ambitd left them, for its own clean-up
        finally:
            subprocess.run(["umount", pin_dir], check=False)
            os.rmdir(pin_dir)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["with"] / med["without"]
    cost = 1 - ratio
    print(f"single-stream bulk through ambit (T), {args.reps} repetitions x {args.seconds} s, "
          "Gbit/s, median (min-max):")
    for k in ("without", "with"):
        print(f"  accounting {'on ' if k == 'with' else 'off'}  {med[k]:6.2f} "
              f"({min(samples[k]):.2f}-{max(samples[k]):.2f})")
    print(f"  ratio on/off {ratio:.3f}: {cost * 100:+.1f}% throughput cost; goal under "
          f"{GOAL * 100:.0f}%: {'met' if cost < GOAL else 'missed'}")
    per_run = prog["ns"] / max(prog["runs"], 1)
    ms_per_gb = prog["ns"] / 1e6 / max(prog["bytes"] / 1e9, 1e-9)
    print(f"  the programs themselves: {prog['runs']} runs (both pods, both directions), "
          f"{per_run:.0f} ns per run, {ms_per_gb:.1f} ms of CPU per GB carried")
    result = {"samples_gbps": samples, "median_gbps": med, "ratio": ratio, "cost": cost,
              "program_ns_per_run": per_run, "program_ms_per_gb": ms_per_gb,
              "goal": GOAL, "met": cost < GOAL, "reps": args.reps, "seconds": args.seconds,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
