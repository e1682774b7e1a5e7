"""End to end: the eBPF path steers enrolled pods' TCP through ambit (issue: foundation).

Real ambitd and ambit-tunnel, real BPF programs attached to a test-owned cgroup, real network
namespaces on a bridge, real sockets. Run as root: python3 -m unittest -v test_redirect
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import CLIENT, SERVER, Topology, build_dir, run, wait_listening  # noqa: E402

# Echoes each line back, for connections that stay open across restarts.
LINE_ECHO = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    f = c.makefile("rwb", buffering=0)
    for line in f:
        f.write(b"echo " + line)
    c.close()
"""

# Connects, then exchanges one line per line of stdin; prints each reply.
LINE_CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=20)
print("connected", s.getsockname()[1], flush=True)
f = s.makefile("rwb", buffering=0)
for line in sys.stdin:
    f.write(line.encode())
    print(f.readline().decode().strip(), flush=True)
"""

# Tries to connect with a short timeout; prints the outcome as JSON.
PROBE = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]) if len(sys.argv) > 3 else 2)
try:
    s.connect((host, port))
    local = s.getsockname()
    s.sendall(b"probe")
    s.shutdown(socket.SHUT_WR)
    data = s.recv(100)
    print(json.dumps({"ok": True, "local_port": local[1], "reply": data.decode()}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__}))
"""


def start_server(pod, addr, port, count=1, code=SERVER):
    proc = pod.popen(["/usr/bin/python3", "-c", code, addr, str(port), str(count)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_listening(proc)
    return proc


def client(pod, host, port, payload="hello", in_cgroup=True):
    r = pod.python(CLIENT, host, port, payload, in_cgroup=in_cgroup)
    if r.returncode != 0:
        raise AssertionError(f"client in {pod.name} -> {host}:{port} failed: {r.stderr}")
    return json.loads(r.stdout)


def server_result(proc):
    out, err = proc.communicate(timeout=10)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise AssertionError(f"server saw no connection: {err}")
    return json.loads(lines[-1])


def bracket(ip):
    return f"[{ip}]" if ":" in ip else ip


def cgroup_programs(cgroup):
    out = run("bpftool", "-j", "cgroup", "show", cgroup).stdout
    return json.loads(out) if out.strip() else []


class RedirectTest(unittest.TestCase):
    """Pods a, b, d enrolled on node1; c is a pod network the agent does not manage."""

    @classmethod
    def setUpClass(cls):
        cls.topo = Topology("r")
        cls.topo.__enter__()
        t = cls.topo
        cls.a, cls.b, cls.c, cls.d = (t.add_pod(n) for n in "abcd")
        cls.agent = t.add_agent()
        t.write_pods(cls.agent, [cls.a, cls.b, cls.d])
        cls.agent.start(wait_pods=[cls.a, cls.b, cls.d])
        print(f"\n{[l for l in cls.agent.logs().splitlines() if 'verified_insns' in l]}")

    @classmethod
    def tearDownClass(cls):
        cls.topo.close()

    def _outbound(self, dst_ip):
        srv = start_server(self.b, "::" if ":" in dst_ip else "0.0.0.0", 8080)
        before = self.agent.logs().count("outbound pod=default/a ")
        reply = client(self.a, dst_ip, 8080, "ping")
        seen = server_result(srv)
        # The application sees what it dialled, and the bytes and the half-close made it through.
        self.assertEqual(reply["peer"], dst_ip)
        self.assertEqual(reply["peer_port"], 8080)
        self.assertEqual(reply["reply"], "echo:ping")
        # The server sees the real client address, delivered by ambit on b's side.
        src_ip = self.a.ip6 if ":" in dst_ip else self.a.ip4
        self.assertEqual(seen["peer"].replace("::ffff:", ""), src_ip)
        self.assertEqual(seen["local"].replace("::ffff:", ""), dst_ip)
        # ambit recorded the original destination: one outbound log line names it. b is in the
        # mesh, so the connection went over mTLS and arrived with a's identity.
        self.agent.wait_log(f"outbound pod=default/a ", count=before + 1)
        self.agent.wait_log(f"orig_dst={bracket(dst_ip)}:8080 mode=hbone")
        self.agent.wait_log(f"inbound pod=default/b src={src_ip} dst={bracket(dst_ip)}:8080 "
                            f"mode=mtls peer=spiffe://cluster.local/ns/default/sa/default")

    def test_outbound_ipv4_reaches_server_through_ambit(self):
        self._outbound(self.b.ip4)

    def test_outbound_ipv6_reaches_server_through_ambit(self):
        self._outbound(self.b.ip6)

    def _inbound(self, dst_ip):
        srv = start_server(self.b, "::" if ":" in dst_ip else "0.0.0.0", 9090)
        r = self.c.python(PROBE, dst_ip, 9090, in_cgroup=False)
        probe = json.loads(r.stdout)
        self.assertTrue(probe["ok"], probe)
        self.assertEqual(probe["reply"], "echo:probe")
        server_result(srv)
        # The plaintext-inbound listener got it: its getsockname() was the original destination
        # and its getpeername() the real client, port included.
        src_ip = self.c.ip6 if ":" in dst_ip else self.c.ip4
        self.agent.wait_log(f"inbound pod=default/b src={bracket(src_ip)}:{probe['local_port']} "
                            f"dst={bracket(dst_ip)}:9090 mode=plaintext")

    def test_inbound_ipv4_lands_on_plaintext_listener(self):
        self._inbound(self.b.ip4)

    def test_inbound_ipv6_lands_on_plaintext_listener(self):
        self._inbound(self.b.ip6)

    def test_inbound_15008_lands_on_hbone_listener(self):
        for dst in (self.b.ip4, self.b.ip6):
            r = self.c.python(PROBE, dst, 15008, in_cgroup=False)
            probe = json.loads(r.stdout)
            # The probe speaks plaintext to the TLS listener: the handshake fails, and the log
            # shows which listener answered.
            src = bracket(self.c.ip6 if ':' in dst else self.c.ip4)
            self.agent.wait_log(f"hbone pod=default/b src={src}:")
            self.agent.wait_log(f"dst={bracket(dst)}:15008: session closed: TLS handshake")
            # All the plaintext peer ever gets back is a TLS alert record.
            self.assertTrue(not probe["ok"] or probe["reply"].startswith("\x15\x03"), probe)

    def drops(self):
        """reason -> count, from `ambitctl bpf -o json` and from /metrics, which must agree."""
        r = run(str(build_dir() / "agent/cli/ambitctl"), "bpf", "-o", "json", "--admin-socket",
                self.agent.admin_socket)
        view = json.loads(r.stdout)
        self.assertIsNone(view["dropsError"])
        counts = {d["reason"]: d["count"] for d in view["drops"]}
        for d in view["drops"]:
            self.assertTrue(d["meaning"], d)
        metrics = {}
        for m in re.finditer(r'^ambit_bpf_drops_total\{reason="([a-z_]+)"\} (\d+)$',
                             self.agent.metrics(), re.M):
            metrics[m.group(1)] = int(m.group(2))
        self.assertEqual(set(metrics), set(counts))
        for reason, n in metrics.items():
            # Read a moment apart; a counter only grows.
            self.assertGreaterEqual(n, counts[reason], reason)
        return counts

    def test_bpf_program_names_are_whole(self):
        # The kernel keeps 15 characters of a program name ("ambit_getpeerna"); ambitctl shows
        # the function's name as bpf/progs has it.
        r = run(str(build_dir() / "agent/cli/ambitctl"), "bpf", "-o", "json", "--admin-socket",
                self.agent.admin_socket)
        names = {p["name"] for p in json.loads(r.stdout)["programs"]}
        self.assertEqual(names, {"ambit_connect4", "ambit_connect6", "ambit_sockops",
                                 "ambit_getpeername4", "ambit_getpeername6", "ambit_sk_lookup",
                                 "ambit_wire_ingress", "ambit_wire_egress"})

    def test_missing_listener_drops_syn(self):
        slot = int(re.search(r"enrolled pod default/d .* slot=(\d+)", self.agent.logs()).group(1))
        pin = f"{self.agent.pin_root}/ambit_listen_v2"
        self.assertEqual(set(self.drops()), {"connect_no_storage", "orig_dst_update_failed",
                                             "no_listener", "sk_assign_failed",
                                             "probe_update_failed"})
        for ip in (self.d.ip4, self.d.ip6):
            before = self.drops()
            srv = start_server(self.d, "::" if ":" in ip else "0.0.0.0", 7070)
            # AMBIT_LISTENER_KEY(slot, family index, AMBIT_LISTENER_PLAIN)
            family_index = 1 if ":" in ip else 0
            key = ((slot * 2 + family_index) * 2).to_bytes(4, "little")
            run("bpftool", "map", "delete", "pinned", pin, "key", *[str(b) for b in key],
                check=False)
            r = self.c.python(PROBE, ip, 7070, 1.5, in_cgroup=False)
            probe = json.loads(r.stdout)
            # sk_lookup drops the SYN; the kernel then answers it with a reset (or, for a SYN it
            # never saw, the client times out). Either way nothing reaches the application.
            self.assertFalse(probe["ok"], f"connection to {ip} got through without a listener")
            self.assertIn(probe["error"], ("ConnectionRefusedError", "TimeoutError"))
            srv.kill()
            out, _ = srv.communicate(timeout=5)
            self.assertNotIn("{", out, "the application saw a connection")
            # The drop is counted, under its own reason and no other.
            after = self.drops()
            self.assertGreaterEqual(after["no_listener"], before["no_listener"] + 1, ip)
            for reason in ("connect_no_storage", "orig_dst_update_failed", "sk_assign_failed",
                           "probe_update_failed"):
                self.assertEqual(after[reason], before[reason], f"{reason} with {ip}")

    def test_processes_outside_enrolled_pods_are_not_redirected(self):
        # In a's netns but outside the pod's cgroup: the programs never run for it.
        srv = start_server(self.b, "0.0.0.0", 8181)
        before = self.agent.logs().count("outbound pod=default/a ")
        r = self.a.python(PROBE, self.b.ip4, 8181, in_cgroup=False)
        probe = json.loads(r.stdout)
        self.assertTrue(probe["ok"], probe)
        server_result(srv)
        # b's inbound side saw the client's own source port: nothing in between on a's side.
        self.agent.wait_log(f"inbound pod=default/b src={self.a.ip4}:{probe['local_port']} ")
        self.assertEqual(self.agent.logs().count("outbound pod=default/a "), before)

        # In the test cgroup but in a namespace that is not enrolled: not redirected either.
        srv = start_server(self.b, "0.0.0.0", 8182)
        r = self.c.python(PROBE, self.b.ip4, 8182, in_cgroup=True)
        probe = json.loads(r.stdout)
        self.assertTrue(probe["ok"], probe)
        server_result(srv)
        self.agent.wait_log(f"inbound pod=default/b src={self.c.ip4}:{probe['local_port']} ")

    def test_ambit_own_sockets_are_not_redirected(self):
        # One client connection yields exactly one outbound record: the tunnel's own connection
        # to the destination (made inside a's netns) was not redirected back into the tunnel.
        srv = start_server(self.b, "0.0.0.0", 8282)
        before = self.agent.logs().count("outbound pod=default/a ")
        client(self.a, self.b.ip4, 8282)
        server_result(srv)
        time.sleep(0.3)
        self.assertEqual(self.agent.logs().count("outbound pod=default/a "), before + 1)

    def test_loopback_in_pod_is_not_redirected(self):
        srv = start_server(self.a, "127.0.0.1", 8383)
        before = self.agent.logs().count("outbound pod=default/a ")
        reply = client(self.a, "127.0.0.1", 8383)
        server_result(srv)
        self.assertEqual(reply["reply"], "echo:hello")
        self.assertEqual(self.agent.logs().count("outbound pod=default/a "), before)


class RestartTest(unittest.TestCase):
    def setUp(self):
        self.topo = Topology("s")
        self.topo.__enter__()
        self.a, self.b = self.topo.add_pod("a"), self.topo.add_pod("b")
        self.agent = self.topo.add_agent()
        self.topo.write_pods(self.agent, [self.a, self.b])
        self.agent.start(wait_pods=[self.a, self.b])

    def tearDown(self):
        self.topo.close()

    def test_agent_restart_keeps_connections_and_does_not_double_attach(self):
        srv = start_server(self.b, "0.0.0.0", 6060, code=LINE_ECHO)
        cli = self.a.popen(["/usr/bin/python3", "-c", LINE_CLIENT, self.b.ip4, "6060"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.assertIn("connected", cli.stdout.readline())
        cli.stdin.write("one\n")
        cli.stdin.flush()
        self.assertEqual(cli.stdout.readline().strip(), "echo one")
        programs_before = cgroup_programs(self.agent.cgroup)
        self.assertEqual(len(programs_before), 5, programs_before)
        tunnel = self.agent.tunnel_pid()

        self.agent.stop()
        self.agent.start()
        self.agent.wait_log("re-opened pinned redirect programs")
        self.agent.wait_log("adopted pod default/a")
        self.agent.wait_log("adopted pod default/b")

        # The same connection still works, the data plane was not replaced, and every hook is
        # attached exactly once.
        cli.stdin.write("two\n")
        cli.stdin.flush()
        self.assertEqual(cli.stdout.readline().strip(), "echo two")
        self.assertEqual(self.agent.tunnel_pid(), tunnel)
        programs_after = cgroup_programs(self.agent.cgroup)
        self.assertEqual(len(programs_after), 5, programs_after)
        # New connections still go through ambit.
        srv2 = start_server(self.b, "0.0.0.0", 6061)
        client(self.a, self.b.ip4, 6061)
        server_result(srv2)
        cli.stdin.close()
        srv.kill()

    def test_tunnel_restart_serves_connection_attempted_in_the_gap(self):
        srv = start_server(self.b, "0.0.0.0", 6262)
        tunnel = self.agent.tunnel_pid()
        self.assertIsNotNone(tunnel)
        self.assertEqual(self.agent.tunnel_pid(), tunnel)
        os.kill(tunnel, 9)
        # Attempted while no data plane runs: the kernel queues it on ambit's listener, which
        # ambitd kept open, and the restarted data plane serves it.
        reply = client(self.a, self.b.ip4, 6262, "in-the-gap")
        self.assertEqual(reply["reply"], "echo:in-the-gap")
        server_result(srv)
        self.agent.wait_log("killed by signal 9; restart #1")
        new = self.agent.tunnel_pid()
        self.assertIsNotNone(new)
        self.assertNotEqual(new, tunnel)


class ConfigTest(unittest.TestCase):
    def setUp(self):
        self.topo = Topology("c")
        self.topo.__enter__()
        self.a, self.b = self.topo.add_pod("a"), self.topo.add_pod("b")
        self.agent = self.topo.add_agent()
        self.topo.write_pods(self.agent, [self.a, self.b])
        self.agent.start(wait_pods=[self.a, self.b])

    def tearDown(self):
        self.topo.close()

    def test_malformed_config_keeps_previous_pods(self):
        # A file that is not YAML at all.
        self.agent.write_config("broken.yaml", "kind: Pod\nmetadata: [unclosed\n")
        self.agent.wait_log("broken.yaml")
        # A pod whose IP becomes invalid: reported with file, object and field; the last good
        # version stays enrolled.
        bad = self.b.yaml().replace(f"ip: {self.b.ip4}", "ip: 198.18.999.1")
        self.agent.write_config("pods.yaml", self.a.yaml() + "---\n" + bad)
        # The error itself: "Pod default/b" alone is in the first load's "applied" line too.
        self.agent.wait_log("Pod default/b: field status.podIPs[0].ip")
        log = self.agent.logs()
        self.assertRegex(log, r"pods\.yaml.*Pod default/b.*status\.podIPs\[0\]\.ip")
        self.assertNotIn("removed pod", log)
        srv = start_server(self.b, "0.0.0.0", 5050)
        before = log.count("outbound pod=default/a ")
        client(self.a, self.b.ip4, 5050)
        server_result(srv)
        self.assertEqual(self.agent.logs().count("outbound pod=default/a "), before + 1)

    def test_pod_added_and_removed_without_restart(self):
        c = self.topo.add_pod("c")
        self.topo.write_pods(self.agent, [self.a, self.b, c])
        self.agent.wait_log("enrolled pod default/c ")
        self.topo.write_pods(self.agent, [self.a, self.b])
        self.agent.wait_log("removed pod default/c")
        # With c gone, its traffic is no longer redirected.
        srv = start_server(self.b, "0.0.0.0", 5151)
        before = self.agent.logs().count("outbound pod=default/c ")
        client(c, self.b.ip4, 5151)
        server_result(srv)
        self.assertEqual(self.agent.logs().count("outbound pod=default/c "), before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
