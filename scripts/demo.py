"""make demo: two simulated nodes whose pods' TCP is steered by eBPF into ambit, carried over
mutual TLS (HBONE) between the nodes, and allowed or refused by Istio policies, step by step.

Everything runs in network namespaces this script creates (198.18.0.0/15, 2001:2::/48) and is
removed at the end, also on failure, Ctrl-C or SIGTERM. Every step checks that it behaved as its
caption says; the demo exits non-zero if any did not.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from topology import Topology, build_dir, run, strict_peer_authentication  # noqa: E402
import svid  # noqa: E402

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""

ALLOW_ONLY_WEB = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-callers
  namespace: backend
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/frontend/sa/web"]
    to:
    - operation:
        ports: ["8080"]
"""

STRICT_BACKEND = strict_peer_authentication("backend")


FAILURES = []
MARKER = "ambit-demo-plaintext-marker-5e1f"


def step(caption):
    print(f"\n{BOLD}==> {caption}{RESET}", flush=True)


def expect(ok, what):
    """Records whether a step behaved as described; printed at once, summed up at the end."""
    print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def metric_values(agent):
    """{(name, sorted label items): value} of an agent's /metrics page."""
    out = {}
    for line in agent.metrics().splitlines():
        m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def show(cmd, text):
    print(f"$ {cmd}")
    print(text.rstrip() if text.strip() else "(no output)", flush=True)


def lines(agent, pattern, since=0):
    return [l for l in agent.logs().splitlines()[since:] if re.search(pattern, l)]


def mark(agent):
    return len(agent.logs().splitlines())


def curl(pod, url, in_cgroup=True):
    # Only enrolled pods send the marker: the wire must never show it.
    marker = ["-H", f"X-Demo: {MARKER}"] if in_cgroup else []
    r = pod.run(["curl", "-sS", "-m", "5", "-o", "/dev/null"] + marker + ["-w",
                 "HTTP %{http_code} from %{remote_ip}:%{remote_port}\\n", url],
                in_cgroup=in_cgroup)
    return (r.stdout + r.stderr).strip()


def main():
    if len(sys.argv) > 1:
        os.environ["AMBIT_BUILD_DIR"] = str(pathlib.Path(sys.argv[1]).resolve())
    # SIGTERM cleans up as Ctrl-C does: the Topology's exit removes everything.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ctl = str(build_dir() / "agent/cli/ambitctl")
    with Topology("demo") as t:
        step("Two nodes, pods in two namespaces, each pod in its own network namespace; the "
             "bridge between the nodes is the wire")
        web = t.add_pod("web", namespace="frontend", service_account="web", node="node1")
        reports = t.add_pod("reports", namespace="frontend", service_account="reports",
                            node="node1")
        outsider = t.add_pod("outsider", namespace="default", node="node1")
        api = t.add_pod("api", namespace="backend", service_account="api", node="node2")
        for p in (web, reports, outsider, api):
            print(f"  {p.node}: pod {p.namespace}/{p.name:9} {p.ip4:15} {p.ip6}")
        print("  frontend/web, frontend/reports and backend/api are enrolled (ambit.dev/netns"
              " annotation); default/outsider is not.")
        node1, node2 = t.add_agent("node1"), t.add_agent("node2")
        plain = outsider.yaml().replace(f"    ambit.dev/netns: {outsider.netns_path}\n", "")
        for agent in (node1, node2):
            agent.write_config("pods.yaml", "---\n".join(p.yaml() for p in (web, reports, api))
                               + "---\n" + plain)
        tokens = os.path.join(t.workdir, "tokens")
        with open(tokens, "w") as f:
            f.write("demo-token node1\n")

        step("Starting ambitd on each node: it attaches the redirect programs to the node's pod "
             "cgroup, creates listeners inside each enrolled pod and starts ambit-tunnel")
        node1.start("--ca-listen", "127.0.0.1:0", "--ca-tokens", tokens, wait_pods=[web, reports])
        node2.start(wait_pods=[api])
        for line in lines(node1, r"attached|verified_insns|started data plane|enrolled pod"):
            print("  node1 " + line)
        show(f"bpftool cgroup show {node1.cgroup}",
             run("bpftool", "cgroup", "show", node1.cgroup).stdout)
        workloads = run(ctl, "workloads", "--admin-socket", node1.admin_socket,
                        check=False).stdout
        show("ambitctl workloads   (node1)", workloads)
        expect(len(re.findall(r"\benrolled\b", workloads)) == 2,
               "node1 lists frontend/web and frontend/reports as enrolled")

        step("Every enrolled identity holds an X.509 SVID: its key was made inside ambit-tunnel, "
             "only the CSR went to ambitd's CA; the node reports ready")
        for agent, n, count in ((node1, "node1", 2), (node2, "node2", 1)):
            for _ in range(100):
                certs = run(ctl, "certs", "--admin-socket", agent.admin_socket, check=False).stdout
                if certs.count(" valid ") >= count:
                    break
                time.sleep(0.1)
            show(f"ambitctl certs   ({n})", certs)
            expect(certs.count(" valid ") >= count, f"{n}: every enrolled identity has a valid "
                                                    "certificate")
        for agent, n in ((node1, "node1"), (node2, "node2")):
            for _ in range(100):
                status, body = agent.ready()
                if status == 200:
                    break
                time.sleep(0.1)
            show(f"curl http://127.0.0.1:{agent.readiness_port}/healthz/ready   ({n}; "
                 "15021 in a cluster)", f"HTTP {status}: {body}")
            expect(status == 200, f"{n} is ready (BPF attached, data plane up, certificates)")

        step("An HTTP server in backend/api; tcpdump watches the wire between the nodes")
        server = api.popen(["/usr/bin/python3", "-m", "http.server", "8080", "--bind", "::"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        capture = os.path.join(t.workdir, "wire.pcap")
        dump = subprocess.Popen(["ip", "netns", "exec", t.wire, "tcpdump", "-i", "br0", "-n",
                                 "--immediate-mode", "-U", "-w", capture, "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t.procs.append(dump)
        for _ in range(50):
            if api.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/"],
                       in_cgroup=False).returncode == 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        metrics_before = metric_values(node2)

        step("frontend/web (node1) curls backend/api (node2): eBPF hands the connection to "
             "ambit, which carries it over mutual TLS to the other node")
        m1, m2 = mark(node1), mark(node2)
        out4 = curl(web, f"http://{api.ip4}:8080/")
        show(f"curl -H 'X-Demo: {MARKER}' http://{api.ip4}:8080/   (in frontend/web)", out4)
        out6 = curl(web, f"http://[{api.ip6}]:8080/")
        show(f"curl http://[{api.ip6}]:8080/", out6)
        expect("HTTP 200" in out4 and "HTTP 200" in out6, "web reaches api over IPv4 and IPv6")
        time.sleep(0.3)
        print("node1 names the original destination and the identity it must reach; node2 names "
              "the verified client identity; each logs one access line per closed connection:")
        for line in lines(node1, r"outbound pod=|access: ", m1)[:3]:
            print("  node1 " + line)
        for line in lines(node2, r"inbound pod=|access: ", m2)[:3]:
            print("  node2 " + line)

        step("A connection held open by frontend/web: ambitctl connections shows both ends' "
             "identities, mTLS, the policy that allowed it, bytes and age")
        holder = web.popen(["/usr/bin/python3", "-c",
                            "import socket,sys,time\n"
                            f"s=socket.create_connection(('{api.ip4}',8080))\n"
                            "s.sendall(b'GET / HTTP/1.1\\r\\n')\n"
                            "print('open',flush=True); sys.stdin.readline()\n"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        time.sleep(0.3)
        conns1 = run(ctl, "connections", "--admin-socket", node1.admin_socket,
                     check=False).stdout
        conns2 = run(ctl, "connections", "--pod", "backend/api", "--admin-socket",
                     node2.admin_socket, check=False).stdout
        show("ambitctl connections   (node1)", conns1)
        show("ambitctl connections --pod backend/api   (node2)", conns2)
        expect("spiffe://cluster.local/ns/backend/sa/api" in conns1 and "mTLS" in conns1,
               "node1 lists web -> api over mTLS with api's identity")
        expect("spiffe://cluster.local/ns/frontend/sa/web" in conns2,
               "node2 lists the connection with web's verified identity")
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=10)

        step("openssl s_client against api's HBONE port (15008) with a workload certificate: "
             "TLS 1.3, ALPN h2, and the server proves it is spiffe://.../ns/backend/sa/api")
        certdir = svid.issue(node1, "spiffe://cluster.local/ns/default/sa/default",
                             "demo-token", tempfile.mkdtemp(dir=t.workdir))
        r = outsider.run(["openssl", "s_client", "-connect", f"{api.ip4}:15008", "-alpn", "h2",
                          "-tls1_3", "-cert", f"{certdir}/cert.pem", "-key",
                          f"{certdir}/key.pem", "-CAfile", f"{certdir}/root.pem", "-showcerts"],
                         in_cgroup=False, input="", timeout=20)
        out = r.stdout + r.stderr
        leaf = out.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0] \
            if "-----BEGIN CERTIFICATE-----" in out else ""
        san = run("openssl", "x509", "-noout", "-ext", "subjectAltName",
                  input=f"-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n",
                  check=False).stdout
        summary = [l.strip() for l in out.splitlines()
                   if re.search(r"^(New, TLSv|Protocol|ALPN protocol|Verify return code)",
                                l.strip())]
        show(f"openssl s_client -connect {api.ip4}:15008 -alpn h2 -tls1_3 -cert ... | grep ...",
             "\n".join(dict.fromkeys(summary)))
        show("openssl x509 -noout -ext subjectAltName   (the server's leaf)", san)
        expect("URI:spiffe://cluster.local/ns/backend/sa/api" in san and
               "Verify return code: 0 (ok)" in out and "ALPN protocol: h2" in out,
               "api's certificate names spiffe://cluster.local/ns/backend/sa/api and verifies")

        step("STRICT PeerAuthentication for namespace backend: plaintext is refused before the "
             "app sees a byte, mTLS still flows")
        node2.write_config("peer-authn.yaml", STRICT_BACKEND)
        show("cat peer-authn.yaml", STRICT_BACKEND)
        m2 = mark(node2)
        for _ in range(50):
            out = curl(outsider, f"http://{api.ip4}:8080/", in_cgroup=False)
            if "HTTP 200" not in out:
                break
            time.sleep(0.1)
        show(f"curl http://{api.ip4}:8080/   (in default/outsider: plaintext)", out)
        expect("HTTP 200" not in out, "the outsider's plaintext is refused under STRICT")
        for line in lines(node2, r"plaintext refused", m2)[:1]:
            print("  node2 " + line)
        out = curl(web, f"http://{api.ip4}:8080/")
        show(f"curl http://{api.ip4}:8080/   (in frontend/web: mTLS)", out)
        expect("HTTP 200" in out, "web still reaches api over mTLS")

        step("AuthorizationPolicy: backend/api admits only frontend/web on port 8080; "
             "frontend/reports is refused before the app sees a byte")
        node2.write_config("authz.yaml", ALLOW_ONLY_WEB)
        show("cat authz.yaml", ALLOW_ONLY_WEB)
        m2 = mark(node2)
        for _ in range(50):
            out = curl(reports, f"http://{api.ip4}:8080/")
            if "HTTP 200" not in out:
                break
            time.sleep(0.1)
        show(f"curl http://{api.ip4}:8080/   (in frontend/reports)", out)
        expect("HTTP 200" not in out, "reports is denied")
        for line in lines(node2, r"denied|access: .*deny", m2)[:2]:
            print("  node2 " + line)
        out = curl(web, f"http://{api.ip4}:8080/")
        show(f"curl http://{api.ip4}:8080/   (in frontend/web)", out)
        expect("HTTP 200" in out, "web is allowed by backend/api-callers")
        check = run(ctl, "check", "frontend/reports", "backend/api:8080", "--admin-socket",
                    node2.admin_socket, check=False).stdout
        show("ambitctl check frontend/reports backend/api:8080   (asks node2's running agent)",
             check)
        expect("decision: deny" in check, "ambitctl check explains the denial")
        request = os.path.join(t.workdir, "request.yaml")
        with open(request, "w") as f:
            f.write("enforcement: L4\n"
                    "target: {namespace: backend, labels: {app: api}}\n"
                    "source: {principal: spiffe://cluster.local/ns/frontend/sa/reports, "
                    f"ip: {reports.ip4}}}\n"
                    f"destination: {{ip: {api.ip4}, port: 8080}}\n")
        show("ambitctl policy check --config <node2 config> --request request.yaml   "
             "(offline: the same engine, no agent needed)",
             run(ctl, "policy", "check", "--config", node2.config_dir, "--request", request,
                 check=False).stdout)

        step("The metrics that moved on node2 (Prometheus, Istio's TCP metric names; 15020 "
             "in a cluster)")
        time.sleep(0.3)
        metrics_after = metric_values(node2)
        moved = []
        for key, value in sorted(metrics_after.items()):
            name, labels = key
            delta = value - metrics_before.get(key, 0)
            if delta and (name.startswith("istio_tcp_") or name in (
                    "ambit_policy_decisions_total", "ambit_plaintext_refused_total",
                    "ambit_hbone_handshakes_total")):
                keep = {k: v for k, v in labels if k in (
                    "reporter", "source_workload", "source_principal", "destination_workload",
                    "connection_security_policy", "response_flags", "result")}
                moved.append(f"{name}{{{','.join(f'{k}={v}' for k, v in keep.items())}}} "
                             f"+{delta:g}")
        show(f"curl -s http://127.0.0.1:{node2.metrics_port}/metrics   (deltas since the first "
             "request; labels shortened)", "\n".join(moved))
        expect(any(m.startswith("istio_tcp_connections_opened_total") for m in moved) and
               any("response_flags=DENY" in m for m in moved),
               "connection counters moved, denied connections counted with response_flags=DENY")

        step("Killing ambit-tunnel on node1: ambitd restarts it; its listeners stayed open, so a "
             "request made in the gap waits in the backlog and is served")
        pid = node1.tunnel_pid()
        os.kill(pid, 9)
        out = curl(web, f"http://{api.ip4}:8080/")
        show(f"kill -9 {pid}; curl http://{api.ip4}:8080/", out)
        expect("HTTP 200" in out, "the request made while the data plane restarted is served")
        for line in lines(node1, r"data plane pid=.*(killed|exited)|started data plane")[-2:]:
            print("  node1 " + line)

        step("What crossed the wire (tcpdump on the bridge between the nodes)")
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        r = run("tcpdump", "-n", "-r", capture, "-A", check=False)
        packets = [l for l in r.stdout.splitlines() if " IP" in l and "Flags" in l]
        web_api = [l for l in packets if web.ip4 in l or web.ip6 in l]
        requests = [l for l in r.stdout.splitlines() if "GET / HTTP" in l]
        show("tcpdump -n -r wire.pcap host web   (first lines)", "\n".join(web_api[:6]))
        other = [l for l in web_api if ".15008 " not in l and ".15008:" not in l]
        print(f"  {len(web_api)} packets between web and api, {len(web_api) - len(other)} of "
              f"them to or from port 15008 (HBONE), {len(other)} on any other port")
        for l in other[:5]:
            print("  not HBONE: " + l)
        print(f"  HTTP request lines readable anywhere on the wire: {len(requests)} (only "
              f"default/outsider, outside the mesh, sends plaintext: before STRICT, or reset)")
        expect(web_api and not other, "every packet between web and api is HBONE (port 15008)")
        expect(MARKER not in r.stdout, f"the marker web sent ({MARKER}) never appears on the wire")

        step("Tearing down: ambitd --cleanup stops each data plane and removes every pin")
        server.kill()
    print("done: namespaces, cgroups, BPF pins and processes removed")
    if FAILURES:
        print(f"\n{len(FAILURES)} step(s) did not behave as described:")
        for f in FAILURES:
            print(f"  - {f}")
        sys.exit(1)
    print("every step behaved as described")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo created was removed")
        sys.exit(130)
