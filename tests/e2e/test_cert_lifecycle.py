"""End to end: the certificate lifecycle between the data plane, ambitd and a CA.

- a lifetime below the minimum is refused at start-up, naming the flag;
- with the minimum lifetime the CA signs about twice per identity and lifetime (no storm);
- a trust domain change in mesh.yaml at run time brings certificates for the new SPIFFE IDs at
  once, the old ones leave `ambitctl certs`, and traffic between two nodes works again;
- an external CA that accepts connections and never answers holds up each identity for its own
  deadline, not for the deadlines of the identities queued before it, and retries come when the
  data plane's log says they will;
- `--ca-address 127.0.0.1:PORT` works: the CA's serving certificate names the address it listens
  on.

Real ambitd + ambit-tunnel, real BPF, real mTLS, in the topology of tests/e2e/topology.py. Every
wait is bounded; everything is torn down on failure too.
"""

import os
import re
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import Topology, free_port, run  # noqa: E402
from test_faults import (TwoNodes, certs, log_time, parse_duration,  # noqa: E402
                         wait_for)

MIN_TTL_SECONDS = 60


def identity(trust_domain, pod):
    return f"spiffe://{trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"


def signed_count(agent, ident):
    return agent.logs().count(f"signed certificate for {ident}\n")


class CertTtlTest(unittest.TestCase):
    """--cert-ttl below the minimum is refused at start-up; the minimum itself causes no storm."""

    def test_short_ttl_is_refused_naming_the_flag(self):
        with Topology("ttl") as t:
            agent = t.add_agent("node1")
            for ttl in ("30s", "500ms", "59s"):
                r = run(*agent.argv("--cert-ttl", ttl), check=False, timeout=30)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(f"--cert-ttl {ttl}", r.stderr)
                self.assertIn("below the minimum of 1m", r.stderr)
                # Refused before anything of the instance was created.
                self.assertFalse(os.path.exists(agent.run_dir), ttl)
                self.assertFalse(os.path.exists(f"/sys/fs/bpf/ambit/{agent.instance}"), ttl)

    def test_minimum_ttl_signs_about_twice_per_lifetime(self):
        with Topology("min") as t:
            a = t.add_pod("a", namespace="default", service_account="web")
            agent = t.add_agent("node1")
            t.write_pods(agent, [a])
            agent.start("--cert-ttl", f"{MIN_TTL_SECONDS}s", wait_pods=[a])
            web = identity("cluster.local", a)
            agent.wait_log(f"certificate {web} valid", 30)
            start = time.time()
            # Two lifetimes and a little: issue, then a renewal about every half lifetime.
            time.sleep(2 * MIN_TTL_SECONDS + 5)
            count = signed_count(agent, web)
            elapsed = time.time() - start
            per_ttl = count / (elapsed / MIN_TTL_SECONDS)
            print(f"\n--cert-ttl {MIN_TTL_SECONDS}s: {count} certificates signed for {web} in "
                  f"{elapsed:.0f}s ({per_ttl:.1f} per lifetime)")
            self.assertGreaterEqual(count, 4, agent.logs()[-3000:])  # it does renew
            self.assertLessEqual(count, 6, agent.logs()[-3000:])
            (cert,) = certs(agent)
            self.assertEqual(cert["state"], "valid", cert)


class TrustDomainChangeTest(unittest.TestCase):
    """mesh.yaml's trustDomain changes while both nodes run."""

    def test_new_certificates_and_traffic_recovers(self):
        n = TwoNodes("td")
        self.addCleanup(n.close)
        port = 7910
        _, out = n.echo_server(port)
        self.assertTrue(n.probe(port)["ok"])
        old = {n.n1: identity("cluster.local", n.a), n.n2: identity("cluster.local", n.b)}
        new = {n.n1: identity("example.org", n.a), n.n2: identity("example.org", n.b)}
        before = {agent: certs(agent)[0] for agent in (n.n1, n.n2)}

        t_change = time.time()
        for agent in (n.n1, n.n2):
            agent.write_config("mesh.yaml", "trustDomain: example.org\n")

        def renewed(agent):
            listed = certs(agent)
            mine = [c for c in listed if c["identity"] == new[agent] and c["state"] == "valid"]
            stale = [c for c in listed if c["identity"] == old[agent] and c["state"] == "valid"]
            return listed if mine and not stale else None

        for agent in (n.n1, n.n2):
            listed = wait_for(f"{agent.node}: a valid certificate for {new[agent]}",
                              lambda: renewed(agent), 10, 0.2)
            (cert,) = [c for c in listed if c["identity"] == new[agent]]
            self.assertNotEqual(cert["serial"], before[agent]["serial"])
            self.assertNotIn(old[agent], [c["identity"] for c in listed], listed)
        issued = time.time() - t_change
        agent_log = n.n1.logs()
        self.assertIn(f"built-in CA signs in trust domain example.org", agent_log)
        self.assertIn(f"signed certificate for {new[n.n1]}", agent_log)

        # The data plane serves the new identities: traffic recovers without a restart.
        wait_for("traffic between the nodes after the change", lambda: n.probe(port, 2)["ok"],
                 20, 0.5)
        recovered = time.time() - t_change
        accepted = n.accepted(out, port)
        for _ in range(3):
            self.assertTrue(n.probe(port)["ok"])
        self.assertEqual(n.accepted(out, port), accepted + 3)
        print(f"\ntrust domain change: new certificates on both nodes after {issued:.1f}s, "
              f"traffic after {recovered:.1f}s")


# Accepts TCP connections and never answers (nor closes them) until stopped.
class HungListener:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self):
        self.stopped.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


class ExternalCaTest(unittest.TestCase):
    """The node takes its certificates from an external CA."""

    def test_hung_ca_does_not_queue_identities_and_retries_when_logged(self):
        hung = HungListener()
        self.addCleanup(hung.close)
        with Topology("hung") as t:
            pods = [t.add_pod("a", namespace="default", service_account="web"),
                    t.add_pod("c", namespace="shop", service_account="cart"),
                    t.add_pod("d", namespace="shop", service_account="db")]
            agent = t.add_agent("node1")
            t.write_pods(agent, pods)
            # Any root will do: the TLS handshake never completes.
            roots = os.path.join(t.workdir, "roots.pem")
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=unused root", "-days", "1",
                "-keyout", os.path.join(t.workdir, "roots.key"), "-out", roots)
            t_start = time.time()
            agent.start("--ca-address", f"127.0.0.1:{hung.port}", "--ca-root-cert", roots,
                        wait_pods=pods)
            idents = [identity("cluster.local", p) for p in pods]

            def failures(ident):
                return [l for l in agent.logs().splitlines()
                        if "certificate request failed (" in l and ident in l]

            # Each identity's first request fails by its own 10 s deadline, all at about the
            # same time; one at a time, the third would fail only after 30 s.
            wait_for("every identity's first request failed",
                     lambda: all(failures(i) for i in idents), 25, 0.2)
            first = {i: log_time(failures(i)[0]) - t_start for i in idents}
            print("\nfirst failure per identity after start: " +
                  ", ".join(f"{i.rsplit('/', 1)[1]} {s:.1f}s" for i, s in first.items()))
            for i, s in first.items():
                self.assertLess(s, 16, first)
            self.assertLess(max(first.values()) - min(first.values()), 3, first)
            self.assertIn(f"external CA 127.0.0.1:{hung.port}", failures(idents[0])[0])

            # Retries: each starts at the CA when the data plane's log said it would.
            wait_for("two retries per identity", lambda: all(len(failures(i)) >= 3 for i in idents),
                     60, 0.5)
            lines = agent.logs().splitlines()
            offsets = []
            for i in idents:
                failed = [k for k, l in enumerate(lines)
                          if "certificate request failed (" in l and i in l]
                started = [k for k, l in enumerate(lines) if f"signing {i} with " in l]
                for k in failed[:2]:
                    m = re.search(r"retrying in ([0-9.hms]+)\)", lines[k])
                    self.assertIsNotNone(m, lines[k])
                    due = log_time(lines[k]) + parse_duration(m.group(1))
                    nxt = [j for j in started if j > k]
                    self.assertTrue(nxt, f"{i}: no retry after\n{lines[k]}")
                    late = log_time(lines[nxt[0]]) - due
                    offsets.append(late)
                    self.assertLess(abs(late), 1.5, f"{i}: retry {late:+.1f}s off the log:\n"
                                                    f"{lines[k]}\n{lines[nxt[0]]}")
            print(f"retries started {min(offsets):+.2f}s..{max(offsets):+.2f}s from when logged")

    def test_ip_ca_address_works(self):
        with Topology("ipca") as t:
            a = t.add_pod("a", namespace="default", service_account="web")
            c = t.add_pod("c", namespace="shop", service_account="cart", node="node2")
            ca_agent = t.add_agent("node1")
            t.write_pods(ca_agent, [a, c])
            port = free_port()
            ca_agent.start("--ca-listen", f"127.0.0.1:{port}", "--ca-tokens", self._tokens(t),
                           wait_pods=[a])
            ca_agent.wait_log("serving istio.v1.auth.IstioCertificateService", 20)
            self.assertRegex(ca_agent.logs(), r"with a certificate for [^\n]*127\.0\.0\.1 ")
            root = os.path.join(ca_agent.ca_dir, "ca", "root-cert.pem")
            token = os.path.join(t.workdir, "n2token")
            with open(token, "w") as f:
                f.write("n2secret\n")
            # openssl checks the address against the serving certificate's IP SAN.
            r = run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", root,
                    "-verify_ip", "127.0.0.1", "-verify_return_error", "-alpn", "h2",
                    check=False, input="", timeout=15, errors="replace")
            self.assertIn("Verify return code: 0 (ok)", r.stdout, r.stdout + r.stderr)
            node2 = t.add_agent("node2")
            t.write_pods(node2, [a, c])
            node2.start("--ca-address", f"127.0.0.1:{port}", "--ca-root-cert", root,
                        "--ca-token-file", token, wait_pods=[c])
            cart = identity("cluster.local", c)
            node2.wait_log(f"certificate {cart} valid", 30)
            (cert,) = certs(node2)
            self.assertEqual(cert["identity"], cart)
            self.assertEqual(cert["state"], "valid", cert)
            ca_agent.wait_log(f"issued {cart} to node node2")

    @staticmethod
    def _tokens(t):
        path = os.path.join(t.workdir, "tokens")
        with open(path, "w") as f:
            f.write("n2secret node2\n")
        return path


if __name__ == "__main__":
    unittest.main(verbosity=2)
