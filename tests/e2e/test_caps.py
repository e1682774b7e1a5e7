"""End to end: the capabilities each process needs, and the run-time drop of the rest
(docs/ARCHITECTURE.md#capabilities).

- GrantedSetTest: ambitd started as a container runtime starts it with "drop ALL, add
  NET_ADMIN, SYS_ADMIN" (setpriv: no inheritable or ambient capabilities, that bounding set)
  enrolls pods, spawns its data plane, carries traffic over mTLS and enforces a DENY policy; its
  /proc/<pid>/status and the data plane's show the reduced sets and no_new_privs.
- BareMetalDropTest: ambitd started with all of root's capabilities keeps only its set once set-up
  is done (CapEff, CapPrm, CapBnd), and its data plane only its own.
- OneFewerTest: with any one capability of the set missing, ambitd and ambit-tunnel refuse to
  start and name the capability.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import (CLIENT, SERVER, Topology, build_dir, deny_port_policy, run,  # noqa: E402
                      wait_listening)

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
# CAP_BPF is not among them: CAP_SYS_ADMIN, needed for setns, also allows all that CAP_BPF does.
AGENT_SET = ("net_admin", "sys_admin")
DATAPLANE_SET = ("net_admin", "sys_admin")


def mask(*caps):
    return sum(1 << c for c in caps)


AGENT_MASK = mask(CAP_NET_ADMIN, CAP_SYS_ADMIN)
DATAPLANE_MASK = mask(CAP_NET_ADMIN, CAP_SYS_ADMIN)


def granted(caps):
    """setpriv as a container runtime applies `drop: [ALL], add: caps` to a root process."""
    bounding = ",".join(["-all"] + [f"+{c}" for c in caps])
    return ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={bounding}",
            "--"]


def status(pid):
    """The capability lines of /proc/<pid>/status as numbers."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[key] = int(value.strip(), 16)
            elif key == "NoNewPrivs":
                out[key] = int(value.strip())
    return out


def start_wrapped(agent, wrapper, *extra):
    agent.log = open(agent.log_path, "a")
    agent.proc = subprocess.Popen(wrapper + agent.argv(*extra), stdout=agent.log,
                                  stderr=subprocess.STDOUT)
    agent.topo.procs.append(agent.proc)
    return agent.proc


def wait_tunnel(agent, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = agent.tunnel_pid()
        if pid:
            return pid
        time.sleep(0.1)
    raise AssertionError("no data plane process")


class GrantedSetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("cgs")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a", service_account="web")
            cls.c = t.add_pod("c", service_account="client")
            cls.agent = t.add_agent()
            t.write_pods(cls.agent, [cls.a, cls.c])
            cls.agent.write_config("deny.yaml", deny_port_policy("default", "no-9099", 9099))
            start_wrapped(cls.agent, granted(AGENT_SET))
            cls.agent.wait_log("enrolled pod default/a ")
            cls.agent.wait_log("enrolled pod default/c ")
            cls.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/web valid")
            cls.agent.wait_log("certificate spiffe://cluster.local/ns/default/sa/client valid")
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_traffic_is_mtls_and_policy_is_enforced(self):
        srv = self.a.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "9098", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        r = self.c.python(CLIENT, self.a.ip4, 9098, "ping")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["reply"], "echo:ping")
        seen = json.loads(srv.communicate(timeout=10)[0].strip().splitlines()[-1])
        self.assertEqual(seen["peer"], self.c.ip4)  # IP_TRANSPARENT delivery worked
        self.agent.wait_log(f"inbound pod=default/a src={self.c.ip4} dst={self.a.ip4}:9098 "
                            "mode=mtls peer=spiffe://cluster.local/ns/default/sa/client")
        # The DENY policy on 9099 holds: the connection never reaches the application.
        srv = self.a.popen(["/usr/bin/python3", "-c", SERVER, "0.0.0.0", "9099", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_listening(srv)
        r = self.c.python(CLIENT, self.a.ip4, 9099, "ping")
        try:
            denied = r.returncode != 0 or json.loads(r.stdout)["reply"] == ""
            self.assertTrue(denied, f"connection to the denied port got through: {r.stdout}")
            self.agent.wait_log("default/no-9099")
            line = [l for l in self.agent.logs().splitlines() if "default/no-9099" in l][-1]
            self.assertIn("denied", line)
        finally:
            srv.kill()

    def test_proc_status_shows_the_reduced_sets(self):
        s = status(self.agent.proc.pid)
        self.assertEqual(s["CapEff"], AGENT_MASK, hex(s["CapEff"]))
        self.assertEqual(s["CapPrm"], AGENT_MASK, hex(s["CapPrm"]))
        self.assertEqual(s["CapBnd"], AGENT_MASK, hex(s["CapBnd"]))
        self.assertEqual(s["CapInh"], 0)
        self.assertEqual(s["CapAmb"], 0)
        self.assertEqual(s["NoNewPrivs"], 1)
        # Every thread, not only the main one.
        for tid in os.listdir(f"/proc/{self.agent.proc.pid}/task"):
            t = status(f"{self.agent.proc.pid}/task/{tid}")
            self.assertEqual(t["CapEff"], AGENT_MASK, f"thread {tid}: {hex(t['CapEff'])}")
        tunnel = status(wait_tunnel(self.agent))
        self.assertEqual(tunnel["CapEff"], DATAPLANE_MASK, hex(tunnel["CapEff"]))
        self.assertEqual(tunnel["CapPrm"], DATAPLANE_MASK, hex(tunnel["CapPrm"]))
        self.assertEqual(tunnel["NoNewPrivs"], 1)
        self.assertIn("capabilities after set-up: CAP_NET_ADMIN,CAP_SYS_ADMIN (dropped none;",
                      self.agent.logs())


class BareMetalDropTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("cbm")
        cls.topo.__enter__()
        try:
            t = cls.topo
            cls.a = t.add_pod("a")
            cls.agent = t.add_agent()
            t.write_pods(cls.agent, [cls.a])
            cls.agent.start(wait_pods=[cls.a])
        except BaseException:
            cls.topo.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_root_keeps_only_its_set_after_set_up(self):
        before = status("self")
        self.assertNotEqual(before["CapEff"] & ~AGENT_MASK, 0, "the test runs with more")
        s = status(self.agent.proc.pid)
        self.assertEqual(s["CapEff"], AGENT_MASK, hex(s["CapEff"]))
        self.assertEqual(s["CapPrm"], AGENT_MASK, hex(s["CapPrm"]))
        self.assertEqual(s["CapBnd"], AGENT_MASK, hex(s["CapBnd"]))
        self.assertEqual(s["NoNewPrivs"], 1)
        tunnel = status(wait_tunnel(self.agent))
        self.assertEqual(tunnel["CapEff"], DATAPLANE_MASK, hex(tunnel["CapEff"]))
        self.assertEqual(tunnel["CapPrm"], DATAPLANE_MASK, hex(tunnel["CapPrm"]))
        self.assertIn("(dropped CAP_CHOWN,", self.agent.logs())
        self.assertIn(",CAP_BPF", self.agent.logs())  # granted to root, not needed: dropped


class OneFewerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("c1f")
        cls.topo.__enter__()
        cls.agent = cls.topo.add_agent()

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def test_ambitd_names_the_missing_capability(self):
        for missing in AGENT_SET:
            with self.subTest(missing=missing):
                proc = start_wrapped(self.agent,
                                     granted([c for c in AGENT_SET if c != missing]))
                code = proc.wait(timeout=30)
                self.agent.stop()
                self.assertEqual(code, 1)
                line = [l for l in self.agent.logs().splitlines() if "not starting" in l][-1]
                self.assertIn(f"ambitd lacks CAP_{missing.upper()} (", line)
                self.assertFalse(os.path.exists(self.agent.pin_root))

    def test_data_plane_names_the_missing_capability(self):
        tunnel = str(build_dir() / "agent/main/ambit-tunnel")
        sock = os.path.join(self.topo.workdir, "lone-dataplane.sock")
        for missing in DATAPLANE_SET:
            with self.subTest(missing=missing):
                r = run(*granted([c for c in DATAPLANE_SET if c != missing]), tunnel,
                        "--control-socket", sock, check=False, timeout=30)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn(f"ambit-tunnel lacks CAP_{missing.upper()} (", r.stderr)
        # With the whole set it starts (and keeps exactly that set).
        proc = subprocess.Popen(granted(DATAPLANE_SET) + [tunnel, "--control-socket", sock],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.topo.procs.append(proc)
        try:
            deadline = time.time() + 10
            while not os.path.exists(sock) and time.time() < deadline:
                time.sleep(0.05)
            self.assertTrue(os.path.exists(sock), "ambit-tunnel did not listen")
            s = status(proc.pid)
            self.assertEqual(s["CapEff"], DATAPLANE_MASK, hex(s["CapEff"]))
            self.assertEqual(s["NoNewPrivs"], 1)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    unittest.main()
