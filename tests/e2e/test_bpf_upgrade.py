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

import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import ABI_VERSION  # noqa: E402
from test_faults import HOLD, TwoNodes, signal_agent  # noqa: E402

PORT = 7900


def pinned(root):
    """Every pinned object under root, relative to it."""
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def make_previous_abi(agent, layout):
    """Moves the agent's pins to where a previous ABI kept them; returns that root."""
    current = agent.pin_root
    if layout == "unversioned":
        # Version 1: maps, links/ and pods/ directly in the instance directory.
        for name in os.listdir(current):
            os.rename(os.path.join(current, name), os.path.join(agent.instance_dir, name))
        os.rmdir(current)
        return agent.instance_dir
    old = os.path.join(agent.instance_dir, "v1")
    os.rename(current, old)
    return old


class BpfUpgradeTest(unittest.TestCase):
    HELD = 2
    LOAD_SECONDS = 20

    def setUp(self):
        self.assertGreater(ABI_VERSION, 1, "version 1 is the unversioned layout")
        self.nodes = TwoNodes("u")
        self.addCleanup(self.nodes.close)

    def exchange(self, holds, word):
        for i, h in enumerate(holds):
            h.stdin.write(f"{word}-{i}\n")
            h.stdin.flush()
        for i, h in enumerate(holds):
            self.assertEqual(h.stdout.readline().strip(), f"{word}-{i}",
                             f"held connection {i} broke at {word!r}")

    def upgrade(self, layout):
        n = self.nodes
        _, out = n.echo_server(PORT)
        holds = []
        for _ in range(self.HELD):
            h = n.a.popen(["/usr/bin/python3", "-c", HOLD, n.b.ip4, str(PORT)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.addCleanup(h.kill)
            self.assertEqual(h.stdout.readline().strip(), "connected")
            holds.append(h)
        self.exchange(holds, "before")
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
            old_root = make_previous_abi(agent, layout)
            self.assertFalse(os.path.exists(agent.pin_root))
            # The previous ambit had no drop counters.
            os.unlink(os.path.join(old_root, "ambit_drops"))
            self.exchange(holds, f"down-{agent.node}")

            adopted = agent.logs().count(f"adopted pod {pod} ")
            agent.start()
            agent.wait_log(f"adopted pod {pod} ", 20, count=adopted + 1)
            agent.wait_log(f"migrated BPF pins from ABI v1 to v{ABI_VERSION}; removed the old "
                           f"pins", 20)
            self.assertIn("maps started empty: ambit_drops", agent.logs())
            self.assertIn("ambit_orig_dst", agent.logs().split("maps adopted as they are: ")[-1]
                          .split(";")[0])
            # This ABI's pins in place, the same set as before (the link of the pod included),
            # and nothing of the old ABI left.
            self.assertEqual(pinned(agent.pin_root), current)
            if layout == "unversioned":
                self.assertEqual(os.listdir(agent.instance_dir), [f"v{ABI_VERSION}"])
            else:
                self.assertFalse(os.path.exists(old_root))
            # The data plane was adopted, not replaced, and keeps serving.
            self.assertEqual(agent.tunnel_pid(), tunnel)
            self.exchange(holds, f"after-{agent.node}")
            self.assertTrue(n.probe(PORT)["ok"], f"new connection refused after {agent.node}")
            self.assertEqual(agent.ready()[0], 200, agent.ready())

        records = n.results(runs, self.LOAD_SECONDS + 30)
        self.assertGreater(len(records), 20, "the load barely ran")
        errors = [r for r in records if r["err"]]
        self.assertEqual(errors, [], f"{len(errors)} of {len(records)} connections failed")
        for h in holds:
            h.stdin.close()
            h.wait(timeout=10)

    def test_upgrade_from_unversioned_pins(self):
        self.upgrade("unversioned")

    def test_upgrade_from_v1_directory(self):
        self.upgrade("v1")


if __name__ == "__main__":
    unittest.main()
