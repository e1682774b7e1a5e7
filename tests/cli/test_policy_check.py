#!/usr/bin/env python3
"""`ambitctl policy check`, run for real: the authorization table (issue 5).

Every row writes its policies (and mesh config, PeerAuthentications) into a fresh config
directory and its request into a YAML file, runs the real ambitctl binary twice (-o json and the
text trace) and checks the decision, the deciding policy, the ext_authz fields and the mTLS mode.
Rows follow Istio's documentation: the AuthorizationPolicy reference (fields, negation, wildcards,
ordering, dry-run, AUDIT, CUSTOM), the Authorization Policy Conditions table, path normalization,
and the ambient L4 policy page and istiod's conversion of policies for ztunnel (which fields the
node tunnel drops). A second class checks bad request files and config problems. A third
(PolicyCheckJwt) signs tokens at test time (python3-jwt, python3-cryptography) and checks that the
config's RequestAuthentication is applied to a raw HTTP request: valid, expired, not yet valid,
wrong audience, wrong key, alg none, HS256 key confusion, missing token, fromHeaders/fromParams/
fromCookies, --now, and the authn block and explanation of the output.

Run: AMBIT_BUILD_DIR=/work/main/build python3 tests/cli/test_policy_check.py
Prints `N passed, M failed` last and exits non-zero when a row fails.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import unittest

BUILD_DIR = os.environ.get("AMBIT_BUILD_DIR", "/work/main/build")
AMBITCTL = os.path.join(BUILD_DIR, "agent", "cli", "ambitctl")

SLEEP = "spiffe://cluster.local/ns/bar/sa/sleep"
OTHER = "spiffe://cluster.local/ns/other/sa/client"
SLEEP_P = "cluster.local/ns/bar/sa/sleep"
ANY = object()  # "do not check this"
JSON_KEYS = ["decision", "provider", "afterExtAuthzAllow", "policy", "reason", "mtls", "authn"]


def ambitctl(*args):
    proc = subprocess.run([AMBITCTL, *args], capture_output=True, text=True, timeout=30,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


# ---- Resources ---------------------------------------------------------------------------------

def ap(name, action=None, rules=ANY, ns="foo", selector=None, target_refs=None, target_ref=None,
       provider=None, dry_run=None, api="security.istio.io/v1"):
    """An AuthorizationPolicy document (JSON, which is YAML)."""
    spec = {}
    if action is not None:
        spec["action"] = action
    if rules is not ANY:
        spec["rules"] = rules
    if selector is not None:
        spec["selector"] = {"matchLabels": selector} if selector else {}
    if target_refs is not None:
        spec["targetRefs"] = target_refs
    if target_ref is not None:
        spec["targetRef"] = target_ref
    if provider is not None:
        spec["provider"] = {"name": provider}
    metadata = {"name": name, "namespace": ns}
    if dry_run is not None:
        metadata["annotations"] = {"istio.io/dry-run": dry_run}
    return json.dumps({"apiVersion": api, "kind": "AuthorizationPolicy", "metadata": metadata,
                       "spec": spec})


def allow(name, *rules, **kw):
    return ap(name, "ALLOW", list(rules), **kw)


def deny(name, *rules, **kw):
    return ap(name, "DENY", list(rules), **kw)


def audit(name, *rules, **kw):
    return ap(name, "AUDIT", list(rules), **kw)


def custom(name, provider, *rules, **kw):
    return ap(name, "CUSTOM", list(rules), provider=provider, **kw)


def pa(name, mode=None, ns="foo", selector=None, ports=None, api="security.istio.io/v1"):
    spec = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
    return json.dumps({"apiVersion": api, "kind": "PeerAuthentication",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


def src(**fields):
    return {"from": [{"source": fields}]}


def op(**fields):
    return {"to": [{"operation": fields}]}


def when(key, values=None, not_values=None):
    c = {"key": key}
    if values is not None:
        c["values"] = values
    if not_values is not None:
        c["notValues"] = not_values
    return {"when": [c]}


def rule(*parts):
    """Merges src()/op()/when() parts into one rule (their lists are concatenated)."""
    out = {}
    for p in parts:
        for k, v in p.items():
            out.setdefault(k, []).extend(v)
    return out


ALL = {}  # rules: [{}]

MESH = """extensionProviders:
- name: ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
- name: ext-authz-grpc
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 0.5s
- name: otel
  opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
"""

WAYPOINT = {"name": "waypoint", "services": [{"name": "httpbin"}]}


def gateway(name="waypoint"):
    return {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}


def service(name="httpbin"):
    return {"kind": "Service", "name": name}


# ---- Requests ----------------------------------------------------------------------------------

def l4(principal=SLEEP, ip="198.18.0.5", dip="198.18.1.7", port=8080, ns="foo", labels=None,
       waypoint=None, remote=None, sni=None):
    req = {"enforcement": "L4",
           "target": {"namespace": ns, "labels": {"app": "httpbin"} if labels is None else labels},
           "source": {"ip": ip},
           "destination": {"ip": dip, "port": port}}
    if principal is not None:
        req["source"]["principal"] = principal
    if remote is not None:
        req["source"]["remoteIp"] = remote
    if sni is not None:
        req["destination"]["sni"] = sni
    if waypoint is not None:
        req["target"]["waypoint"] = waypoint
    return req


def l7(method="GET", path="/", host="httpbin.foo", headers=None, auth=None, **kw):
    req = l4(**kw)
    req["enforcement"] = "L7"
    req["http"] = {"host": host, "method": method, "path": path}
    if headers:
        req["http"]["headers"] = headers
    if auth is not None:
        req["auth"] = auth
    return req


def jwt(principal="https://issuer.example.com/user-1", **claims):
    out = {"principal": principal}
    if claims:
        out["claims"] = claims
    return out


# ---- Rows --------------------------------------------------------------------------------------

class Row:
    def __init__(self, name, docs, request, decision, policy=ANY, provider=None, after=None,
                 mtls=("PERMISSIVE", "accept"), mesh=None, peers=(), text=(), stderr=(),
                 files=None):
        self.name = name
        self.docs = list(docs)
        self.request = request
        self.decision = decision
        self.policy = policy
        self.provider = provider
        self.after = after
        self.mtls = mtls
        self.mesh = mesh
        self.peers = list(peers)
        self.text = list(text)
        self.stderr = list(stderr)
        self.files = files or {}


ROWS = []


def row(*args, **kw):
    ROWS.append(Row(*args, **kw))


# A. Basics and ordering (AuthorizationPolicy reference: "Authorization Policy", examples).
row("no_policy_allows", [], l4(), "allow", None, text=["no authorization policy applies"])
row("allow_nothing_spec_empty", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec:
  {}
"""], l4(), "deny", None, text=["ALLOW foo/allow-nothing: no match", "never matches"])
row("allow_nothing_l7", [ap("allow-nothing")], l7(), "deny", None)
row("allow_all_empty_rule", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: foo
spec:
  action: ALLOW
  rules:
  - {}
"""], l4(), "allow", "foo/allow-all")
row("deny_all_empty_rule", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: foo
spec:
  action: DENY
  rules:
  - {}
"""], l4(), "deny", "foo/deny-all")
row("deny_all_l7", [deny("deny-all", ALL)], l7(), "deny", "foo/deny-all")
row("deny_beats_allow_all", [allow("allow-all", ALL), deny("deny-all", ALL)], l4(), "deny",
    "foo/deny-all")
row("deny_beats_matching_allow",
    [allow("allow-sleep", src(principals=[SLEEP_P])), deny("deny-bar", src(namespaces=["bar"]))],
    l4(), "deny", "foo/deny-bar")
row("allow_policies_none_match", [allow("a", src(namespaces=["x"])), allow("b", src(namespaces=["y"]))],
    l4(), "deny", None, text=["none matched"])
row("one_of_two_allows_matches",
    [allow("a", src(namespaces=["x"])), allow("b", src(namespaces=["bar"]))], l4(), "allow", "foo/b")
row("root_namespace_deny_all_applies_everywhere", [deny("deny-all", ALL, ns="istio-system")],
    l4(), "deny", "istio-system/deny-all")
row("root_namespace_allow_applies_everywhere",
    [allow("mesh-allow", src(namespaces=["bar"]), ns="istio-system")], l4(ns="elsewhere"),
    "allow", "istio-system/mesh-allow")
row("custom_root_namespace", [deny("deny-all", ALL, ns="mesh-root")], l4(), "deny",
    "mesh-root/deny-all", mesh="rootNamespace: mesh-root\n")
row("istio_system_not_root_when_moved", [deny("deny-all", ALL, ns="istio-system")], l4(),
    "allow", None, mesh="rootNamespace: mesh-root\n")
row("other_namespace_policy_does_not_apply", [deny("deny-all", ALL, ns="bar")], l4(), "allow",
    None)
row("selector_matches", [deny("deny-httpbin", ALL, selector={"app": "httpbin"})], l4(), "deny",
    "foo/deny-httpbin")
row("selector_does_not_match", [deny("deny-other", ALL, selector={"app": "other"})], l4(),
    "allow", None)
row("selector_subset_of_labels", [deny("d", ALL, selector={"app": "httpbin", "version": "v1"})],
    l4(labels={"app": "httpbin", "version": "v1", "extra": "x"}), "deny", "foo/d")
row("selector_label_missing", [deny("d", ALL, selector={"app": "httpbin", "version": "v1"})],
    l4(), "allow", None)
row("selector_value_differs", [deny("d", ALL, selector={"app": "httpbin", "version": "v2"})],
    l4(labels={"app": "httpbin", "version": "v1"}), "allow", None)
row("empty_selector_applies_to_namespace", [deny("d", ALL, selector={})], l4(labels={}), "deny",
    "foo/d", stderr=["has no matchLabels"])
row("allow_with_empty_rules_list_never_matches", [ap("a", "ALLOW", [])], l4(), "deny", None)
row("second_rule_matches", [allow("a", src(namespaces=["x"]), src(namespaces=["bar"]))], l4(),
    "allow", "foo/a", text=["matched (rule 1)"])
row("from_entries_are_ored",
    [allow("a", {"from": [{"source": {"namespaces": ["x"]}},
                          {"source": {"principals": [SLEEP_P]}}]})], l4(), "allow", "foo/a")
row("source_fields_are_anded", [allow("a", src(namespaces=["bar"], ipBlocks=["198.18.192.0/20"]))],
    l4(), "deny", None)
row("values_are_ored", [allow("a", src(principals=["cluster.local/ns/x/sa/y", SLEEP_P]))], l4(),
    "allow", "foo/a")
row("v1beta1_allow", [allow("a", src(namespaces=["bar"]), api="security.istio.io/v1beta1")],
    l4(), "allow", "foo/a")
row("root_deny_and_namespace_allow", [deny("d", src(namespaces=["bar"]), ns="istio-system"),
                                      allow("a", ALL)], l4(), "deny", "istio-system/d")
row("rule_parts_are_anded", [allow("a", rule(src(namespaces=["bar"]), op(ports=["9090"])))], l4(),
    "deny", None)
row("rule_parts_all_match", [allow("a", rule(src(namespaces=["bar"]), op(ports=["8080"]),
                                             when("destination.ip", ["198.18.1.0/24"])))],
    l4(), "allow", "foo/a")

# B. Source fields (reference: Source; negation; wildcards; plaintext has no identity).
row("principals_exact", [allow("a", src(principals=[SLEEP_P]))], l4(), "allow", "foo/a")
row("principals_exact_other", [allow("a", src(principals=[SLEEP_P]))], l4(principal=OTHER),
    "deny", None)
row("principals_prefix", [allow("a", src(principals=["cluster.local/ns/bar/*"]))], l4(), "allow",
    "foo/a")
row("principals_suffix", [allow("a", src(principals=["*/sa/sleep"]))], l4(), "allow", "foo/a")
row("principals_suffix_other", [allow("a", src(principals=["*/sa/sleep"]))], l4(principal=OTHER),
    "deny", None)
row("principals_presence_mtls", [allow("a", src(principals=["*"]))], l4(), "allow", "foo/a")
row("principals_presence_plaintext", [allow("a", src(principals=["*"]))], l4(principal=None),
    "deny", None)
row("principals_other_trust_domain", [allow("a", src(principals=[SLEEP_P]))],
    l4(principal="spiffe://example.org/ns/bar/sa/sleep"), "deny", None)
row("not_principals_excludes", [allow("a", src(notPrincipals=[SLEEP_P]))], l4(), "deny", None)
row("not_principals_other", [allow("a", src(notPrincipals=[SLEEP_P]))], l4(principal=OTHER),
    "allow", "foo/a")
row("deny_not_principals_star_plaintext", [deny("require-mtls", src(notPrincipals=["*"]))],
    l4(principal=None), "deny", "foo/require-mtls")
row("deny_not_principals_star_mtls", [deny("require-mtls", src(notPrincipals=["*"]))], l4(),
    "allow", None)
row("namespaces_match", [allow("a", src(namespaces=["bar"]))], l4(), "allow", "foo/a")
row("namespaces_no_match", [allow("a", src(namespaces=["baz"]))], l4(), "deny", None)
row("namespaces_prefix", [allow("a", src(namespaces=["ba*"]))], l4(), "allow", "foo/a")
row("namespaces_suffix", [allow("a", src(namespaces=["*ar"]))], l4(), "allow", "foo/a")
row("namespaces_plaintext", [allow("a", src(namespaces=["bar"]))], l4(principal=None), "deny",
    None)
row("not_namespaces_allow", [allow("a", src(notNamespaces=["bar"]))], l4(), "deny", None)
row("deny_outside_own_namespace", [deny("d", src(notNamespaces=["foo"]))], l4(), "deny", "foo/d")
row("deny_not_namespaces_same", [deny("d", src(notNamespaces=["bar"]))], l4(), "allow", None)
row("deny_not_namespaces_plaintext", [deny("d", src(notNamespaces=["bar"]))], l4(principal=None),
    "deny", "foo/d")
row("service_accounts_match", [allow("a", src(serviceAccounts=["bar/sleep"]))], l4(), "allow",
    "foo/a")
row("service_accounts_other", [allow("a", src(serviceAccounts=["bar/other"]))], l4(), "deny",
    None)
row("service_accounts_short_form_is_policy_namespace",
    [allow("a", src(serviceAccounts=["sleep"]))], l4(), "deny", None)
row("service_accounts_short_form_same_namespace", [allow("a", src(serviceAccounts=["sleep"]))],
    l4(principal="spiffe://cluster.local/ns/foo/sa/sleep"), "allow", "foo/a")
row("not_service_accounts_deny_other", [deny("d", src(notServiceAccounts=["bar/sleep"]))],
    l4(principal=OTHER), "deny", "foo/d")
row("not_service_accounts_deny_self", [deny("d", src(notServiceAccounts=["bar/sleep"]))], l4(),
    "allow", None)
row("service_accounts_plaintext", [allow("a", src(serviceAccounts=["bar/sleep"]))],
    l4(principal=None), "deny", None)
row("ip_blocks_cidr", [allow("a", src(ipBlocks=["198.18.0.0/17"]))], l4(), "allow", "foo/a")
row("ip_blocks_single_ip", [allow("a", src(ipBlocks=["198.18.0.5"]))], l4(), "allow", "foo/a")
row("ip_blocks_no_match", [allow("a", src(ipBlocks=["198.18.128.0/18"]))], l4(), "deny", None)
row("ip_blocks_ipv6", [allow("a", src(ipBlocks=["2001:2:0:ff00::/56"]))], l4(ip="2001:2:0:ff00::5", dip="2001:2::7"),
    "allow", "foo/a")
row("ip_blocks_ipv4_cidr_ipv6_source", [allow("a", src(ipBlocks=["198.18.0.0/16"]))],
    l4(ip="2001:2:0:ff00::5", dip="2001:2::7"), "deny", None)
row("deny_ip_block_docs", [deny("deny-ip", src(ipBlocks=["1.2.3.4"]))], l4(ip="1.2.3.4"), "deny",
    "foo/deny-ip")
row("deny_ip_block_other_ip", [deny("deny-ip", src(ipBlocks=["1.2.3.4"]))], l4(), "allow", None)
row("deny_not_ip_blocks_outside", [deny("d", src(notIpBlocks=["198.18.0.0/16"]))],
    l4(ip="192.0.2.1"), "deny", "foo/d")
row("deny_not_ip_blocks_inside", [deny("d", src(notIpBlocks=["198.18.0.0/16"]))], l4(), "allow",
    None)
row("remote_ip_blocks_l7", [allow("a", src(remoteIpBlocks=["203.0.113.0/24"]))],
    l7(remote="203.0.113.9"), "allow", "foo/a")
row("remote_ip_defaults_to_source_ip_no_match", [allow("a", src(remoteIpBlocks=["203.0.113.0/24"]))],
    l7(), "deny", None)
row("remote_ip_defaults_to_source_ip_match", [allow("a", src(remoteIpBlocks=["198.18.0.0/16"]))],
    l7(), "allow", "foo/a")
row("deny_not_remote_ip_blocks", [deny("d", src(notRemoteIpBlocks=["203.0.113.0/24"]))],
    l7(remote="198.51.100.1"), "deny", "foo/d")
row("deny_not_remote_ip_blocks_inside", [deny("d", src(notRemoteIpBlocks=["203.0.113.0/24"]))],
    l7(remote="203.0.113.1"), "allow", None)
row("remote_ip_blocks_dropped_at_l4", [allow("a", src(remoteIpBlocks=["198.18.0.0/16"]))], l4(),
    "deny", None)
row("request_principals_exact", [allow("a", src(requestPrincipals=["https://issuer.example.com/user-1"]))],
    l7(auth=jwt()), "allow", "foo/a")
row("request_principals_other_subject",
    [allow("a", src(requestPrincipals=["https://issuer.example.com/user-2"]))], l7(auth=jwt()),
    "deny", None)
row("request_principals_presence_no_jwt", [allow("a", src(requestPrincipals=["*"]))], l7(),
    "deny", None)
row("request_principals_presence_jwt", [allow("a", src(requestPrincipals=["*"]))],
    l7(auth=jwt()), "allow", "foo/a")
row("request_principals_prefix", [allow("a", src(requestPrincipals=["https://issuer.example.com/*"]))],
    l7(auth=jwt()), "allow", "foo/a")
row("request_principals_suffix", [allow("a", src(requestPrincipals=["*/user-1"]))],
    l7(auth=jwt()), "allow", "foo/a")
row("request_principals_from_iss_sub_claims",
    [allow("a", src(requestPrincipals=["https://issuer.example.com/user-1"]))],
    l7(auth={"claims": {"iss": "https://issuer.example.com", "sub": "user-1"}}), "allow", "foo/a")
row("request_principals_split_at_last_slash",
    [allow("a", src(requestPrincipals=["https://issuer.example.com/tenant/*"]))],
    l7(auth=jwt("https://issuer.example.com/tenant/user-9")), "allow", "foo/a")
row("deny_not_request_principals_without_jwt",
    [deny("require-jwt", src(notRequestPrincipals=["*"]))], l7(), "deny", "foo/require-jwt")
row("deny_not_request_principals_with_jwt",
    [deny("require-jwt", src(notRequestPrincipals=["*"]))], l7(auth=jwt()), "allow", None)
row("request_principals_dropped_at_l4", [allow("a", src(requestPrincipals=["*"]))], l4(), "deny",
    None, text=["node tunnel (L4) ignores it"])
row("not_request_principals_allow", [allow("a", src(notRequestPrincipals=["*/banned"]))],
    l7(auth=jwt()), "allow", "foo/a")

# C. Operation fields (reference: Operation; paths; normalization).
row("ports_match", [allow("a", op(ports=["8080"]))], l4(), "allow", "foo/a")
row("ports_no_match", [allow("a", op(ports=["8080"]))], l4(port=9090), "deny", None)
row("not_ports_excluded", [allow("a", op(notPorts=["8080"]))], l4(), "deny", None)
row("not_ports_other", [allow("a", op(notPorts=["8080"]))], l4(port=9090), "allow", "foo/a")
row("deny_port_22", [deny("d", op(ports=["22"]))], l4(port=22), "deny", "foo/d")
row("deny_port_22_other_port", [deny("d", op(ports=["22"]))], l4(), "allow", None)
row("ports_at_l7", [allow("a", op(ports=["8080"]))], l7(), "allow", "foo/a")
row("hosts_exact", [allow("a", op(hosts=["httpbin.foo"]))], l7(), "allow", "foo/a")
row("hosts_case_insensitive", [allow("a", op(hosts=["HTTPBIN.Foo"]))], l7(), "allow", "foo/a")
row("hosts_suffix", [allow("a", op(hosts=["*.foo"]))], l7(), "allow", "foo/a")
row("hosts_prefix", [allow("a", op(hosts=["httpbin.*"]))], l7(), "allow", "foo/a")
row("hosts_no_match", [allow("a", op(hosts=["other.foo"]))], l7(), "deny", None)
row("not_hosts", [allow("a", op(notHosts=["httpbin.foo"]))], l7(), "deny", None)
row("not_hosts_other", [allow("a", op(notHosts=["admin.foo"]))], l7(), "allow", "foo/a")
row("hosts_dropped_at_l4", [allow("a", op(hosts=["httpbin.foo"]))], l4(), "deny", None)
row("methods_get", [allow("a", op(methods=["GET"]))], l7(), "allow", "foo/a")
row("methods_post_not_allowed", [allow("a", op(methods=["GET"]))], l7(method="POST"), "deny", None)
row("methods_any_of", [allow("a", op(methods=["GET", "HEAD"]))], l7(method="HEAD"), "allow",
    "foo/a")
row("not_methods_get", [allow("a", op(notMethods=["DELETE"]))], l7(), "allow", "foo/a")
row("not_methods_delete", [allow("a", op(notMethods=["DELETE"]))], l7(method="DELETE"), "deny",
    None)
row("deny_methods_delete", [deny("d", op(methods=["DELETE"]))], l7(method="DELETE"), "deny",
    "foo/d")
row("paths_exact", [allow("a", op(paths=["/info"]))], l7(path="/info"), "allow", "foo/a")
row("paths_exact_longer", [allow("a", op(paths=["/info"]))], l7(path="/info/x"), "deny", None)
row("paths_prefix", [allow("a", op(paths=["/info*"]))], l7(path="/info/x"), "allow", "foo/a")
row("paths_suffix", [allow("a", op(paths=["*/info"]))], l7(path="/a/b/info"), "allow", "foo/a")
row("paths_presence", [allow("a", op(paths=["*"]))], l7(path="/anything"), "allow", "foo/a")
row("paths_query_ignored", [allow("a", op(paths=["/info"]))], l7(path="/info?x=1&y=2"), "allow",
    "foo/a")
row("paths_template_one_segment", [allow("a", op(paths=["/api/{*}/users"]))],
    l7(path="/api/v1/users"), "allow", "foo/a")
row("paths_template_one_segment_only", [allow("a", op(paths=["/api/{*}/users"]))],
    l7(path="/api/v1/v2/users"), "deny", None)
row("paths_template_any", [allow("a", op(paths=["/api/{**}"]))], l7(path="/api/a/b/c"), "allow",
    "foo/a")
row("paths_template_mixed", [allow("a", op(paths=["/{*}/users/{**}/info"]))],
    l7(path="/tenant/users/a/b/info"), "allow", "foo/a")
row("paths_template_mixed_no_match", [allow("a", op(paths=["/{*}/users/{**}/info"]))],
    l7(path="/tenant/groups/a/info"), "deny", None)
row("not_paths_admin", [allow("a", op(notPaths=["/admin*"]))], l7(path="/admin/x"), "deny", None)
row("not_paths_other", [allow("a", op(notPaths=["/admin*"]))], l7(path="/info"), "allow", "foo/a")
row("normalize_dot_dot", [deny("d", op(paths=["/admin"]))], l7(path="/public/../admin"), "deny",
    "foo/d")
row("normalize_dot_segment", [deny("d", op(paths=["/admin"]))], l7(path="/./admin"), "deny",
    "foo/d")
row("normalize_unreserved_percent", [deny("d", op(paths=["/admin"]))], l7(path="/%61dmin"),
    "deny", "foo/d")
row("normalize_backslash", [deny("d", op(paths=["/admin/*"]))], l7(path="/admin\\x"), "deny",
    "foo/d")
row("base_keeps_encoded_slash", [deny("d", op(paths=["/admin/*"]))], l7(path="/admin%2Fx"),
    "allow", None)
row("decode_and_merge_slashes", [deny("d", op(paths=["/admin/*"]))], l7(path="/admin%2Fx"),
    "deny", "foo/d", mesh="pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}\n")
row("base_keeps_double_slash", [deny("d", op(paths=["/admin"]))], l7(path="//admin"), "allow",
    None)
row("merge_slashes", [deny("d", op(paths=["/admin"]))], l7(path="//admin"), "deny", "foo/d",
    mesh="pathNormalization: {normalization: MERGE_SLASHES}\n")
row("none_normalization_keeps_dot_dot", [deny("d", op(paths=["/admin"]))],
    l7(path="/public/../admin"), "allow", None, mesh="pathNormalization: {normalization: NONE}\n")
row("path_with_nul_is_rejected", [allow("a", ALL)], l7(path="/a%00b"), "deny", None)
row("paths_dropped_at_l4", [allow("a", op(paths=["/info"]))], l4(), "deny", None)
row("operation_fields_are_anded", [allow("a", op(methods=["GET"], paths=["/info"]))],
    l7(path="/other"), "deny", None)
row("to_entries_are_ored",
    [allow("a", {"to": [{"operation": {"methods": ["POST"]}},
                        {"operation": {"paths": ["/info"]}}]})], l7(path="/info"), "allow", "foo/a")
row("docs_httpbin_get_info", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"""], l7(principal="spiffe://cluster.local/ns/dev/sa/x", labels={"app": "httpbin", "version": "v1"},
         auth=jwt(iss="https://accounts.google.com", sub="u")), "allow", "foo/httpbin")
row("docs_httpbin_wrong_issuer", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - from:
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"""], l7(principal="spiffe://cluster.local/ns/dev/sa/x",
         auth=jwt(iss="https://evil.example.com", sub="u")), "deny", None)
row("docs_deny_not_get_from_dev", ["""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
    to:
    - operation:
        notMethods: ["GET"]
"""], l7(method="POST"), "deny", "foo/httpbin")
row("docs_deny_not_get_allows_get", [deny("httpbin", rule(src(notNamespaces=["foo"]),
                                                          op(notMethods=["GET"])))],
    l7(method="GET"), "allow", None)

# D. Conditions (the Authorization Policy Conditions table).
row("header_exact", [allow("a", when("request.headers[version]", ["v1"]))],
    l7(headers={"version": "v1"}), "allow", "foo/a")
row("header_name_case_insensitive", [allow("a", when("request.headers[X-Token]", ["admin"]))],
    l7(headers={"x-token": "admin"}), "allow", "foo/a")
row("header_value_prefix", [allow("a", when("request.headers[x-token]", ["adm*"]))],
    l7(headers={"x-token": "administrator"}), "allow", "foo/a")
row("header_value_case_sensitive", [allow("a", when("request.headers[x-token]", ["admin"]))],
    l7(headers={"x-token": "ADMIN"}), "deny", None)
row("header_missing", [allow("a", when("request.headers[x-token]", ["admin"]))], l7(), "deny",
    None)
row("header_presence", [allow("a", when("request.headers[x-token]", ["*"]))],
    l7(headers={"x-token": "anything"}), "allow", "foo/a")
row("header_not_values_excluded", [allow("a", when("request.headers[x-token]", not_values=["guest"]))],
    l7(headers={"x-token": "guest"}), "deny", None)
row("header_not_values_other", [allow("a", when("request.headers[x-token]", not_values=["guest"]))],
    l7(headers={"x-token": "admin"}), "allow", "foo/a")
row("header_values_and_not_values",
    [allow("a", when("request.headers[x-token]", ["a*"], ["ab"]))], l7(headers={"x-token": "ac"}),
    "allow", "foo/a")
row("header_values_and_not_values_excluded",
    [allow("a", when("request.headers[x-token]", ["a*"], ["ab"]))], l7(headers={"x-token": "ab"}),
    "deny", None)
row("header_user_agent_deny", [deny("d", when("request.headers[User-Agent]", ["curl/*"]))],
    l7(headers={"user-agent": "curl/8.5.0"}), "deny", "foo/d")
row("condition_source_ip_l4", [allow("a", when("source.ip", ["198.18.0.0/24"]))], l4(), "allow",
    "foo/a")
row("condition_source_ip_not_values", [allow("a", when("source.ip", not_values=["198.18.0.5"]))],
    l4(), "deny", None)
row("condition_remote_ip", [allow("a", when("remote.ip", ["203.0.113.9"]))],
    l7(remote="203.0.113.9"), "allow", "foo/a")
row("condition_remote_ip_dropped_at_l4", [allow("a", when("remote.ip", ["198.18.0.5"]))], l4(),
    "deny", None)
row("condition_source_namespace", [allow("a", when("source.namespace", ["bar"]))], l4(), "allow",
    "foo/a")
row("condition_source_namespace_no_match", [allow("a", when("source.namespace", ["baz"]))], l4(),
    "deny", None)
row("condition_source_principal", [allow("a", when("source.principal", [SLEEP_P]))], l4(),
    "allow", "foo/a")
row("condition_source_principal_not_values",
    [deny("d", when("source.principal", not_values=[SLEEP_P]))], l4(principal=OTHER), "deny",
    "foo/d")
row("condition_request_auth_principal",
    [allow("a", when("request.auth.principal", ["https://issuer.example.com/user-1"]))],
    l7(auth=jwt()), "allow", "foo/a")
row("condition_request_auth_principal_no_jwt",
    [allow("a", when("request.auth.principal", ["*"]))], l7(), "deny", None)
row("condition_audiences_from_aud_claim", [allow("a", when("request.auth.audiences", ["api"]))],
    l7(auth=jwt(aud="api")), "allow", "foo/a")
row("condition_audiences_from_aud_list", [allow("a", when("request.auth.audiences", ["api"]))],
    l7(auth=jwt(aud=["web", "api"])), "allow", "foo/a")
row("condition_audiences_no_match", [allow("a", when("request.auth.audiences", ["api"]))],
    l7(auth=jwt(aud="web")), "deny", None)
row("condition_audiences_explicit",
    [allow("a", when("request.auth.audiences", ["api"]))],
    l7(auth={"principal": "https://issuer.example.com/user-1", "audiences": ["api"]}), "allow",
    "foo/a")
row("condition_presenter_from_azp", [allow("a", when("request.auth.presenter", ["web-app"]))],
    l7(auth=jwt(azp="web-app")), "allow", "foo/a")
row("condition_presenter_explicit", [allow("a", when("request.auth.presenter", ["web-app"]))],
    l7(auth={"principal": "https://issuer.example.com/user-1", "presenter": "web-app"}), "allow",
    "foo/a")
row("condition_presenter_no_match", [allow("a", when("request.auth.presenter", ["web-app"]))],
    l7(auth=jwt(azp="cli")), "deny", None)
row("claims_list_any_element", [allow("a", when("request.auth.claims[groups]", ["admins"]))],
    l7(auth=jwt(groups=["dev", "admins"])), "allow", "foo/a")
row("claims_list_no_element", [allow("a", when("request.auth.claims[groups]", ["admins"]))],
    l7(auth=jwt(groups=["dev"])), "deny", None)
row("claims_string", [allow("a", when("request.auth.claims[sub]", ["user-1"]))],
    l7(auth=jwt(sub="user-1")), "allow", "foo/a")
row("claims_nested", [allow("a", when("request.auth.claims[realm][roles]", ["admin"]))],
    l7(auth=jwt(realm={"roles": ["user", "admin"]})), "allow", "foo/a")
row("claims_nested_missing", [allow("a", when("request.auth.claims[realm][roles]", ["admin"]))],
    l7(auth=jwt(realm={"groups": ["admin"]})), "deny", None)
row("claims_number_never_matches", [allow("a", when("request.auth.claims[level]", ["5"]))],
    l7(auth=jwt(level=5)), "deny", None)
row("claims_bool_never_matches", [allow("a", when("request.auth.claims[admin]", ["true"]))],
    l7(auth=jwt(admin=True)), "deny", None)
row("claims_quoted_number_is_a_string", [allow("a", when("request.auth.claims[level]", ["5"]))],
    l7(auth=jwt(level="5")), "allow", "foo/a")
row("claims_not_values", [allow("a", when("request.auth.claims[groups]", not_values=["banned"]))],
    l7(auth=jwt(groups=["admins"])), "allow", "foo/a")
row("claims_not_values_excluded",
    [allow("a", when("request.auth.claims[groups]", not_values=["banned"]))],
    l7(auth=jwt(groups=["admins", "banned"])), "deny", None)
row("claims_without_jwt", [allow("a", when("request.auth.claims[groups]", ["admins"]))], l7(),
    "deny", None)
row("condition_destination_ip", [allow("a", when("destination.ip", ["198.18.1.7"]))], l4(),
    "allow", "foo/a")
row("condition_destination_ip_no_match", [allow("a", when("destination.ip", ["198.18.1.8"]))],
    l4(), "deny", None)
row("condition_destination_port", [allow("a", when("destination.port", ["8080"]))], l4(),
    "allow", "foo/a")
row("condition_destination_port_not_values",
    [allow("a", when("destination.port", not_values=["8080"]))], l4(), "deny", None)
row("condition_sni", [allow("a", when("connection.sni", ["httpbin.foo"]))],
    l7(sni="httpbin.foo"), "allow", "foo/a")
row("condition_sni_no_match", [allow("a", when("connection.sni", ["other.foo"]))],
    l7(sni="httpbin.foo"), "deny", None)
row("conditions_are_anded",
    [allow("a", {"when": [{"key": "source.namespace", "values": ["bar"]},
                          {"key": "request.headers[x-token]", "values": ["admin"]}]})],
    l7(headers={"x-token": "guest"}), "deny", None)
row("conditions_all_match",
    [allow("a", {"when": [{"key": "source.namespace", "values": ["bar"]},
                          {"key": "request.headers[x-token]", "values": ["admin"]}]})],
    l7(headers={"x-token": "admin"}), "allow", "foo/a")
row("condition_header_dropped_at_l4", [allow("a", when("request.headers[x]", ["y"]))], l4(),
    "deny", None)
row("condition_claims_dropped_at_l4", [allow("a", when("request.auth.claims[groups]", ["a"]))],
    l4(), "deny", None)

# E. The node tunnel (L4): istiod's conversion for ztunnel drops an ALLOW rule that uses an HTTP
# attribute and keeps a DENY rule's L4 fields; CUSTOM, AUDIT and targetRefs are not enforced.
row("l4_allow_methods_dropped", [allow("a", op(methods=["GET"]))], l4(), "deny", None,
    text=["warning:  foo/a: the node tunnel (L4) cannot see HTTP attributes"])
row("l7_allow_methods_kept", [allow("a", op(methods=["GET"]))], l7(), "allow", "foo/a")
row("l4_allow_l4_rule_survives_next_to_http_rule",
    [allow("a", src(principals=[SLEEP_P]), op(methods=["GET"]))], l4(), "allow", "foo/a")
row("l4_allow_rule_with_any_http_field_dropped",
    [allow("a", rule(src(principals=[SLEEP_P]), op(methods=["GET"])))], l4(), "deny", None)
row("l4_allow_http_policy_plus_l4_policy",
    [allow("http", op(paths=["/info"])), allow("tcp", src(namespaces=["bar"]))], l4(), "allow",
    "foo/tcp")
row("l4_deny_keeps_ports", [deny("d", op(ports=["8080"], methods=["POST"]))], l4(), "deny",
    "foo/d")
row("l4_deny_keeps_ports_other_port", [deny("d", op(ports=["8080"], methods=["POST"]))],
    l4(port=9090), "allow", None)
row("l4_deny_keeps_namespaces", [deny("d", src(namespaces=["bar"], requestPrincipals=["*"]))],
    l4(), "deny", "foo/d")
row("l4_deny_keeps_namespaces_other", [deny("d", src(namespaces=["baz"], requestPrincipals=["*"]))],
    l4(), "allow", None)
row("l4_deny_keeps_not_ports", [deny("d", op(notPorts=["8080"], paths=["/admin"]))],
    l4(port=9090), "deny", "foo/d")
row("l7_deny_needs_http_part_too", [deny("d", op(ports=["8080"], methods=["POST"]))], l7(),
    "allow", None)
row("l4_custom_not_enforced", [custom("ext", "ext-authz-http", ALL)], l4(), "allow", None,
    mesh=MESH, text=["not enforced at L4: foo/ext (CUSTOM)"])
row("l4_audit_not_enforced", [audit("log", ALL)], l4(), "allow", None,
    text=["not enforced at L4: foo/log (AUDIT)"])
row("l4_target_refs_not_applied", [deny("d", ALL, target_refs=[gateway()])], l4(), "allow", None)
row("l4_allow_when_l4_conditions", [allow("a", when("destination.port", ["8080"]))], l4(),
    "allow", "foo/a")
row("l4_ip_blocks_and_ports", [allow("a", rule(src(ipBlocks=["198.18.0.0/16"]), op(ports=["8080"])))],
    l4(), "allow", "foo/a")

# F. Waypoints (L7 with targetRefs).
row("waypoint_gateway_target_deny", [deny("d", ALL, target_refs=[gateway()])],
    l7(waypoint=WAYPOINT), "deny", "foo/d")
row("waypoint_other_gateway_not_applied", [deny("d", ALL, target_refs=[gateway("other")])],
    l7(waypoint=WAYPOINT), "allow", None)
row("waypoint_service_target_get", [allow("a", op(methods=["GET"]), target_refs=[service()])],
    l7(waypoint=WAYPOINT), "allow", "foo/a")
row("waypoint_service_target_post", [allow("a", op(methods=["GET"]), target_refs=[service()])],
    l7(method="POST", waypoint=WAYPOINT), "deny", None)
row("waypoint_other_service_not_applied", [deny("d", ALL, target_refs=[service("other")])],
    l7(waypoint=WAYPOINT), "allow", None)
row("waypoint_ignores_selector_policies", [deny("d", ALL, selector={"app": "httpbin"})],
    l7(waypoint=WAYPOINT), "allow", None)
row("waypoint_ignores_namespace_policies", [deny("d", ALL)], l7(waypoint=WAYPOINT), "allow", None)
row("waypoint_gateway_class_in_root",
    [deny("d", ALL, ns="istio-system",
          target_refs=[{"group": "gateway.networking.k8s.io", "kind": "GatewayClass",
                        "name": "istio-waypoint"}])],
    l7(waypoint=WAYPOINT), "deny", "istio-system/d")
row("waypoint_gateway_class_outside_root_ignored",
    [deny("d", ALL, target_refs=[{"group": "gateway.networking.k8s.io", "kind": "GatewayClass",
                                  "name": "istio-waypoint"}])],
    l7(waypoint=WAYPOINT), "allow", None)
row("waypoint_single_target_ref", [deny("d", ALL, target_ref=gateway())], l7(waypoint=WAYPOINT),
    "deny", "foo/d")
row("waypoint_service_entry_target",
    [deny("d", ALL, target_refs=[{"group": "networking.istio.io", "kind": "ServiceEntry",
                                  "name": "httpbin"}])],
    l7(waypoint=WAYPOINT), "deny", "foo/d")
row("waypoint_service_in_other_namespace",
    [deny("d", ALL, ns="shared", target_refs=[service("api")])],
    l7(waypoint={"name": "waypoint", "services": [{"name": "api", "namespace": "shared"}]}),
    "deny", "shared/d")
row("waypoint_custom", [custom("ext", "ext-authz-http", op(paths=["/admin*"]),
                               target_refs=[gateway()])],
    l7(path="/admin", waypoint=WAYPOINT), "ext_authz", "foo/ext", provider="ext-authz-http",
    after="allow", mesh=MESH)
row("waypoint_same_request_at_l4_uses_selector",
    [deny("waypoint-deny", ALL, target_refs=[gateway()]),
     allow("ztunnel-allow", src(namespaces=["bar"]), selector={"app": "httpbin"})],
    l4(waypoint=WAYPOINT), "allow", "foo/ztunnel-allow")

# G. Dry run (annotation istio.io/dry-run).
row("dry_run_deny_not_enforced", [deny("d", ALL, dry_run="true")], l4(), "allow", None,
    text=["(dry run)", "would deny", "would be deny"])
row("dry_run_deny_with_enforced_allow",
    [deny("d", ALL, dry_run="true"), allow("a", src(namespaces=["bar"]))], l4(), "allow", "foo/a",
    text=["would deny"])
row("dry_run_allow_only", [allow("a", src(namespaces=["x"]), dry_run="true")], l4(), "allow", None,
    text=["did not match", "would be deny"])
row("dry_run_false_is_enforced", [deny("d", ALL, dry_run="false")], l4(), "deny", "foo/d")
row("dry_run_one_is_true", [deny("d", ALL, dry_run="1")], l4(), "allow", None)
row("dry_run_l7_path", [deny("d", op(paths=["/admin"]), dry_run="true")], l7(path="/admin"),
    "allow", None, text=["would deny"])
row("dry_run_on_audit_rejected", [audit("a", ALL, dry_run="true")], l7(), "allow", None,
    stderr=["AuthorizationPolicy foo/a", "only supported for ALLOW and DENY"])

# H. AUDIT.
row("audit_matches_logs_only", [audit("log", ALL)], l7(), "allow", None,
    text=["audit:    AUDIT policy foo/log rule 0 matched"])
row("audit_with_deny", [audit("log", ALL), deny("d", op(methods=["GET"]))], l7(), "deny", "foo/d",
    text=["audit:"])
row("audit_not_matching", [audit("log", op(paths=["/admin"]))], l7(), "allow", None)
row("audit_with_allow_not_matching", [audit("log", ALL), allow("a", op(methods=["POST"]))], l7(),
    "deny", None)

# I. CUSTOM (ext_authz): evaluated first; the rest decide if the provider allows.
row("custom_matches", [custom("ext", "ext-authz-http", op(paths=["/admin/*"]))],
    l7(path="/admin/users"), "ext_authz", "foo/ext", provider="ext-authz-http", after="allow",
    mesh=MESH)
row("custom_not_matching", [custom("ext", "ext-authz-http", op(paths=["/admin/*"]))],
    l7(path="/public"), "allow", None, mesh=MESH)
row("custom_then_deny", [custom("ext", "ext-authz-http", ALL), deny("d", op(methods=["GET"]))],
    l7(), "ext_authz", "foo/ext", provider="ext-authz-http", after="deny", mesh=MESH)
row("custom_then_allow_not_matching",
    [custom("ext", "ext-authz-http", ALL), allow("a", op(methods=["POST"]))], l7(), "ext_authz",
    "foo/ext", provider="ext-authz-http", after="deny", mesh=MESH)
row("custom_then_allow_matching",
    [custom("ext", "ext-authz-http", ALL), allow("a", op(methods=["GET"]))], l7(), "ext_authz",
    "foo/ext", provider="ext-authz-http", after="allow", mesh=MESH)
row("custom_grpc_provider", [custom("ext", "ext-authz-grpc", ALL)], l7(), "ext_authz", "foo/ext",
    provider="ext-authz-grpc", after="allow", mesh=MESH)
# A provider extensionProviders does not define: istiod turns the rules into DENY rules, so what
# they match is denied (at L4 too), never let through.
row("custom_unknown_provider_denies", [custom("ext", "nope", ALL)], l7(), "deny", "foo/ext",
    mesh=MESH, stderr=["AuthorizationPolicy foo/ext", "spec.provider.name",
                       "not in the mesh config's extensionProviders", "its rules deny"],
    text=["\"nope\" is not defined in extensionProviders"])
row("custom_unknown_provider_denies_l4", [custom("ext", "nope", ALL)], l4(), "deny", "foo/ext",
    mesh=MESH, stderr=["its rules deny"])
row("custom_unknown_provider_not_matching",
    [custom("ext", "nope", op(paths=["/admin/*"]))], l7(path="/public"), "allow", None,
    mesh=MESH, stderr=["its rules deny"])
row("custom_tracing_provider_denies", [custom("ext", "otel", ALL)], l7(), "deny", "foo/ext",
    mesh=MESH, stderr=["'otel' is a opentelemetry extension provider"])
row("custom_without_mesh_denies", [custom("ext", "ext-authz-http", ALL)], l7(), "deny", "foo/ext",
    stderr=["defines no envoyExtAuthzHttp"])
row("custom_with_principals_rejected",
    [custom("ext", "ext-authz-http", src(principals=[SLEEP_P]))], l7(), "allow", None, mesh=MESH,
    stderr=["spec.rules[0].from[0].source.principals", "not supported with action CUSTOM"])
row("custom_with_ip_blocks", [custom("ext", "ext-authz-http", src(ipBlocks=["198.18.0.0/16"]))],
    l7(), "ext_authz", "foo/ext", provider="ext-authz-http", after="allow", mesh=MESH)
row("custom_with_header_condition",
    [custom("ext", "ext-authz-http", when("request.headers[x-ext-authz]", ["allow"]))],
    l7(headers={"x-ext-authz": "allow"}), "ext_authz", "foo/ext", provider="ext-authz-http",
    after="allow", mesh=MESH)
row("custom_with_not_paths", [custom("ext", "ext-authz-http", op(notPaths=["/healthz"]))],
    l7(path="/healthz"), "allow", None, mesh=MESH)
row("custom_in_root_namespace", [custom("ext", "ext-authz-http", ALL, ns="istio-system")], l7(),
    "ext_authz", "istio-system/ext", provider="ext-authz-http", after="allow", mesh=MESH)
row("custom_dry_run_rejected", [custom("ext", "ext-authz-http", ALL, dry_run="true")], l7(),
    "allow", None, mesh=MESH, stderr=["only supported for ALLOW and DENY"])
row("custom_with_deny_all_after", [custom("ext", "ext-authz-grpc", ALL), deny("d", ALL)], l7(),
    "ext_authz", "foo/ext", provider="ext-authz-grpc", after="deny", mesh=MESH)
row("custom_selector", [custom("ext", "ext-authz-http", ALL, selector={"app": "httpbin"})], l7(),
    "ext_authz", "foo/ext", provider="ext-authz-http", after="allow", mesh=MESH)

# J. mTLS as the node tunnel applies PeerAuthentication, reported beside the decision.
row("mtls_default_permissive", [], l4(), "allow", None, mtls=("PERMISSIVE", "accept"))
row("mtls_namespace_strict", [], l4(), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("default", "STRICT")])
row("mtls_mesh_strict", [], l4(), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("default", "STRICT", ns="istio-system")])
row("mtls_namespace_overrides_mesh", [], l4(), "allow", None, mtls=("PERMISSIVE", "accept"),
    peers=[pa("default", "STRICT", ns="istio-system"), pa("default", "PERMISSIVE")])
row("mtls_workload_disable", [], l4(), "allow", None, mtls=("DISABLE", "accept"),
    peers=[pa("default", "STRICT"), pa("httpbin", "DISABLE", selector={"app": "httpbin"})])
row("mtls_port_level_disable", [], l4(port=8080), "allow", None, mtls=("DISABLE", "accept"),
    peers=[pa("httpbin", "STRICT", selector={"app": "httpbin"}, ports={8080: "DISABLE"})])
row("mtls_port_level_other_port", [], l4(port=9090), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("httpbin", "STRICT", selector={"app": "httpbin"}, ports={8080: "DISABLE"})])
row("mtls_root_selector_ignored", [], l4(), "allow", None, mtls=("PERMISSIVE", "accept"),
    peers=[pa("root-sel", "STRICT", ns="istio-system", selector={"app": "httpbin"})],
    stderr=["is ignored, as in Istio"])
row("mtls_workload_selector_other", [], l4(), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("default", "STRICT"), pa("other", "DISABLE", selector={"app": "other"})])
row("mtls_unset_inherits", [], l4(), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("default", "STRICT"), pa("httpbin", "UNSET", selector={"app": "httpbin"})])
row("mtls_plaintext_strict_note", [allow("a", ALL)], l4(principal=None), "deny", None,
    mtls=("STRICT", "reject"), peers=[pa("default", "STRICT")],
    text=["decision: deny (STRICT mTLS refuses this plaintext client before authorization)",
          "policies: allow (if the client used mTLS)",
          "refused by STRICT mTLS before authorization"])
row("mtls_v1beta1", [], l4(), "allow", None, mtls=("STRICT", "reject"),
    peers=[pa("default", "STRICT", api="security.istio.io/v1beta1")])
row("mtls_with_deny", [deny("d", src(namespaces=["bar"]))], l4(), "deny", "foo/d",
    mtls=("STRICT", "reject"), peers=[pa("default", "STRICT")])
row("mtls_other_namespace_policy", [], l4(), "allow", None, mtls=("PERMISSIVE", "accept"),
    peers=[pa("default", "STRICT", ns="bar")])
row("mtls_plaintext_allow_principals_refused", [allow("a", src(principals=[SLEEP_P]))],
    l4(principal=None), "deny", None, mtls=("PERMISSIVE", "accept"))

# K. Config problems: the bad resource is skipped with file, resource and field; the rest apply.
row("bad_cidr_skipped_good_applies",
    [deny("bad", src(ipBlocks=["198.18.0.0/33"])), allow("good", src(namespaces=["bar"]))], l4(),
    "allow", "foo/good",
    stderr=["policies.yaml:", "AuthorizationPolicy foo/bad",
            "spec.rules[0].from[0].source.ipBlocks[0]", "(skipped)"])
row("unknown_field_skipped",
    [ap("bad", "DENY", [{"from": [{"source": {"notPrincipal": ["x"]}}]}]), allow("good", ALL)],
    l4(), "allow", "foo/good", stderr=["spec.rules[0].from[0].source.notPrincipal: unknown field"])
row("selector_and_target_refs_skipped",
    [ap("bad", "DENY", [{}], selector={"app": "httpbin"}, target_refs=[gateway()])], l4(),
    "allow", None, stderr=["only one of selector, targetRef and targetRefs"])
row("deny_without_rules_skipped", [ap("bad", "DENY")], l4(), "allow", None,
    stderr=["DENY without rules"])
row("bad_port_skipped", [deny("bad", op(ports=["80800"]))], l4(), "allow", None,
    stderr=["spec.rules[0].to[0].operation.ports[0]", "not a valid port"])
row("unparseable_file_others_apply", [deny("d", ALL)], l4(), "deny", "foo/d",
    files={"broken.yaml": "spec: [unclosed\n"}, stderr=["broken.yaml", "not valid YAML"])
row("duplicate_policy_first_file_wins", [deny("d", ALL)], l4(), "deny", "foo/d",
    files={"zz-dup.yaml": allow("d", ALL)}, stderr=["is also defined in policies.yaml"])

# L. Trust domains (Istio 1.30 trustDomains / notTrustDomains, the source.trustDomain and
# source.serviceAccount conditions) and meshConfig trustDomainAliases (istiod's trust-domain
# migration: principals and trust domains expanded over the bundle; cluster.local is local).
OLD_SLEEP = "spiffe://old.example/ns/bar/sa/sleep"
MIGRATING = "trustDomain: new.example\ntrustDomainAliases: [old.example]\n"
row("trust_domains_allow", [allow("td", src(trustDomains=["cluster.local"]))], l4(), "allow",
    "foo/td", text=['source.trustDomain "cluster.local" matched trustDomains ["cluster.local"]'])
row("trust_domains_other", [allow("td", src(trustDomains=["other.example"]))], l4(), "deny", None,
    text=['source.trustDomain "cluster.local" did not match trustDomains ["other.example"]'])
row("trust_domains_suffix_in_segment", [allow("td", src(trustDomains=["*.local"]))], l4(),
    "allow", "foo/td")
row("trust_domains_wildcard_not_past_segment", [allow("td", src(trustDomains=["*sleep"]))], l4(),
    "deny", None)
row("trust_domains_presence_plaintext", [allow("td", src(trustDomains=["*"]))], l4(principal=None),
    "deny", None, text=["source.trustDomain (none: plaintext)"])
row("not_trust_domains_deny", [deny("td", src(notTrustDomains=["cluster.local"]))],
    l4(principal="spiffe://evil.example/ns/bar/sa/sleep"), "deny", "foo/td",
    text=['source.trustDomain "evil.example" matched none of notTrustDomains'])
row("condition_trust_domain", [deny("td", when("source.trustDomain", ["cluster.*"]))], l7(),
    "deny", "foo/td")
row("condition_service_account", [allow("sa", when("source.serviceAccount", ["bar/sleep"]))],
    l4(), "allow", "foo/sa", text=['source.serviceAccount "bar/sleep" matched values'])
row("condition_service_account_short", [allow("sa", when("source.serviceAccount", ["sleep"]))],
    l4(), "deny", None)
row("bad_trust_domain_pattern_skipped", [deny("bad", src(trustDomains=["a*b"])), allow("good", ALL)],
    l4(), "allow", "foo/good",
    stderr=["AuthorizationPolicy foo/bad", "spec.rules[0].from[0].source.trustDomains[0]",
            "only allowed at the start or end of a trust domain"])
row("alias_principal_matches_old_domain",
    [allow("sleep", src(principals=["new.example/ns/bar/sa/sleep"]))], l4(principal=OLD_SLEEP),
    "allow", "foo/sleep", mesh=MIGRATING,
    text=['"new.example/ns/bar/sa/sleep", "old.example/ns/bar/sa/sleep"'])
row("alias_cluster_local_principal", [allow("sleep", src(principals=[SLEEP_P]))],
    l4(principal=OLD_SLEEP), "allow", "foo/sleep", mesh=MIGRATING)
row("cluster_local_principal_is_the_local_domain", [allow("sleep", src(principals=[SLEEP_P]))],
    l4(), "deny", None, mesh="trustDomain: new.example\n")
row("alias_trust_domains", [deny("td", src(trustDomains=["new.example"]))],
    l4(principal=OLD_SLEEP), "deny", "foo/td", mesh=MIGRATING)
row("no_alias_no_match", [allow("sleep", src(principals=["new.example/ns/bar/sa/sleep"]))],
    l4(principal=OLD_SLEEP), "deny", None, mesh="trustDomain: new.example\n")


# ---- The runner --------------------------------------------------------------------------------

class PolicyCheckTable(unittest.TestCase):
    """One test per row; see ROWS."""

    def setUp(self):
        self.assertTrue(os.access(AMBITCTL, os.X_OK), f"{AMBITCTL} is not built")

    def run_row(self, r):
        with tempfile.TemporaryDirectory(prefix="ambit-policy-check-") as tmp:
            cfg = os.path.join(tmp, "config")
            os.mkdir(cfg)
            if r.docs:
                with open(os.path.join(cfg, "policies.yaml"), "w") as f:
                    f.write("\n---\n".join(r.docs) + "\n")
            if r.peers:
                with open(os.path.join(cfg, "peers.yaml"), "w") as f:
                    f.write("\n---\n".join(r.peers) + "\n")
            if r.mesh is not None:
                with open(os.path.join(cfg, "mesh.yaml"), "w") as f:
                    f.write(r.mesh)
            for name, content in r.files.items():
                with open(os.path.join(cfg, name), "w") as f:
                    f.write(content)
            req = os.path.join(tmp, "request.yaml")
            with open(req, "w") as f:
                json.dump(r.request, f)

            code, out, err = ambitctl("policy", "check", "--config", cfg, "--request", req,
                                      "-o", "json")
            self.assertEqual(code, 0, f"exit {code}\nstdout: {out}\nstderr: {err}")
            doc = json.loads(out)
            self.assertEqual(list(doc), JSON_KEYS, out)
            self.assertEqual(doc["decision"], r.decision, f"\n{out}\n{err}")
            if r.policy is not ANY:
                self.assertEqual(doc["policy"], r.policy, out)
            self.assertEqual(doc["provider"], r.provider, out)
            self.assertEqual(doc["afterExtAuthzAllow"], r.after, out)
            self.assertIsInstance(doc["reason"], str)
            self.assertTrue(doc["reason"], out)
            # STRICT refuses a plaintext client at L4 before any policy: the decision is deny.
            refused = (r.mtls[0] == "STRICT" and r.request.get("enforcement") == "L4" and
                       "principal" not in r.request.get("source", {}))
            self.assertEqual(doc["mtls"], {"mode": r.mtls[0], "plaintext": r.mtls[1],
                                           "refusedPlaintextSource": refused}, out)
            if r.request.get("enforcement") != "L7" or "auth" in r.request:
                self.assertIsNone(doc["authn"], out)  # nothing to authenticate
            else:
                self.assertEqual(doc["authn"]["result"], "allow", out)
            if r.stderr:
                for s in r.stderr:
                    self.assertIn(s, err)
            else:
                self.assertEqual(err, "", "unexpected config problems")

            code, text, err = ambitctl("policy", "check", "--config", cfg, "--request", req)
            self.assertEqual(code, 0, err)
            self.assertTrue(text.startswith(f"decision: {r.decision}"), text)
            for s in r.text:
                self.assertIn(s, text)
            # For scripts: 1 on deny, 0 otherwise, same output.
            code, text2, err = ambitctl("policy", "check", "--config", cfg, "--request", req,
                                        "--exit-code")
            self.assertEqual(code, 1 if r.decision == "deny" else 0, err)
            self.assertEqual(text2, text)


def _make_test(r):
    def test(self):
        self.run_row(r)
    return test


for _i, _r in enumerate(ROWS):
    setattr(PolicyCheckTable, f"test_{_i:03d}_{_r.name}", _make_test(_r))


class PolicyCheckErrors(unittest.TestCase):
    """Bad request files, bad flags, a missing config directory."""

    def setUp(self):
        self.assertTrue(os.access(AMBITCTL, os.X_OK), f"{AMBITCTL} is not built")
        self.tmp = tempfile.TemporaryDirectory(prefix="ambit-policy-check-")
        self.cfg = os.path.join(self.tmp.name, "config")
        os.mkdir(self.cfg)

    def tearDown(self):
        self.tmp.cleanup()

    def check(self, content, *expected):
        req = os.path.join(self.tmp.name, "req.yaml")
        with open(req, "w") as f:
            f.write(content)
        code, out, err = ambitctl("policy", "check", "--config", self.cfg, "--request", req)
        self.assertEqual(code, 1, f"stdout: {out}\nstderr: {err}")
        self.assertEqual(out, "")
        self.assertIn("req.yaml", err)
        for s in expected:
            self.assertIn(s, err)
        return err

    def test_not_yaml(self):
        self.check("target: [unclosed\n", "not valid YAML")

    def test_not_a_map(self):
        self.check("- a\n- b\n", "expected a map")

    def test_missing_target_and_destination(self):
        self.check("enforcement: L4\n", "field target: is required",
                   "field destination: is required")

    def test_missing_namespace(self):
        self.check("target: {labels: {app: a}}\ndestination: {port: 80}\n",
                   "field target.namespace: is required")

    def test_bad_source_ip(self):
        self.check("target: {namespace: foo}\nsource: {ip: 198.18.0.300}\n"
                   "destination: {port: 80}\n",
                   "req.yaml:2: field source.ip: '198.18.0.300' is not an IPv4 or IPv6 address")

    def test_bad_port(self):
        self.check("target: {namespace: foo}\ndestination: {port: 70000}\n",
                   "field destination.port: '70000' is not a port number")

    def test_unknown_field(self):
        self.check("target: {namespace: foo}\ndestination: {port: 80}\nsorce: {ip: 1.2.3.4}\n",
                   "field sorce: unknown field")

    def test_unknown_nested_field(self):
        self.check("target: {namespace: foo}\ndestination: {port: 80, adress: 1.2.3.4}\n",
                   "field destination.adress: unknown field")

    def test_bad_enforcement(self):
        self.check("enforcement: L5\ntarget: {namespace: foo}\ndestination: {port: 80}\n",
                   "field enforcement: 'L5' is not L4")

    def test_http_at_l4(self):
        self.check("target: {namespace: foo}\ndestination: {port: 80}\nhttp: {method: GET}\n",
                   "field http: is only for enforcement: L7")

    def test_l7_without_http(self):
        self.check("enforcement: L7\ntarget: {namespace: foo}\ndestination: {port: 80}\n",
                   "field http: is required for enforcement: L7")

    def test_l7_without_method(self):
        self.check("enforcement: L7\ntarget: {namespace: foo}\ndestination: {port: 80}\n"
                   "http: {path: /}\n", "field http.method: is required")

    def test_principal_not_spiffe(self):
        self.check("target: {namespace: foo}\nsource: {principal: cluster.local/ns/a/sa/b}\n"
                   "destination: {port: 80}\n", "field source.principal:", "not a SPIFFE ID")

    def test_auth_without_principal(self):
        self.check("enforcement: L7\ntarget: {namespace: foo}\ndestination: {port: 80}\n"
                   "http: {method: GET, path: /}\nauth: {claims: {groups: [a]}}\n",
                   "field auth.principal: is required unless claims has iss and sub")

    def test_every_problem_is_listed(self):
        err = self.check("enforcement: L5\ntarget: {namespace: foo}\nsource: {ip: x}\n"
                         "destination: {port: 0}\n", "enforcement", "source.ip",
                         "destination.port")
        self.assertIn("bad request file", err)

    def test_unquoted_query_gets_a_hint(self):
        self.check("enforcement: L7\ntarget: {namespace: foo}\ndestination: {port: 80}\n"
                   "http: {method: GET, path: /get?x=1}\n",
                   "req.yaml:4:", "not valid YAML", "quote values that contain '?'")

    def test_issue_example(self):
        req = os.path.join(self.tmp.name, "req.yaml")
        with open(req, "w") as f:
            f.write("""enforcement: L7            # L7 = an HTTP proxy (waypoint)
target: {namespace: foo, labels: {app: httpbin},
         waypoint: {name: waypoint, services: [{name: httpbin, namespace: foo}]}}
source: {principal: spiffe://cluster.local/ns/bar/sa/sleep, ip: 198.18.0.5, remoteIp: 198.19.0.9}
destination: {ip: 198.18.1.7, port: 8080}
http: {host: httpbin.foo, method: GET, path: "/get?x=1", headers: {x-token: admin}}
auth: {principal: https://issuer.example.com/user-1, claims: {sub: user-1, groups: [admins]}}
""")
        with open(os.path.join(self.cfg, "authz.yaml"), "w") as f:
            f.write(allow("admins", rule(src(requestPrincipals=["https://issuer.example.com/*"]),
                                         op(paths=["/get"]),
                                         when("request.auth.claims[groups]", ["admins"])),
                          target_refs=[service()]))
        code, out, err = ambitctl("policy", "check", "--config", self.cfg, "--request", req,
                                  "-o", "json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["decision"], "allow", out)
        self.assertEqual(json.loads(out)["policy"], "foo/admins", out)

    def test_missing_request_file(self):
        code, out, err = ambitctl("policy", "check", "--config", self.cfg, "--request",
                                  os.path.join(self.tmp.name, "nope.yaml"))
        self.assertEqual(code, 1)
        self.assertIn("cannot read request file", err)
        self.assertIn("nope.yaml", err)

    def test_missing_config_dir(self):
        req = os.path.join(self.tmp.name, "req.yaml")
        with open(req, "w") as f:
            f.write("target: {namespace: foo}\ndestination: {port: 80}\n")
        code, _, err = ambitctl("policy", "check", "--config",
                                os.path.join(self.tmp.name, "missing"), "--request", req)
        self.assertEqual(code, 1)
        self.assertIn("cannot read config directory", err)

    def test_missing_flags_is_usage_error(self):
        code, _, err = ambitctl("policy", "check", "--config", self.cfg)
        self.assertEqual(code, 2)
        self.assertIn("--request FILE", err)

    def test_help(self):
        code, out, _ = ambitctl("policy", "check", "--help")
        self.assertEqual(code, 0)
        self.assertIn("afterExtAuthzAllow", out)
        self.assertIn("enforcement: L4", out)

    def test_yaml_output(self):
        req = os.path.join(self.tmp.name, "req.yaml")
        with open(req, "w") as f:
            f.write("target: {namespace: foo}\ndestination: {port: 80}\n")
        code, out, _ = ambitctl("policy", "check", "--config", self.cfg, "--request", req,
                                "-o", "yaml")
        self.assertEqual(code, 0)
        self.assertIn("decision: allow", out)
        self.assertIn("mode: PERMISSIVE", out)


# ---- RequestAuthentication (JWT) ---------------------------------------------------------------

ISSUER = "https://issuer.example.com"
NOW = 1800000000


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwtKeys:
    """Keys made at test time, their JWKS, and tokens signed with python3-jwt."""

    def __init__(self):
        import jwt as pyjwt  # python3-jwt
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.pyjwt = pyjwt
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = self.rsa.public_key().public_numbers()

        def be(n):
            return n.to_bytes((n.bit_length() + 7) // 8, "big")
        self.jwk = {"kty": "RSA", "kid": "k1", "alg": "RS256", "n": _b64(be(pub.n)),
                    "e": _b64(be(pub.e))}
        self.jwks = json.dumps({"keys": [self.jwk]})

    def token(self, key=None, alg="RS256", kid="k1", **claims):
        payload = {"iss": ISSUER, "sub": "user-1", "aud": "api", "exp": NOW + 3600,
                   "iat": NOW - 10}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid} if kid else {}
        return self.pyjwt.encode(payload, key or self.rsa, algorithm=alg, headers=headers)

    def unsigned(self, header, payload):
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."

    def hmac_token(self, secret, payload):
        """HS256 with secret (the key-confusion forgery: the RSA public key as HMAC secret)."""
        signing = (f"{_b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}."
                   f"{_b64(json.dumps(payload).encode())}")
        mac = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
        return f"{signing}.{_b64(mac)}"


def request_authn(name="jwt", ns="foo", rules=None, target_refs=None, selector=None,
                  api="security.istio.io/v1"):
    spec = {"jwtRules": rules or []}
    if target_refs is not None:
        spec["targetRefs"] = target_refs
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return json.dumps({"apiVersion": api, "kind": "RequestAuthentication",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


class PolicyCheckJwt(unittest.TestCase):
    """`policy check` with a raw HTTP request: the config's RequestAuthentication applies to the
    tokens (signed here, at test time) before the AuthorizationPolicies do."""

    @classmethod
    def setUpClass(cls):
        cls.keys = JwtKeys()

    def setUp(self):
        self.assertTrue(os.access(AMBITCTL, os.X_OK), f"{AMBITCTL} is not built")
        self.tmp = tempfile.TemporaryDirectory(prefix="ambit-policy-check-jwt-")
        self.cfg = os.path.join(self.tmp.name, "config")
        os.mkdir(self.cfg)

    def tearDown(self):
        self.tmp.cleanup()

    def rule(self, **extra):
        r = {"issuer": ISSUER, "audiences": ["api"], "jwks": self.keys.jwks}
        r.update(extra)
        return r

    def write(self, *docs, require_principal=True):
        docs = list(docs)
        if require_principal:
            docs.append(allow("need-jwt", rule(src(requestPrincipals=[f"{ISSUER}/*"])),
                              target_refs=[service()]))
        with open(os.path.join(self.cfg, "policies.yaml"), "w") as f:
            f.write("\n---\n".join(docs) + "\n")

    def check(self, headers=None, path="/get", method="GET", now=NOW, expect_stderr=False):
        req = l7(method=method, path=path, headers=headers,
                 waypoint={"name": "waypoint", "services": [{"name": "httpbin"}]})
        req_file = os.path.join(self.tmp.name, "req.yaml")
        with open(req_file, "w") as f:
            json.dump(req, f)
        args = ["policy", "check", "--config", self.cfg, "--request", req_file]
        if now is not None:
            args += ["--now", str(now)]
        code, out, err = ambitctl(*args, "-o", "json")
        self.assertEqual(code, 0, f"stdout: {out}\nstderr: {err}")
        if not expect_stderr:
            self.assertEqual(err, "", "unexpected config problems")
        doc = json.loads(out)
        self.assertEqual(list(doc), JSON_KEYS, out)
        code, text, err2 = ambitctl(*args)
        self.assertEqual(code, 0, err2)
        self.assertTrue(text.startswith(f"decision: {doc['decision']}"), text)
        return doc, text, err

    def bearer(self, token):
        return {"authorization": f"Bearer {token}"}

    def assert_rejected(self, doc, text, status, reason):
        self.assertEqual(doc["decision"], "deny", doc)
        self.assertEqual(doc["authn"]["result"], "reject", doc)
        self.assertEqual(doc["authn"]["status"], status, doc)
        self.assertIn(reason, doc["authn"]["reason"], doc)
        self.assertIsNone(doc["authn"]["principal"], doc)
        self.assertIsNone(doc["policy"], doc)
        self.assertIn(f"HTTP {status}", text)
        self.assertIn(f'"{reason}', text)
        self.assertIn("www-authenticate: Bearer realm=\"http://httpbin.foo/get\"", text)

    def test_valid_token_allows_with_principal_and_claims(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(scope="read write", groups=["a"])))
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertEqual(doc["policy"], "foo/need-jwt", doc)
        a = doc["authn"]
        self.assertEqual((a["result"], a["status"]), ("allow", None), doc)
        self.assertEqual(a["principal"], f"{ISSUER}/user-1", doc)
        self.assertEqual(a["claims"]["groups"], ["a"], doc)
        self.assertEqual(a["claims"]["scope"], ["read", "write"], doc)  # split on spaces
        self.assertEqual(a["claims"]["exp"], NOW + 3600, doc)
        self.assertIn("applies: foo/jwt", text)
        self.assertIn('token in header authorization (prefix "Bearer "), rule foo/jwt jwtRules[0]',
                      text)
        self.assertIn("upstream header: remove authorization", text)  # forwardOriginalToken off

    def test_claims_drive_authorization_conditions(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]),
                   allow("admins", rule(when("request.auth.claims[groups]", ["admins"])),
                         target_refs=[service()]), require_principal=False)
        doc, _, _ = self.check(self.bearer(self.keys.token(groups=["admins"])))
        self.assertEqual(doc["decision"], "allow", doc)
        doc, _, _ = self.check(self.bearer(self.keys.token(groups=["users"])))
        self.assertEqual(doc["decision"], "deny", doc)
        self.assertEqual(doc["authn"]["result"], "allow", doc)

    def test_expired(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(exp=NOW - 61)))
        self.assert_rejected(doc, text, 401, "Jwt is expired")
        self.assertIn('error="invalid_token"', text)
        # Within Envoy's 60 s clock skew it is still valid.
        doc, _, _ = self.check(self.bearer(self.keys.token(exp=NOW - 59)))
        self.assertEqual(doc["decision"], "allow", doc)

    def test_now_flag_sets_the_clock(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        token = self.keys.token(exp=NOW + 100)
        doc, _, _ = self.check(self.bearer(token), now=NOW)
        self.assertEqual(doc["decision"], "allow", doc)
        doc, text, _ = self.check(self.bearer(token), now=NOW + 1000)
        self.assert_rejected(doc, text, 401, "Jwt is expired")
        # Without --now the real clock applies: NOW is in the future of today's clock only until
        # 2027, so use a token that expired in 2001.
        doc, text, _ = self.check(self.bearer(self.keys.token(exp=1000000000, iat=None)), now=None)
        self.assert_rejected(doc, text, 401, "Jwt is expired")

    def test_nbf_in_the_future(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(nbf=NOW + 600)))
        self.assert_rejected(doc, text, 401, "Jwt not yet valid")

    def test_wrong_audience_is_403(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(aud="other")))
        self.assert_rejected(doc, text, 403, "Audiences in Jwt are not allowed")

    def test_wrong_key(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(key=self.keys.other)))
        self.assert_rejected(doc, text, 401, "Jwt verification fails")

    def test_unknown_kid(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(kid="nope")))
        self.assert_rejected(doc, text, 401, "Jwks doesn't have key to match kid or alg from Jwt")

    def test_alg_none_refused(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        token = self.keys.unsigned({"alg": "none", "kid": "k1"},
                                   {"iss": ISSUER, "sub": "user-1", "aud": "api"})
        doc, text, _ = self.check(self.bearer(token + "sig"))
        self.assert_rejected(doc, text, 401, "Jwt header [alg] is not supported")

    def test_hs256_with_the_rsa_key_as_secret_refused(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        payload = {"iss": ISSUER, "sub": "admin", "aud": "api", "exp": NOW + 3600}
        from cryptography.hazmat.primitives import serialization
        pem = self.keys.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        n = base64.urlsafe_b64decode(self.keys.jwk["n"] + "==")
        for secret in (pem, n, self.keys.jwks.encode()):
            doc, text, _ = self.check(self.bearer(self.keys.hmac_token(secret, payload)))
            self.assert_rejected(doc, text, 401, "Jwks doesn't have key to match kid or alg")

    def test_hs256_key_confusion_without_key_alg(self):
        # A JWK without alg does not pin the algorithm: the RSA key must still never be used as
        # an HMAC secret.
        jwk = dict(self.keys.jwk)
        del jwk["alg"]
        self.write(request_authn(rules=[self.rule(jwks=json.dumps({"keys": [jwk]}))],
                                 target_refs=[service()]))
        from cryptography.hazmat.primitives import serialization
        pem = self.keys.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        token = self.keys.hmac_token(pem, {"iss": ISSUER, "sub": "admin", "aud": "api"})
        doc, text, _ = self.check(self.bearer(token))
        self.assert_rejected(doc, text, 401, "Jwt verification fails")

    def test_missing_token_passes_authn_and_requestprincipals_denies(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check({"x-other": "1"})
        self.assertEqual(doc["authn"]["result"], "allow", doc)
        self.assertIsNone(doc["authn"]["principal"], doc)
        self.assertEqual(doc["decision"], "deny", doc)
        self.assertIn("no token in any location", text)

    def test_from_headers_prefix_replaces_the_default(self):
        self.write(request_authn(
            rules=[self.rule(fromHeaders=[{"name": "x-jwt-assertion", "prefix": "Token "}])],
            target_refs=[service()]))
        token = self.keys.token()
        doc, text, _ = self.check({"x-jwt-assertion": f"Token {token}"})
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertIn('header x-jwt-assertion (prefix "Token ")', text)
        # The default Authorization header is no longer read: no token, no principal.
        doc, _, _ = self.check(self.bearer(token))
        self.assertEqual(doc["authn"]["result"], "allow", doc)
        self.assertIsNone(doc["authn"]["principal"], doc)
        self.assertEqual(doc["decision"], "deny", doc)
        # Without the prefix the header holds no token.
        doc, _, _ = self.check({"x-jwt-assertion": token})
        self.assertIsNone(doc["authn"]["principal"], doc)

    def test_from_params(self):
        self.write(request_authn(rules=[self.rule(fromParams=["my_token"])],
                                 target_refs=[service()]))
        token = self.keys.token()
        doc, text, _ = self.check(path=f"/get?a=1&my_token={token}")
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertIn("query parameter my_token", text)
        doc, text, _ = self.check(path=f"/get?my_token={self.keys.token(exp=NOW - 100)}")
        self.assert_rejected(doc, text, 401, "Jwt is expired")

    def test_default_access_token_param(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, _, _ = self.check(path=f"/get?access_token={self.keys.token()}")
        self.assertEqual(doc["decision"], "allow", doc)

    def test_cookie(self):
        self.write(request_authn(rules=[self.rule(fromCookies=["session"])],
                                 target_refs=[service()]))
        token = self.keys.token()
        doc, text, _ = self.check({"cookie": f"theme=dark; session={token}"})
        self.assertEqual(doc["decision"], "allow", doc)
        self.assertIn("cookie session", text)
        doc, text, _ = self.check({"cookie": f"session={self.keys.token(key=self.keys.other)}"})
        self.assert_rejected(doc, text, 401, "Jwt verification fails")

    def test_unknown_issuer(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        doc, text, _ = self.check(self.bearer(self.keys.token(iss="https://evil.example.com")))
        self.assert_rejected(doc, text, 401, "Jwt issuer is not configured")

    def test_policy_not_attached_does_not_apply(self):
        # Attached to another service: this request is not authenticated at all.
        self.write(request_authn(rules=[self.rule()], target_refs=[service("other")]))
        doc, _, _ = self.check(self.bearer(self.keys.token(exp=NOW - 1000)))
        self.assertEqual(doc["authn"]["result"], "allow", doc)
        self.assertIn("no RequestAuthentication applies", doc["authn"]["reason"])

    def test_cors_preflight_skips(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]),
                   require_principal=False)
        doc, _, _ = self.check({"origin": "https://app.example.com",
                                "access-control-request-method": "GET",
                                "authorization": "Bearer garbage"}, method="OPTIONS")
        self.assertEqual(doc["authn"]["result"], "allow", doc)
        self.assertIn("CORS preflight", doc["authn"]["reason"])

    def test_bad_request_authentication_is_reported_and_skipped(self):
        self.write(request_authn(rules=[self.rule(jwks="{not json")], target_refs=[service()]))
        doc, _, err = self.check(self.bearer(self.keys.token(key=self.keys.other)),
                                 expect_stderr=True)
        self.assertIn("RequestAuthentication foo/jwt", err)
        self.assertIn("spec.jwtRules[0].jwks", err)
        self.assertIn("not valid JSON", err)
        # Skipped: no rule applies, so the token is not even looked at.
        self.assertEqual(doc["authn"]["result"], "allow", doc)
        self.assertEqual(doc["decision"], "deny", doc)  # and no principal for need-jwt

    def test_bad_now(self):
        self.write(request_authn(rules=[self.rule()], target_refs=[service()]))
        req = os.path.join(self.tmp.name, "req.yaml")
        with open(req, "w") as f:
            json.dump(l7(headers=self.bearer("x")), f)
        code, _, err = ambitctl("policy", "check", "--config", self.cfg, "--request", req,
                                "--now", "yesterday")
        self.assertEqual(code, 1)
        self.assertIn("--now 'yesterday' is not a time in UNIX seconds", err)


def main():
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    if len(sys.argv) > 1:
        suite.addTests(loader.loadTestsFromNames(sys.argv[1:], sys.modules[__name__]))
    else:
        suite.addTests(loader.loadTestsFromTestCase(PolicyCheckTable))
        suite.addTests(loader.loadTestsFromTestCase(PolicyCheckErrors))
        suite.addTests(loader.loadTestsFromTestCase(PolicyCheckJwt))
    result = unittest.TextTestRunner(verbosity=1, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"{len(ROWS)} table rows through ambitctl policy check (json and text)")
    print(f"{result.testsRun - failed} passed, {failed} failed")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
