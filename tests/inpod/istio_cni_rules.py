"""istio-cni's in-pod rules, applied to and removed from a test network namespace.

Stands in for the istio-cni node agent's in-pod redirection set-up (ambient mode, iptables
backend): what its `IptablesConfigurator.CreateInpodRules` does inside an ambient pod's network
namespace once the pod is added, and what `DeleteInpodRules` undoes. The rule sets are Istio's
golden files, rule for rule, so a test here runs against exactly the netfilter state a pod on a
cluster with istio-cni has; nothing in this module is ambit's.

Read from Istio 1.32 (istio/istio at 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c):
- `cni/pkg/iptables/testdata/default.golden` and `default_ipv6.golden`: the IPv4 and IPv6
  rule sets with DNS capture on (the chart's default, `ambient.dnsCapture: true`);
  `dns_pod_disabled_and_on_globally*.golden`: the same without the two DNS REDIRECTs and the
  raw-table conntrack zones (`ambient.dnsCapture: false`, or the pod annotation
  `ambient.istio.io/dns-capture: "false"`).
- `cni/pkg/iptables/iptables.go` (`AppendInpodRules`, `executeDeleteCommands`): the probe
  source is `HOST_PROBE_SNAT_ADDRESS` (default 169.254.7.127) and `HOST_PROBE_V6_SNAT_ADDRESS`
  (default fd16:9254:7127:1337:ffff:ffff:ffff:ffff; the IPv6 golden file uses a random test
  address there); removal deletes the jumps, then flushes and deletes the chains.
- `cni/pkg/iptables/iptables_linux.go` (`forEachInpodMarkIPRule`, `forEachLoopbackRoute`):
  `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100` per family, and
  `ip route replace local 0.0.0.0/0 dev lo table 100` (and `local ::/0` when lo has IPv6).
- `cni/pkg/config/config.go`: InpodMark 1337 (0x539) / 0xfff, InpodTProxyMark 0x111 / 0xfff,
  RouteTableInbound 100, ZtunnelInboundPort 15008, plaintext 15006, outbound 15001, DNS 15053.

The host side of kubelet probes (`hostprobe.golden`: POSTROUTING SNAT of node-local sockets
to the probe address, matched by an ipset of pod addresses) is `host_probe_snat`, applied to
the namespace that stands for the node.

Only ever pass namespaces a test created: this runs iptables-restore inside them.
"""

import subprocess

INPOD_MARK = 0x539
INPOD_MASK = 0xFFF
TPROXY_MARK = 0x111
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
PROBE_SNAT_V4 = "169.254.7.127"
PROBE_SNAT_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
DNS_CAPTURE_PORT = 15053


def rules(family, dns_capture=True, probe_v4=PROBE_SNAT_V4, probe_v6=PROBE_SNAT_V6):
    """The iptables-restore input istio-cni writes for one family (4 or 6), as in the golden
    files. probe_v4/probe_v6: its HOST_PROBE_SNAT_ADDRESS / HOST_PROBE_V6_SNAT_ADDRESS."""
    local = "127.0.0.1/32" if family == 4 else "::1/128"
    probe = probe_v4 if family == 4 else probe_v6
    mark = f"0x{INPOD_MARK:x}/0x{INPOD_MASK:x}"
    tproxy = f"0x{TPROXY_MARK:x}/0x{INPOD_MASK:x}"
    out = [
        "* mangle",
        "-N ISTIO_PRERT",
        "-N ISTIO_OUTPUT",
        "-A PREROUTING -j ISTIO_PRERT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        f"-A ISTIO_PRERT -m mark --mark {mark} -j CONNMARK --set-xmark {tproxy}",
        f"-A ISTIO_OUTPUT -m connmark --mark {tproxy} -j CONNMARK --restore-mark "
        "--nfmask 0xffffffff --ctmask 0xffffffff",
        "COMMIT",
        "* nat",
        "-N ISTIO_PRERT",
        "-N ISTIO_OUTPUT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A PREROUTING -j ISTIO_PRERT",
        f"-A ISTIO_PRERT -s {probe} -p tcp -m tcp -j ACCEPT",
        f"-A ISTIO_OUTPUT -d {probe} -p tcp -m tcp -j ACCEPT",
        f"-A ISTIO_PRERT ! -d {local} -p tcp ! --dport 15008 -m mark ! --mark {mark} "
        "-j REDIRECT --to-ports 15006",
    ]
    if dns_capture:
        out += [
            f"-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark {mark} -m udp --dport 53 "
            f"-j REDIRECT --to-port {DNS_CAPTURE_PORT}",
            f"-A ISTIO_OUTPUT ! -d {local} -p tcp --dport 53 -m mark ! --mark {mark} "
            f"-j REDIRECT --to-ports {DNS_CAPTURE_PORT}",
        ]
    out += [
        f"-A ISTIO_OUTPUT -p tcp -m mark --mark {tproxy} -j ACCEPT",
        f"-A ISTIO_OUTPUT ! -d {local} -o lo -j ACCEPT",
        f"-A ISTIO_OUTPUT ! -d {local} -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports 15001",
        "COMMIT",
    ]
    if dns_capture:
        out += [
            "* raw",
            "-N ISTIO_OUTPUT",
            "-N ISTIO_PRERT",
            "-A PREROUTING -j ISTIO_PRERT",
            "-A OUTPUT -j ISTIO_OUTPUT",
            f"-A ISTIO_OUTPUT -p udp -m mark --mark {mark} -m udp --dport 53 -j CT --zone 1",
            f"-A ISTIO_PRERT -p udp -m mark ! --mark {mark} -m udp --sport 53 -j CT --zone 1",
            "COMMIT",
        ]
    return "\n".join(out) + "\n"


def _run(netns, *argv, input=None, check=True):
    r = subprocess.run(["ip", "netns", "exec", netns] + list(argv), input=input,
                       capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {netns}: {r.stderr.strip()}")
    return r


def _lo_has_ipv6(netns):
    r = _run(netns, "cat", "/proc/sys/net/ipv6/conf/lo/disable_ipv6", check=False)
    return r.returncode == 0 and r.stdout.strip() == "0"


def apply(netns, ipv6=True, dns_capture=True, probe_v4=PROBE_SNAT_V4, probe_v6=PROBE_SNAT_V6):
    """What istio-cni does in an ambient pod's namespace: the loopback route, the mark rule,
    then the rule sets (`--noflush`, as istio-cni restores into a pod's existing tables)."""
    families = [4] + ([6] if ipv6 else [])
    for family in families:
        if family == 6 and not _lo_has_ipv6(netns):
            continue
        dst = "0.0.0.0/0" if family == 4 else "::/0"
        _run(netns, "ip", f"-{family}", "route", "replace", "local", dst, "dev", "lo",
             "table", str(ROUTE_TABLE))
    for family in families:
        r = _run(netns, "ip", f"-{family}", "rule", "add", "fwmark",
                 f"0x{TPROXY_MARK:x}/0x{INPOD_MASK:x}", "pref", str(RULE_PRIORITY), "lookup",
                 str(ROUTE_TABLE), check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise AssertionError(f"ip rule add in {netns}: {r.stderr.strip()}")
    for family in families:
        restore = "iptables-restore" if family == 4 else "ip6tables-restore"
        _run(netns, restore, "--noflush", input=rules(family, dns_capture, probe_v4, probe_v6))


_DELETE = [
    ["-t", "mangle", "-D", "PREROUTING", "-j", "ISTIO_PRERT"],
    ["-t", "mangle", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    ["-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    ["-t", "raw", "-D", "PREROUTING", "-j", "ISTIO_PRERT"],
    ["-t", "raw", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"],
    ["-t", "nat", "-D", "PREROUTING", "-j", "ISTIO_PRERT"],
] + [["-t", t, op, c] for op in ("-F", "-X") for t in ("mangle", "nat", "raw")
     for c in ("ISTIO_PRERT", "ISTIO_OUTPUT")]


def remove(netns, ipv6=True):
    """What istio-cni does when the pod leaves the mesh: every command best effort, as its own
    (a chain may not exist, e.g. raw without DNS capture)."""
    for family in [4] + ([6] if ipv6 else []):
        tool = "iptables" if family == 4 else "ip6tables"
        for cmd in _DELETE:
            _run(netns, tool, *cmd, check=False)
        _run(netns, "ip", f"-{family}", "rule", "del", "fwmark",
             f"0x{TPROXY_MARK:x}/0x{INPOD_MASK:x}", "pref", str(RULE_PRIORITY), "lookup",
             str(ROUTE_TABLE), check=False)
        dst = "0.0.0.0/0" if family == 4 else "::/0"
        _run(netns, "ip", f"-{family}", "route", "del", "local", dst, "dev", "lo", "table",
             str(ROUTE_TABLE), check=False)


def installed(netns, family=4):
    """The namespace's current rules as iptables-save prints them."""
    tool = "iptables-save" if family == 4 else "ip6tables-save"
    return _run(netns, tool).stdout


def host_probe_snat(netns, pod_ips, snat_v4=PROBE_SNAT_V4, snat_v6=PROBE_SNAT_V6):
    """istio-cni's host rule (hostprobe.golden) in the namespace standing for the node: TCP from
    a local socket to a pod address is SNATed to the probe address. Istio matches the pod
    addresses with the ipset istio-inpod-probes-v4/v6; plain `-d` rules per address match the
    same packets here without ipset. Called again, it adds the addresses to the chain."""
    for family in (4, 6):
        ips = [ip for ip in pod_ips if (":" in ip) == (family == 6)]
        if not ips:
            continue
        snat = snat_v4 if family == 4 else snat_v6
        tool = "iptables" if family == 4 else "ip6tables"
        exists = _run(netns, tool, "-t", "nat", "-S", "ISTIO_POSTRT", check=False).returncode == 0
        lines = ["* nat"]
        if not exists:
            lines += ["-N ISTIO_POSTRT", "-I POSTROUTING 1 -j ISTIO_POSTRT"]
        lines += [f"-A ISTIO_POSTRT -m owner --socket-exists -p tcp -d {ip} "
                  f"-j SNAT --to-source {snat}" for ip in ips]
        lines.append("COMMIT")
        restore = "iptables-restore" if family == 4 else "ip6tables-restore"
        _run(netns, restore, "--noflush", input="\n".join(lines) + "\n")
