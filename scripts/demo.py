"""make demo: simulated nodes whose pods' TCP is steered by eBPF into ambit, carried over mutual
TLS (HBONE) between the nodes, and allowed or refused by Istio policies, step by step: at L4 by
the node tunnels, then at L7 (JWT, paths, methods) by a waypoint on a third node, which also asks
an external authorizer (a CUSTOM policy, Istio's ext_authz) about some paths.

Everything runs in network namespaces this script creates (198.18.0.0/15, 2001:2::/48) and is
removed at the end, also on failure, Ctrl-C or SIGTERM. Every step checks that it behaved as its
caption says; the demo exits non-zero if any did not.
"""

import json
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
from topology import (ECHO_HTTP_APP, Topology, build_dir, run,  # noqa: E402
                      strict_peer_authentication, waypoint_gateway)
import svid  # noqa: E402
from jwt_issuer import Issuer  # noqa: E402

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

WAYPOINT_ID = "spiffe://cluster.local/ns/backend/sa/waypoint"
WEB_ID = "spiffe://cluster.local/ns/frontend/sa/web"
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
ISSUER = "https://login.demo.example"
AUDIENCE = "api"

# backend/api is a pod bound to the waypoint by its own label: the Gateway takes workload traffic
# (istio.io/waypoint-for defaults to service).
GATEWAY = waypoint_gateway("workload")

# Attached to the Gateway: the waypoint validates tokens of one issuer (keys inline, made when
# the demo starts), then lets GET /api/admin* through for the admins group and the rest of
# GET /api/* for any valid token; everything else is denied (ALLOW policies apply).
WAYPOINT_POLICIES = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: login
  namespace: backend
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  jwtRules:
  - issuer: {issuer}
    audiences: [{audience}]
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-admin
  namespace: backend
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/admin*"]
    when:
    - key: request.auth.claims[groups]
      values: ["admins"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-read
  namespace: backend
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{issuer}/*"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/*"]
        notPaths: ["/api/admin*"]
"""

# Once api uses the waypoint, the waypoint's identity is the one that connects to api's tunnel;
# api's own L4 policy admits it (and nothing else reaches api: the bypass is closed).
ALLOW_WAYPOINT = ALLOW_ONLY_WEB.replace("cluster.local/ns/frontend/sa/web",
                                        "cluster.local/ns/backend/sa/waypoint")



# External authorization: Istio's sample HTTP provider, served by the test authorizer
# (tests/authorizers/http_authz.py, which answers like Istio's sample ext-authz) in pod
# authz/ext-authz on node2, asked by the waypoint for GET /api/payments*.
EXT_AUTHZ_MESH = """\
extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.authz.svc.cluster.local
    port: 8000
    timeout: 2s
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-upstream"]
    headersToDownstreamOnDeny: ["x-ext-authz-check-result", "content-type"]
    headersToDownstreamOnAllow: ["x-ext-authz-check-result"]
"""

EXT_AUTHZ_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: ext-authz
  namespace: authz
spec:
  clusterIP: {vip}
  selector:
    app: ext-authz
  ports:
  - name: http
    port: 8000
    targetPort: 8000
"""

EXT_AUTHZ_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments-ext-authz
  namespace: backend
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  action: CUSTOM
  provider:
    name: sample-ext-authz-http
  rules:
  - to:
    - operation:
        paths: ["/api/payments*"]
"""

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


def http(pod, url, token=None, method="GET"):
    """(status, body) of one request made by curl in an enrolled pod; status 0 when none came."""
    headers = ["-H", f"X-Demo: {MARKER}"]
    if token:
        headers += ["-H", f"Authorization: Bearer {token}"]
    r = pod.run(["curl", "-sS", "-m", "5", "-X", method, "-o", "/dev/stdout", "-w",
                 "\n%{http_code}"] + headers + [url])
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), (body or r.stderr).strip()


def http_headers(pod, url, headers):
    """(status, {response headers}, body) of one GET by curl in an enrolled pod."""
    argv = ["curl", "-sS", "-m", "5", "-D", "/dev/stderr", "-o", "/dev/stdout", "-w",
            "\n%{http_code}", "-H", f"X-Demo: {MARKER}"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    r = pod.run(argv + [url])
    body, _, code = r.stdout.rpartition("\n")
    got = {}
    for line in r.stderr.splitlines():
        k, sep, v = line.partition(":")
        if sep and not k.startswith(("HTTP/", "curl")):
            got[k.strip().lower()] = v.strip()
    return int(code or 0), got, body.strip()


def with_labels(pod, labels):
    extra = "".join(f"    {k}: {v}\n" for k, v in labels.items())
    return pod.yaml().replace(f"    app: {pod.name}\n", f"    app: {pod.name}\n{extra}")


def waypoint_pid(agent):
    """The PID of the agent's ambit-waypoint (found by its control socket), or None."""
    out = run("pgrep", "-f", "--", f"--control-socket {agent.run_dir}/waypoint/dataplane.sock",
              check=False).stdout.split()
    return int(out[0]) if len(out) == 1 else None


def wait_until(predicate, timeout, interval=0.1):
    """predicate()'s first true value within timeout seconds, else its last value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(interval)




def waypoint_steps(t, ctl, web, reports, api, outsider, plain, node1, node2):
    """The L7 part of the story: a waypoint for backend/api on node3, JWT and path rules, their
    denials explained, and the bypass around the waypoint refused. Returns the waypoint's pod, its
    node and the tokens."""
    step("A waypoint: Gateway backend/waypoint (class istio-waypoint) and its pod "
         "backend/waypoint-0 on a third node; node3's ambitd runs ambit-waypoint for it, next to "
         "ambit-tunnel")
    wp = t.add_pod("waypoint-0", namespace="backend", service_account="waypoint", node="node3")
    print(f"  node3: pod {wp.namespace}/{wp.name} {wp.ip4:15} {wp.ip6}   labels: "
          f"{GATEWAY_LABEL}: waypoint")
    issuer = Issuer(ISSUER, kid="demo-1", aud=AUDIENCE)
    jwks = issuer.jwks
    policies = WAYPOINT_POLICIES.format(issuer=ISSUER, audience=AUDIENCE, jwks=jwks)
    view = "---\n".join([web.yaml(), reports.yaml(),
                         with_labels(api, {"istio.io/use-waypoint": "waypoint"}),
                         with_labels(wp, {GATEWAY_LABEL: "waypoint"}), GATEWAY]) + "---\n" + plain
    node3 = t.add_agent("node3")
    node3.write_config("pods.yaml", view)
    node3.write_config("peer-authn.yaml", STRICT_BACKEND)  # as every node sees it
    node3.write_config("waypoint-policies.yaml", policies)
    show("cat gateway.yaml", GATEWAY)
    node3.start(wait_pods=[wp])
    pid = wait_until(lambda: waypoint_pid(node3), 10)
    ready = wait_until(lambda: f"certificate {WAYPOINT_ID} valid" in node3.logs(), 15)
    for line in lines(node3, r"started (waypoint )?data plane|enrolled pod|signed certificate"):
        print("  node3 " + line)
    ps = run("ps", "-o", "pid,args", "-p", str(pid), check=False).stdout if pid else ""
    show(f"ps -o pid,args -p {pid}", ps)
    expect(pid is not None and "agent/main/ambit-waypoint " in ps and pid != node3.tunnel_pid(),
           "ambitd on node3 runs ambit-waypoint for backend/waypoint-0, a process of its own")
    expect(ready, f"the waypoint holds a certificate for {WAYPOINT_ID}")

    step("backend/api uses the waypoint (label istio.io/use-waypoint: waypoint), on every node; "
         "api's L4 policy now admits the waypoint's identity, the only one that reaches it")
    node2.write_config("authz.yaml", ALLOW_WAYPOINT)
    show("cat authz.yaml   (node2)", ALLOW_WAYPOINT)
    for agent in (node1, node2):
        agent.write_config("pods.yaml", view)
    tokens = {"alice": issuer.token(lifetime=3600, sub="alice", groups=["users"]),
              "root": issuer.token(lifetime=3600, sub="root", groups=["admins"]),
              "expired": issuer.token(lifetime=-3600, sub="alice", groups=["users"])}

    def through_waypoint():
        code, body = http(web, f"http://{api.ip4}:8080/api/orders", tokens["alice"])
        return code == 200 and f'"client": "{wp.ip4}"' in body
    switched = wait_until(through_waypoint, 15, 0.2)
    workloads = run(ctl, "workloads", "--admin-socket", node1.admin_socket, check=False).stdout
    show("ambitctl workloads   (node1; the header, api and the waypoint's pod)",
         "\n".join(l for l in workloads.splitlines()
                   if l.startswith("NAMESPACE") or re.search(r"\b(api|waypoint-0)\b", l)))
    expect(switched and re.search(r"\bapi\b.*backend/waypoint", workloads),
           "node1 sends web's traffic for api to the waypoint")

    step("RequestAuthentication and AuthorizationPolicies attached to the Gateway (targetRefs): "
         "tokens of one issuer (RS256 key made for this run, JWKS inline); GET /api/admin* for "
         "the admins group, the rest of GET /api/* for any valid token")
    shown = policies.replace(jwks, jwks[:40] + "...")
    show("cat waypoint-policies.yaml   (node3)", shown)
    print("  tokens signed now with the run's key: $ALICE (groups: [users]), $ROOT (groups: "
          "[admins]), $EXPIRED (alice's, expired an hour ago)")

    step("curl from frontend/web (node1) to backend/api (node2): node1's tunnel carries it over "
         "HBONE to the waypoint, which checks the token and the rules per request and forwards "
         "over HBONE with its own identity")
    m2, m3 = mark(node2), mark(node3)
    url = f"http://{api.ip4}:8080"
    code, body = http(web, f"{url}/api/orders", tokens["alice"])
    show(f"curl -H 'Authorization: Bearer $ALICE' {url}/api/orders", f"HTTP {code}: {body}")
    seen = json.loads(body) if code == 200 else {}
    expect(code == 200 and seen.get("client") == wp.ip4,
           f"200, and the app saw the request come from the waypoint's pod ({wp.ip4})")
    expect(code == 200 and seen.get("authorization") is None,
           "the waypoint took the token off before forwarding (forwardOriginalToken is off)")
    time.sleep(0.3)
    for line in lines(node2, r"inbound pod=backend/api", m2)[:1]:
        print("  node2 " + line)
    for line in lines(node3, r"access: .*path=/api/orders", m3)[:1]:
        print("  node3 " + line)

    cases = [
        ("$EXPIRED", tokens["expired"], "GET", "/api/orders", 401, "Jwt is expired",
         "an expired token: 401 Jwt is expired"),
        ("$ALICE", tokens["alice"], "GET", "/api/admin/users", 403, "RBAC: access denied",
         "a valid token outside the admins group on /api/admin/*: 403 RBAC: access denied"),
        ("$ROOT", tokens["root"], "GET", "/api/admin/users", 200, None,
         "an admins token on /api/admin/*: 200"),
        ("$ALICE", tokens["alice"], "DELETE", "/api/orders", 403, "RBAC: access denied",
         "a method no rule allows (DELETE): 403"),
        (None, None, "GET", "/api/orders", 403, "RBAC: access denied",
         "no token at all: 403 (the rules need a request principal)"),
    ]
    for name, token, method, path, want, text, what in cases:
        code, body = http(web, f"{url}{path}", token, method)
        auth = f"-H 'Authorization: Bearer {name}' " if name else ""
        verb = f"-X {method} " if method != "GET" else ""
        show(f"curl {verb}{auth}{url}{path}", f"HTTP {code}: {body}")
        expect(code == want and (text is None or body == text), what)

    step("The waypoint's access log (ambit-waypoint writes to ambitd's log on node3) and the "
         "HTTP metrics on node3's /metrics")
    time.sleep(0.3)
    denials = lines(node3, r"access: .*status=403", m3)
    for line in denials[:2]:
        print("  node3 " + line)
    expect(any("path=/api/admin/users" in l and "src_identity=" + WEB_ID in l for l in denials),
           "the waypoint logged the 403 with the path and web's identity")
    requests = [l for l in node3.metrics().splitlines() if l.startswith("istio_requests_total{")]
    show(f"curl -s http://127.0.0.1:{node3.metrics_port}/metrics | grep '^istio_requests_total'",
         "\n".join(requests))
    expect(any('response_code="403"' in l for l in requests) and
           any('response_code="401"' in l for l in requests),
           'istio_requests_total counts the denials by response_code ("401", "403")')

    step("Why was alice's GET /api/admin/users denied? ambitctl policy check runs the waypoint's "
         "engine on node3's configuration, token included")
    request = os.path.join(t.workdir, "l7-request.yaml")
    with open(request, "w") as f:
        f.write("enforcement: L7\n"
                "target: {namespace: backend, labels: {app: api}, "
                "waypoint: {name: waypoint, namespace: backend}}\n"
                f"source: {{principal: {WEB_ID}, ip: {web.ip4}}}\n"
                f"destination: {{ip: {api.ip4}, port: 8080}}\n"
                "http:\n  method: GET\n  path: /api/admin/users\n"
                f"  headers: {{authorization: \"Bearer {tokens['alice']}\"}}\n")
    explained = run(ctl, "policy", "check", "--config", node3.config_dir, "--request", request,
                    check=False)
    show("cat l7-request.yaml", open(request).read().replace(tokens["alice"], "$ALICE"))
    show("ambitctl policy check --config <node3 config> --request l7-request.yaml",
         explained.stdout + explained.stderr)
    expect(explained.returncode == 0 and explained.stdout.startswith("decision: deny") and
           "api-admin" in explained.stdout and "valid" in explained.stdout,
           "the check names the token as valid and the rule that did not match")
    # The offline check above is the explanation with any ambitctl. An ambitctl whose live
    # `check` takes HTTP attributes (--method, --path, --header) is asked as well; one whose
    # `check` is L4 only is not, as it cannot see the request.
    live = run(ctl, "check", "--help", check=False)
    if "--path" in live.stdout + live.stderr:
        # The running agent explains L7 decisions too: ask the waypoint's node, which holds the
        # policies attached to the Gateway.
        live = run(ctl, "check", "frontend/web", "backend/api:8080", "--method", "GET", "--path",
                   "/api/admin/users", "--header", f"authorization: Bearer {tokens['alice']}",
                   "--admin-socket", node3.admin_socket, check=False)
        show("ambitctl check frontend/web backend/api:8080 --method GET --path /api/admin/users "
             "--header 'authorization: Bearer $ALICE'   (node3's running agent)",
             live.stdout + live.stderr)
        expect(live.returncode == 0 and "deny" in live.stdout,
               "the running agent explains the denial too")

    ext_authz_steps(t, web, api, view, (node1, node2, node3), tokens)

    step("The bypass: a client holding frontend/web's certificate dials api's HBONE port "
         "directly (Python ssl + h2, from outside the mesh): api's tunnel accepts only the "
         "waypoint")
    certdir = svid.issue(node1, WEB_ID, "demo-token", tempfile.mkdtemp(dir=t.workdir))
    m2 = mark(node2)
    r = outsider.run(["/usr/bin/python3", str(ROOT / "tests/e2e/hbone_peer.py"), "client",
                      certdir, api.ip4, f"{api.ip4}:8080",
                      f"GET /api/orders HTTP/1.1\r\nHost: {api.ip4}\r\n\r\n"],
                     in_cgroup=False, timeout=30)
    show(f"hbone_peer.py client <web's SVID> {api.ip4} {api.ip4}:8080 'GET /api/orders ...'",
         r.stdout + r.stderr)
    got = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
    time.sleep(0.3)
    refused = lines(node2, r"uses waypoint backend/waypoint", m2)
    for line in refused[:1]:
        print("  node2 " + line)
    expect(got.get("status") == 401 and got.get("reply") == "" and refused,
           "api's tunnel answers web's direct CONNECT with 401: it uses waypoint backend/waypoint")
    return wp, node3, tokens


def ext_authz_steps(t, web, api, view, nodes, tokens):
    """External authorization: an authorizer pod, a CUSTOM policy on the waypoint, one request it
    allows and one it denies."""
    node3 = nodes[2]
    step("External authorization: mesh.yaml names an HTTP authorizer (Istio's sample "
         "sample-ext-authz-http, run here by tests/authorizers/http_authz.py in pod "
         "authz/ext-authz on node2); a CUSTOM policy on the waypoint asks it about "
         "GET /api/payments*")
    authz = t.add_pod("ext-authz", namespace="authz", service_account="ext-authz", node="node2")
    print(f"  node2: pod {authz.namespace}/{authz.name} {authz.ip4:15} {authz.ip6}")
    vip = f"198.18.{t.subnet}.210"
    view = "---\n".join([view, authz.yaml(), EXT_AUTHZ_SERVICE.format(vip=vip)])
    for agent in nodes:
        agent.write_config("mesh.yaml", EXT_AUTHZ_MESH)
        agent.write_config("pods.yaml", view)
    node3.write_config("ext-authz-policy.yaml", EXT_AUTHZ_POLICY)
    show("cat mesh.yaml", EXT_AUTHZ_MESH)
    show("cat ext-authz-policy.yaml   (node3)", EXT_AUTHZ_POLICY)
    log = os.path.join(t.workdir, "ext-authz.jsonl")
    proc = authz.popen(["/usr/bin/python3", str(ROOT / "tests/authorizers/http_authz.py"),
                        "--listen", "0.0.0.0:8000", "--log", log],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    listening = proc.stdout.readline().startswith("listening")
    expect(listening, "the authorizer listens on port 8000 in authz/ext-authz")
    print("  The authorizer allows a request carrying 'x-ext-authz: allow' and denies any other "
          "with 403 and its own header and body; the waypoint reaches it over HBONE from its "
          "pod, like any upstream")

    step("curl through the waypoint to /api/payments: the waypoint asks the authorizer first "
         "(CUSTOM, then DENY, then ALLOW), then applies the JWT rules as before")
    url = f"http://{api.ip4}:8080/api/payments"
    bearer = {"Authorization": f"Bearer {tokens['alice']}"}
    m3 = mark(node3)
    allowed = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
        http_headers(web, url, {**bearer, "x-ext-authz": "allow"})), 15, 0.3)
    code, headers, body = allowed or http_headers(web, url, {**bearer, "x-ext-authz": "allow"})
    show(f"curl -i -H 'Authorization: Bearer $ALICE' -H 'x-ext-authz: allow' {url}",
         f"HTTP {code}\nx-ext-authz-check-result: {headers.get('x-ext-authz-check-result')}")
    expect(code == 200 and headers.get("x-ext-authz-check-result") == "allowed",
           "the authorizer allowed it: 200, and its allow header reached the client")
    code, headers, body = http_headers(web, url, bearer)
    show(f"curl -i -H 'Authorization: Bearer $ALICE' {url}",
         f"HTTP {code}\nx-ext-authz-check-result: {headers.get('x-ext-authz-check-result')}\n"
         f"\n{body}")
    expect(code == 403 and headers.get("x-ext-authz-check-result") == "denied" and
           "x-ext-authz: allow" in body,
           "the authorizer denied it: its status, header and body reached the client")
    time.sleep(0.3)
    for line in lines(node3, r"access: .*path=/api/payments", m3)[-2:]:
        print("  node3 " + line)
    expect(any("ext_authz=sample-ext-authz-http:deny" in l
               for l in lines(node3, r"access: .*path=/api/payments", m3)),
           "the access log names the provider, its answer and how long it took (ext_authz=)")


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
        app_log = open(os.path.join(t.workdir, "api-app.log"), "w")
        # backend/api's application answers every request with what it saw, including where the
        # connection came from and whether an Authorization header reached it.
        server = api.popen(["/usr/bin/python3", "-c", ECHO_HTTP_APP, "8080"], stdout=app_log,
                           stderr=app_log)
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

        wp, node3, tokens = waypoint_steps(t, ctl, web, reports, api, outsider, plain, node1,
                                           node2)

        step("Killing ambit-tunnel on node1: ambitd restarts it; its listeners stayed open, so a "
             "request made in the gap waits in the backlog and is served (through the waypoint)")
        pid = node1.tunnel_pid()
        os.kill(pid, 9)
        code, body = http(web, f"http://{api.ip4}:8080/api/orders", tokens["alice"])
        show(f"kill -9 {pid}; curl -H 'Authorization: Bearer $ALICE' "
             f"http://{api.ip4}:8080/api/orders", f"HTTP {code}: {body}")
        expect(code == 200, "the request made while the data plane restarted is served")
        for line in lines(node1, r"data plane pid=.*(killed|exited)|started data plane")[-2:]:
            print("  node1 " + line)

        step("Upgrading ambit-tunnel on node2 without dropping a connection: ambitctl dataplane "
             "roll starts a new process beside the old one; once it holds certificates and "
             "accepts on every pod's listeners, the old one stops accepting and drains. A "
             "keep-alive connection held across the roll keeps working; a new one succeeds")
        keeper = web.popen(["/usr/bin/python3", "-c",
                            "import http.client,sys\n"
                            f"c=http.client.HTTPConnection('{api.ip4}',8080,timeout=15)\n"
                            "def get():\n"
                            "  c.request('GET','/api/orders',headers={'Authorization':"
                            f"'Bearer {tokens['alice']}'}})\n"
                            "  r=c.getresponse(); r.read(); return r.status\n"
                            "print(get(),flush=True); sys.stdin.readline(); "
                            "print(get(),flush=True)\n"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        before = keeper.stdout.readline().strip()
        old_pid = node2.tunnel_pid()
        r = run(ctl, "dataplane", "roll", "tunnel", "--admin-socket", node2.admin_socket,
                check=False)
        show("ambitctl dataplane roll tunnel   (node2)", r.stdout + r.stderr)
        keeper.stdin.write("\n")
        keeper.stdin.flush()
        after = keeper.stdout.readline().strip()
        keeper.wait(timeout=20)
        code, body = http(web, f"http://{api.ip4}:8080/api/orders", tokens["alice"])
        show("the held connection: request before the roll, request after it",
             f"HTTP {before}, then HTTP {after} on the same connection; a new connection: "
             f"HTTP {code}")
        expect(r.returncode == 0, "the roll completed")
        expect(before == "200" and after == "200",
               "the connection held across the roll kept working")
        expect(code == 200, "a connection opened after the roll is served by the new process")
        for line in lines(node2, r"roll|drain")[-3:]:
            print("  node2 " + line)
        expect(wait_until(lambda: old_pid is not None and
                          not os.path.exists(f"/proc/{old_pid}"), 40),
               f"the old ambit-tunnel (pid {old_pid}) exited once its connections ended")

        step("What crossed the wire (tcpdump on the bridge between the nodes)")
        time.sleep(0.5)
        dump.terminate()
        dump.wait(timeout=5)
        r = run("tcpdump", "-n", "-r", capture, "-A", check=False)
        with open(capture, "rb") as f:
            raw = f.read()
        packets = [l for l in r.stdout.splitlines() if " IP" in l and "Flags" in l]

        def hbone_only(pod):
            mine = [l for l in packets if pod.ip4 in l or pod.ip6 in l]
            return mine, [l for l in mine if ".15008 " not in l and ".15008:" not in l]
        web_pkts, web_other = hbone_only(web)
        wp_pkts, wp_other = hbone_only(wp)
        requests = [l for l in r.stdout.splitlines() if re.search(r"[A-Z]+ /\S* HTTP/1", l)]
        show("tcpdump -n -r wire.pcap host web   (first lines)", "\n".join(web_pkts[:6]))
        print(f"  {len(web_pkts)} packets to or from web (to api, then to the waypoint), "
              f"{len(web_pkts) - len(web_other)} of them to or from port 15008 (HBONE), "
              f"{len(web_other)} on any other port")
        print(f"  {len(wp_pkts)} packets to or from the waypoint's pod (from web, on to api), "
              f"{len(wp_pkts) - len(wp_other)} of them to or from port 15008, {len(wp_other)} on "
              "any other port")
        for l in (web_other + wp_other)[:5]:
            print("  not HBONE: " + l)
        print(f"  HTTP request lines readable anywhere on the wire: {len(requests)} (only "
              f"default/outsider, outside the mesh, sends plaintext: before STRICT, or reset)")
        for l in requests[:3]:
            print("    " + l.strip()[-60:])
        expect(web_pkts and not web_other, "every packet to or from web is HBONE (port 15008)")
        expect(wp_pkts and not wp_other,
               "every packet to or from the waypoint is HBONE (port 15008): both hops are mTLS")
        expect(not any("/api/" in l for l in requests), "no request through the waypoint is "
               "readable on the wire")
        expect(MARKER not in r.stdout and MARKER.encode() not in raw,
               f"the marker web sent ({MARKER}) never appears on the wire")
        signatures = [tok.rsplit(".", 1)[1][:24] for tok in tokens.values()]
        expect(not any(sig in r.stdout or sig.encode() in raw for sig in signatures),
               "no bearer token appears on the wire")

        step("ambitctl verify mtls beside the capture: ambitd's eBPF accounting on every pod's "
             "interfaces counts the same packets tcpdump saw, mTLS or plaintext")
        r2 = run(ctl, "verify", "mtls", "--pod", "backend/api", "--admin-socket",
                 node2.admin_socket, check=False)
        show("ambitctl verify mtls --pod backend/api   (node2)", r2.stdout + r2.stderr)
        doc2 = json.loads(run(ctl, "verify", "mtls", "--pod", "backend/api", "-o", "json",
                              "--admin-socket", node2.admin_socket, check=False).stdout)
        api_flows = doc2["pods"][0]["flows"] if doc2["pods"] else []
        plain = [f for f in api_flows if f["peer"] == outsider.ip4 and not f["mtls"]]
        # tcpdump's side: the outsider's connection attempts to api, and anything of web's
        # that is not on 15008.
        syn_re = re.compile(rf"{re.escape(outsider.ip4)}\.\d+ > {re.escape(api.ip4)}\.8080: "
                            r"Flags \[S\]")
        pcap_syns = len([l for l in r.stdout.splitlines() if syn_re.search(l)])
        bpf_syns = sum(f["connectionsIn"] for f in plain if f["port"] == 8080)
        print(f"  the outsider's plaintext connection attempts to api:8080: tcpdump {pcap_syns}, "
              f"ambitctl verify mtls {bpf_syns}")
        expect(pcap_syns > 0 and plain and pcap_syns == bpf_syns,
               "the outsider's plaintext to api:8080 shows in both, with the same number of "
               "connection attempts")
        answered = any(f["verdict"] == "plaintext-under-strict" for f in plain)
        expect(r2.returncode == (1 if answered else 0),
               "verify mtls exits 1 exactly when plaintext api answered is on a port STRICT "
               f"now covers (exit {r2.returncode}; answered plaintext: {answered})")
        r1 = run(ctl, "verify", "mtls", "--pod", "frontend/web", "-o", "json", "--admin-socket",
                 node1.admin_socket, check=False)
        web_doc = json.loads(r1.stdout)["pods"][0]
        show("ambitctl verify mtls --pod frontend/web   (node1; verdicts)",
             "\n".join(web_doc["verdicts"]))
        to_api = [f for f in web_doc["flows"] if f["peer"] in (api.ip4, api.ip6)]
        expect(r1.returncode == 0 and to_api and all(f["mtls"] for f in to_api) and
               web_doc["plaintextBytes"] == 0 and web_pkts and not web_other,
               "web's traffic is all mTLS in both: verify mtls counts no plaintext byte, tcpdump "
               "no packet off 15008")

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
