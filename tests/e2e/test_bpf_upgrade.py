"""End to end: upgrading ambitd across a BPF ABI version keeps pods talking.

Pins carry the ABI version (<bpffs>/ambit/<instance>/v<N>, N = AMBIT_ABI_VERSION in
bpf/abi/redirect.h). Here a running two-node mesh is given the pins a previous ambitd left: the
agent is stopped (its data plane stays, as in an upgrade), its pins are moved to where the
previous ABI kept them (the unversioned layout of version 1 right in the instance directory, or
a v1/ directory), and this build's ambitd starts over them. It must adopt the data plane and
the maps, swap its programs into the attached links, pin everything under v<N>, and remove the
old pins, while held connections and a client looping new connections see no error.

Run as root: python3 run.py test_bpf_upgrade.BpfUpgradeTest
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apps import exchange  # noqa: E402
from topology import ABI_VERSION, build_dir, run  # noqa: E402
from test_faults import HOLD, TwoNodes, signal_agent  # noqa: E402

PORT = 7900


def pinned(root):
    """Every pinned object under root, relative to it."""
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


# Maps of another definition than this build's, as a previous ABI might have pinned them:
# bpftool map create arguments after the path.
OTHER_DEFINITION = {
    "ambit_pods": ["type", "hash", "key", "8", "value", "8", "entries", "64",
                   "name", "ambit_pods"],
    "ambit_listen_v2": ["type", "sockmap", "key", "4", "value", "8", "entries", "64",
                        "name", "ambit_listen_v2"],
}


# The maps ABI 3 added for kubelet probes (docs/ARCHITECTURE.md#kubelet-probes).
PROBE_MAPS = ("ambit_node", "ambit_pod_addrs", "ambit_probes")


def make_previous_abi(agent, layout, other_definition=()):
    """Moves the agent's pins to where a previous ABI kept them; returns that root. The maps
    named in other_definition are replaced by maps of another size, which the new agent
    cannot adopt (the old programs keep the maps they hold)."""
    current = agent.pin_root
    if layout == "unversioned":
        # Version 1: maps, links/ and pods/ directly in the instance directory.
        for name in os.listdir(current):
            os.rename(os.path.join(current, name), os.path.join(agent.instance_dir, name))
        os.rmdir(current)
        old = agent.instance_dir
    else:
        old = os.path.join(agent.instance_dir, "v1")
        os.rename(current, old)
    # The previous ambit had no drop counters and recorded no kubelet probes.
    for name in ("ambit_drops",) + PROBE_MAPS:
        os.unlink(os.path.join(old, name))
    for name in other_definition:
        os.unlink(os.path.join(old, name))
        run("bpftool", "map", "create", os.path.join(old, name), *OTHER_DEFINITION[name])
    return old


def map_entries(agent):
    """map name -> entries in use, as `ambitctl bpf` counts them."""
    r = run(str(build_dir() / "agent/cli/ambitctl"), "bpf", "-o", "json", "--admin-socket",
            agent.admin_socket)
    return {m["name"]: m["entries"] for m in json.loads(r.stdout)["maps"]}


class BpfUpgradeTest(unittest.TestCase):
    HELD = 2
    LOAD_SECONDS = 20

    def setUp(self):
        self.assertGreater(ABI_VERSION, 1, "version 1 is the unversioned layout")
        self.nodes = TwoNodes("u")
        self.addCleanup(self.nodes.close)

    def upgrade(self, layout, other_definition=()):
        n = self.nodes
        _, out = n.echo_server(PORT)
        holds = []
        for _ in range(self.HELD):
            h = n.a.popen(["/usr/bin/python3", "-c", HOLD, n.b.ip4, str(PORT)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.addCleanup(h.kill)
            self.assertEqual(h.stdout.readline().strip(), "connected")
            holds.append(h)
        exchange(holds, "before")
        runs = n.load(2, PORT, self.LOAD_SECONDS, "up")
        time.sleep(1)
        # Both nodes: a's agent owns the outbound hooks (connect, sockops) that carry the
        # client, b's the sk_lookup link that steers it in.
        for agent, pod in ((n.n1, "default/a"), (n.n2, "backend/b")):
            tunnel = agent.tunnel_pid()
            self.assertIsNotNone(tunnel)
            current = pinned(agent.pin_root)
            self.assertIn("links/connect4", current)
            self.assertIn("ambit_drops", current)
            pod_links = {p for p in current if p.startswith("pods/")}
            self.assertEqual(len(pod_links), 1, current)
            signal_agent(agent, signal.SIGTERM)
            old_root = make_previous_abi(agent, layout, other_definition)
            self.assertFalse(os.path.exists(agent.pin_root))
            exchange(holds, f"down-{agent.node}")

            adopted = agent.logs().count(f"adopted pod {pod} ")
            agent.start()
            agent.wait_log(f"adopted pod {pod} ", 20, count=adopted + 1)
            agent.wait_log(f"migrated BPF pins from ABI v1 to v{ABI_VERSION}; removed the old "
                           f"pins", 20)
            migration = re.findall(r"maps adopted as they are: (\S*); maps started empty: (\S+)",
                                   agent.logs())[-1]
            adopted_maps, fresh_maps = set(migration[0].split(",")), set(migration[1].split(","))
            self.assertEqual(fresh_maps, {"ambit_drops", *PROBE_MAPS, *other_definition})
            self.assertIn("ambit_orig_dst", adopted_maps)
            self.assertFalse(adopted_maps & fresh_maps)
            # Maps started empty are filled from the agent's own state: its one pod, and the
            # pod's four listeners (plaintext and HBONE, IPv4 and IPv6).
            entries = map_entries(agent)
            self.assertEqual(entries["ambit_pods"], 1)
            self.assertEqual(entries["ambit_listen_v2"], 4)
            self.assertEqual(entries["ambit_pod_addrs"], 2)  # the pod's IPv4 and IPv6
            # This ABI's pins in place, the same set as before (the link of the pod included),
            # and nothing of the old ABI left.
            self.assertEqual(pinned(agent.pin_root), current)
            if layout == "unversioned":
                self.assertEqual(os.listdir(agent.instance_dir), [f"v{ABI_VERSION}"])
            else:
                self.assertFalse(os.path.exists(old_root))
            # The data plane was adopted, not replaced, and keeps serving.
            self.assertEqual(agent.tunnel_pid(), tunnel)
            exchange(holds, f"after-{agent.node}")
            self.assertTrue(n.probe(PORT)["ok"], f"new connection refused after {agent.node}")
            self.assertEqual(agent.ready()[0], 200, agent.ready())

        records = n.results(runs, self.LOAD_SECONDS + 30)
        self.assertGreater(len(records), 20, "the load barely ran")
        errors = [r for r in records if r["err"]]
        self.assertEqual(errors, [], f"{len(errors)} of {len(records)} connections failed")
        print(f"\n{layout}: {len(records)} connections while both agents upgraded, none failed; "
              f"slowest {max(r['t1'] - r['t0'] for r in records) * 1000:.0f} ms")
        for h in holds:
            h.stdin.close()
            h.wait(timeout=10)

    def test_upgrade_from_unversioned_pins(self):
        self.upgrade("unversioned")

    def test_upgrade_from_v1_directory(self):
        self.upgrade("v1")

    def test_upgrade_rebuilds_maps_it_cannot_adopt(self):
        self.upgrade("v1", other_definition=("ambit_pods", "ambit_listen_v2"))


if __name__ == "__main__":
    unittest.main()
