"""make demo: two simulated nodes whose pods' TCP is steered by eBPF into ambit, carried over
mutual TLS (HBONE) between the nodes, and allowed or refused by Istio policies, step by step.

Everything runs in network namespaces this script creates (198.18.0.0/15, 2001:2::/48) and is
removed at the end, also on failure or Ctrl-C.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from topology import Topology, build_dir, run  # noqa: E402

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

STRICT_BACKEND = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: backend
spec:
  mtls:
    mode: STRICT
"""


def step(caption):
    print(f"\n{BOLD}==> {caption}{RESET}", flush=True)


def show(cmd, text):
    print(f"$ {cmd}")
    print(text.rstrip() if text.strip() else "(no output)", flush=True)


def lines(agent, pattern, since=0):
    return [l for l in agent.logs().splitlines()[since:] if re.search(pattern, l)]


def mark(agent):
    return len(agent.logs().splitlines())


def curl(pod, url, in_cgroup=True):
    r = pod.run(["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w",
                 "HTTP %{http_code} from %{remote_ip}:%{remote_port}\\n", url],
                in_cgroup=in_cgroup)
    return (r.stdout + r.stderr).strip()


def main():
    if len(sys.argv) > 1:
        os.environ["AMBIT_BUILD_DIR"] = str(pathlib.Path(sys.argv[1]).resolve())
    ctl = str(build_dir() / "agent/cli/ambitctl")
    with Topology("demo") as t:
        step("Two nodes and three pods, each pod in its own network namespace; the bridge "
             "between them is the wire")
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

        step("Starting ambitd on each node: it attaches the redirect programs to the node's pod "
             "cgroup, creates listeners inside each enrolled pod and starts ambit-tunnel")
        node1.start(wait_pods=[web, reports])
        node2.start(wait_pods=[api])
        for line in lines(node1, r"attached|verified_insns|started data plane|enrolled pod"):
            print("  node1 " + line)
        show(f"bpftool cgroup show {node1.cgroup}",
             run("bpftool", "cgroup", "show", node1.cgroup).stdout)
        show("ambitctl workloads   (node1)",
             run(ctl, "workloads", "--admin-socket", node1.admin_socket, check=False).stdout)

        step("Every enrolled identity holds an X.509 SVID: its key was made inside ambit-tunnel, "
             "only the CSR went to ambitd's CA")
        for agent, n in ((node1, "node1"), (node2, "node2")):
            for _ in range(50):
                certs = run(ctl, "certs", "--admin-socket", agent.admin_socket, check=False).stdout
                if " valid " in certs:
                    break
                time.sleep(0.1)
            show(f"ambitctl certs   ({n})", certs)

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

        step("frontend/web (node1) curls backend/api (node2): eBPF hands the connection to "
             "ambit, which carries it over mutual TLS to the other node")
        m1, m2 = mark(node1), mark(node2)
        show(f"curl http://{api.ip4}:8080/   (in frontend/web)", curl(web, f"http://{api.ip4}:8080/"))
        show(f"curl http://[{api.ip6}]:8080/", curl(web, f"http://[{api.ip6}]:8080/"))
        time.sleep(0.3)
        print("node1 names the original destination and the identity it must reach; node2 names "
              "the verified client identity:")
        for line in lines(node1, r"outbound pod=", m1):
            print("  node1 " + line)
        for line in lines(node2, r"inbound pod=", m2):
            print("  node2 " + line)

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
        for line in lines(node2, r"plaintext refused", m2)[:1]:
            print("  node2 " + line)
        show(f"curl http://{api.ip4}:8080/   (in frontend/web: mTLS)",
             curl(web, f"http://{api.ip4}:8080/"))

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
        for line in lines(node2, r"denied", m2)[:1]:
            print("  node2 " + line)
        show(f"curl http://{api.ip4}:8080/   (in frontend/web)", curl(web, f"http://{api.ip4}:8080/"))
        request = os.path.join(t.workdir, "request.yaml")
        with open(request, "w") as f:
            f.write("enforcement: L4\n"
                    "target: {namespace: backend, labels: {app: api}}\n"
                    "source: {principal: spiffe://cluster.local/ns/frontend/sa/reports, "
                    f"ip: {reports.ip4}}}\n"
                    f"destination: {{ip: {api.ip4}, port: 8080}}\n")
        show("ambitctl check frontend/reports backend/api:8080   (asks node2's running agent)",
             run(ctl, "check", "frontend/reports", "backend/api:8080", "--admin-socket",
                 node2.admin_socket, check=False).stdout)
        show("ambitctl policy check --config <node2 config> --request request.yaml   "
             "(offline: the same engine, no agent needed)",
             run(ctl, "policy", "check", "--config", node2.config_dir, "--request", request,
                 check=False).stdout)

        step("Killing ambit-tunnel on node1: ambitd restarts it; its listeners stayed open, so a "
             "request made in the gap waits in the backlog and is served")
        pid = node1.tunnel_pid()
        os.kill(pid, 9)
        show(f"kill -9 {pid}; curl http://{api.ip4}:8080/", curl(web, f"http://{api.ip4}:8080/"))
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
        print(f"  HTTP request lines readable anywhere on the wire: {len(requests)} (the "
              f"outsider's plaintext was reset at api's node before it sent its request)")

        step("Tearing down: ambitd --cleanup stops each data plane and removes every pin")
        server.kill()
    print("done: namespaces, cgroups, BPF pins and processes removed")


if __name__ == "__main__":
    main()
