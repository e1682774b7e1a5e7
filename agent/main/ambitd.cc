// ambitd: the node agent's control half (docs/ARCHITECTURE.md#processes).
#include <unistd.h>

#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "agent/common/allocator.h"
#include "agent/common/daemon_flags.h"
#include "agent/common/log.h"
#include "agent/common/probe_source.h"
#include "agent/common/socket_mark.h"
#include "agent/issuance/signer.h"
#include "agent/node/agent.h"
#include "agent/node/ca_only.h"

ABSL_FLAG(std::string, config_dir, "/etc/ambit/config",
          "directory of Kubernetes-shaped YAML (Pods, Namespaces, Services, mesh.yaml); watched");
ABSL_FLAG(std::string, kube_api, "",
          "also read the configuration from the Kubernetes API server: 'in-cluster' (server from "
          "$KUBERNETES_SERVICE_HOST/PORT, the pod's service-account token and CA) or an https URL; "
          "empty: only --config-dir (which is still read, e.g. for mesh.yaml)");
ABSL_FLAG(std::string, kube_token_file, "",
          "bearer token file for --kube-api, re-read when it changes (default: "
          "/var/run/secrets/kubernetes.io/serviceaccount/token)");
ABSL_FLAG(std::string, kube_ca_file, "",
          "PEM roots the API server's certificate must chain to (default: "
          "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt)");
ABSL_FLAG(std::string, xds_address, "",
          "read workloads, services and authorization from istiod's xDS instead (host:port, e.g. "
          "istiod.istio-system.svc:15012): delta ADS for istio.workload.Address and "
          "istio.security.Authorization, as ztunnel; --config-dir still gives mesh.yaml. Not "
          "with --kube-api");
ABSL_FLAG(std::string, xds_root_cert, "",
          "PEM roots istiod's certificate must chain to (required with --xds-address), e.g. the "
          "istio-ca-root-cert ConfigMap's root-cert.pem");
ABSL_FLAG(std::string, xds_token_file, "",
          "bearer token file for --xds-address, re-read for every connection (a projected "
          "service-account token of audience istio-ca); empty: no token");
ABSL_FLAG(std::string, node_name, "",
          "this node's name (spec.nodeName of local pods); "
          "default: $NODE_NAME, else the host name");
ABSL_FLAG(std::string, instance, "default",
          "instance name: BPF pins live under <bpffs>/ambit/<instance>, state under "
          "/run/ambit/<instance>; lets several agents share one kernel");
ABSL_FLAG(std::string, cgroup, "",
          "cgroup-v2 directory the redirect programs attach to (default: the cgroup-v2 root)");
ABSL_FLAG(std::string, bpffs, "/sys/fs/bpf",
          "bpffs mount point (mounted if absent, unless ambitd runs in a container: there it "
          "must be the host's /sys/fs/bpf)");
ABSL_FLAG(std::string, host_proc, "/proc",
          "procfs through which pod sysctls are written from inside each pod's network namespace "
          "(in a container, where /proc/sys is read-only: the host's /proc mounted read-write, "
          "e.g. /host/proc)");
ABSL_FLAG(std::string, netns_dir, "/var/run/netns",
          "directory of pod network namespace files (where CRI runtimes bind-mount them); a pod "
          "without the ambit.dev/netns annotation is found there by its IP");
ABSL_FLAG(std::string, run_dir, "", "runtime directory (default /run/ambit/<instance>)");
ABSL_FLAG(std::string, zds_listen, "<run dir>/zds.sock",
          "SOCK_SEQPACKET socket (mode 0600) where ambit-cni hands over each new pod's network "
          "namespace over Istio's ZDS protocol, ambitd acking once the pod is captured; empty: "
          "off");
ABSL_FLAG(std::string, zds_connect, "",
          "istio-cni's ZDS socket (its default: /var/run/ztunnel/ztunnel.sock), connected to as "
          "ztunnel does, so istio-cni's node agent enrolls pods; empty: off");
ABSL_FLAG(absl::Duration, zds_ack_timeout, absl::Seconds(10),
          "how long a ZDS add waits for its pod to be captured (or to appear in the "
          "configuration) before it is acked with the reason it is not");
ABSL_FLAG(std::string, dataplane, "spawn",
          "how the data-plane processes run: spawn (ambitd starts ambit-tunnel, and "
          "ambit-waypoint for waypoint pods, and restarts them) or external (they are started "
          "apart, e.g. as containers of the DaemonSet pod, with --control-socket "
          "<run dir>/dataplane.sock and <run dir>/waypoint/dataplane.sock; ambitd connects "
          "whenever they listen and never starts, restarts or stops them)");
ABSL_FLAG(std::string, tunnel_binary, "", "ambit-tunnel path (default: next to ambitd)");
ABSL_FLAG(std::string, waypoint_binary, "",
          "ambit-waypoint path (default: next to ambitd), started for the pods of waypoints "
          "enrolled on this node with the same arguments as ambit-tunnel");
ABSL_FLAG(std::string, waypoint_jwks_ca_file, "",
          "PEM roots ambit-waypoint checks jwksUri servers against (default: the system's)");
ABSL_FLAG(int, tunnel_workers, 2, "data-plane worker threads");
ABSL_FLAG(uint32_t, socket_mark, ambit::kDefaultSocketMark, "SO_MARK of ambit's own sockets");
ABSL_FLAG(
    std::string, kubelet_probe_source, "",
    "comma-separated addresses (one per family) from which plaintext to a pod, arriving from "
    "outside the pod's network namespace, is a kubelet probe (istio-cni SNATs probes to "
    "169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff); empty: none. It trusts an "
    "address: set it only where istio-cni's host rules SNAT probes; passed to the data plane");
ABSL_FLAG(std::string, bypass_ports, "", "outbound destination ports never redirected (a,b,c)");
ABSL_FLAG(std::string, inbound_bypass_ports, "", "inbound ports never redirected (a,b,c)");
ABSL_FLAG(std::string, bypass_cidrs, "", "outbound destination CIDRs never redirected");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");
ABSL_FLAG(std::string, ca_state_dir, "",
          "where the built-in CA keeps its generated root (default /var/lib/ambit/<instance>)");
ABSL_FLAG(std::string, cacerts_dir, "",
          "operator CA material in Istio's cacerts layout (ca-cert.pem, ca-key.pem, "
          "root-cert.pem, cert-chain.pem); the built-in CA signs with it");
ABSL_FLAG(std::string, ca_address, "",
          "external Istio-compatible CA (host:port) instead of the built-in one");
ABSL_FLAG(std::string, ca_root_cert, "",
          "PEM roots of the external CA (with --ca-address), read again whenever the file "
          "changes (a mounted ConfigMap, a root rotation)");
ABSL_FLAG(std::string, ca_token_file, "",
          "bearer token file for the external CA (with --ca-address)");
ABSL_FLAG(std::string, ca_listen, "",
          "serve istio.v1.auth.IstioCertificateService on host:port for other nodes (off by "
          "default; needs --ca-tokens or --ca-token-review)");
ABSL_FLAG(std::string, ca_tokens, "",
          "file of '<token> <node-name>' lines: which node each CA caller speaks for");
ABSL_FLAG(bool, ca_only, false,
          "run as the cluster CA only: serve the CA API on --ca-listen with the --cacerts-dir "
          "material (required), judging each node's requests by the pods scheduled on it (from "
          "--kube-api, else --config-dir); no BPF, pods or data plane");
ABSL_FLAG(bool, ca_token_review, false,
          "authenticate CA callers' bearer tokens by a TokenReview against the API server of "
          "--kube-api (the node is the token's authentication.kubernetes.io/node-name), instead "
          "of --ca-tokens");
ABSL_FLAG(std::string, ca_token_audience, "ambit-ca",
          "with --ca-token-review: the audience callers' tokens must be issued for");
ABSL_FLAG(std::string, ca_token_users, "system:serviceaccount:ambit-system:ambit",
          "with --ca-token-review: the users (system:serviceaccount:<namespace>:<name>, "
          "comma-separated) whose tokens may obtain certificates: the node agents' service "
          "accounts");
ABSL_FLAG(std::string, cluster_id, "Kubernetes",
          "Istio's name of this cluster (CLUSTER_ID): sent to an external CA as 'clusterid' "
          "metadata and to istiod's xDS (clusterid header, CLUSTER_ID node metadata), the "
          "cluster in Istio's telemetry labels (source_cluster, destination_cluster) and the "
          "config dump, and the only cluster whose callers the CA API (--ca-listen) accepts");
ABSL_FLAG(std::string, ca_root_configmap, "",
          "with --ca-address and --kube-api: read the CA's roots from this ConfigMap "
          "(NAMESPACE/NAME, key root-cert.pem; istiod's istio-ca-root-cert) instead of "
          "--ca-root-cert, re-read every 5s");
ABSL_FLAG(absl::Duration, cert_ttl, absl::Hours(24),
          "lifetime of workload certificates (at least 1m; renewed at half of it)");
ABSL_FLAG(double, ca_node_burst, 100,
          "the built-in or cluster CA: certificates each node may get at once (1 to 100000)");
ABSL_FLAG(double, ca_node_rate, 5,
          "the built-in or cluster CA: certificates a second each node may get past its burst "
          "(0.01 to 10000); a node's own requests wait for it in order");
ABSL_FLAG(std::string, crl_file, "",
          "PEM certificate revocation lists for the trust bundle (one or more); re-read when it "
          "changes; HBONE peers presenting a revoked certificate are refused at the handshake");
ABSL_FLAG(
    std::string, admin_socket, "",
    "admin API unix socket (default <run dir>/admin.sock: /run/ambit/admin.sock for the default "
    "instance, /run/ambit/<instance>/admin.sock for another)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:15020",
          "ip:port of the Prometheus endpoint (/metrics); empty: off");
ABSL_FLAG(std::string, readiness_address, "0.0.0.0:15021",
          "ip:port of the readiness endpoint (/healthz/ready); empty: off");
ABSL_FLAG(absl::Duration, dataplane_heartbeat_interval, absl::Seconds(1),
          "how often ambitd pings the data plane (answered through every worker thread) and "
          "re-checks that the capture programs and pins are in place");
ABSL_FLAG(absl::Duration, dataplane_heartbeat_deadline, absl::Seconds(3),
          "an unanswered heartbeat older than this makes /healthz/ready answer 503 (the data "
          "plane is reported, not restarted)");
ABSL_FLAG(absl::Duration, dataplane_drain_grace, absl::Seconds(30),
          "on a data-plane roll, how long the old process may keep its live connections after "
          "its successor serves (it exits earlier once the last one ends)");
ABSL_FLAG(absl::Duration, dataplane_standby_timeout, absl::Seconds(30),
          "on a data-plane roll, how long the successor may take to serve every pod (its "
          "certificates issued, every listener watched) before it is abandoned and the old "
          "process keeps serving");
ABSL_FLAG(absl::Duration, hbone_idle_timeout, absl::Seconds(30),
          "how long the data plane keeps a pooled HBONE connection with no stream");
ABSL_FLAG(uint32_t, hbone_failed_stream_burst, 200,
          "HBONE CONNECTs per client connection that may fail or be reset before the answer, "
          "before the rate limit applies");
ABSL_FLAG(double, hbone_failed_stream_rate, 100,
          "HBONE CONNECTs per second and client connection that may fail or be reset before "
          "the answer (beyond: GOAWAY ENHANCE_YOUR_CALM)");
ABSL_FLAG(std::string, access_log_format, "text",
          "the data plane's line per closed connection: text, json, ztunnel (ztunnel's key "
          "names, key=value), ztunnel-json or off");
ABSL_FLAG(uint64_t, max_config_bytes, uint64_t{1} << 30,
          "largest configuration snapshot the data plane accepts (it fails closed above it)");
ABSL_FLAG(std::string, node_netns, "",
          "network namespace (a path: /proc/PID/ns/net, /var/run/netns/NAME) whose sockets are "
          "the node's, kubelet's: their TCP connections to enrolled pods are admitted as kubelet "
          "probes, past STRICT mTLS and AuthorizationPolicy (default: ambitd's own namespace)");
ABSL_FLAG(bool, take_over, false,
          "when another ambitd of the instance runs, ask it over <run dir>/agent-handoff.sock to "
          "step aside and take over (an upgrade with both on the node) instead of refusing");
ABSL_FLAG(absl::Duration, take_over_timeout, absl::Seconds(30),
          "with --take-over: how long to wait for the running agent to step aside");
ABSL_FLAG(bool, cleanup, false,
          "stop the instance's data plane, detach and unpin its BPF programs and maps, and exit; "
          "refused while an agent of the instance runs (see --force). With "
          "--dataplane=external the data planes are not stopped (they are not ambitd's): "
          "what runs is reported and left");
ABSL_FLAG(bool, force, false,
          "with --cleanup: clean up even while an agent of the instance runs (its capture and "
          "enforcement stop)");

namespace {

bool ParsePorts(const std::string& text, const char* flag, std::vector<uint16_t>* out) {
  for (absl::string_view p : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int port;
    if (!absl::SimpleAtoi(p, &port) || port < 1 || port > 65535) {
      std::cerr << "ambitd: --" << flag << ": '" << p << "' is not a port (1-65535)\n";
      return false;
    }
    out->push_back(static_cast<uint16_t>(port));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  ambit::FixAllocatorThresholds();
  ambit::ParseDaemonFlags(argc, argv, "ambitd",
                          "the ambit node agent. Usage: ambitd --config-dir DIR [flags]");
  ambit::log::Level level;
  if (!ambit::log::ParseLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "ambitd: --log-level must be debug, info, warn or error\n";
    return 2;
  }
  ambit::log::SetLevel("", level);

  ambit::node::AgentOptions options;
  options.config_dir = absl::GetFlag(FLAGS_config_dir);
  options.kube_api = absl::GetFlag(FLAGS_kube_api);
  options.kube_token_file = absl::GetFlag(FLAGS_kube_token_file);
  options.kube_ca_file = absl::GetFlag(FLAGS_kube_ca_file);
  options.xds_address = absl::GetFlag(FLAGS_xds_address);
  options.xds_root_cert = absl::GetFlag(FLAGS_xds_root_cert);
  options.xds_token_file = absl::GetFlag(FLAGS_xds_token_file);
  if (!options.xds_address.empty() && !options.kube_api.empty()) {
    std::cerr << "ambitd: --xds-address and --kube-api are two sources of the same objects; "
                 "give one\n";
    return 2;
  }
  // The node identity istiod sees, from the pod's environment as ztunnel reads it.
  for (auto [var, field] : {std::pair{"POD_NAME", &options.xds_pod_name},
                            std::pair{"POD_NAMESPACE", &options.xds_pod_namespace},
                            std::pair{"INSTANCE_IP", &options.xds_instance_ip}}) {
    if (const char* v = getenv(var); v != nullptr) *field = v;
  }
  options.node_name = absl::GetFlag(FLAGS_node_name);
  if (options.node_name.empty() && getenv("NODE_NAME") != nullptr) {
    options.node_name = getenv("NODE_NAME");
  }
  if (options.node_name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    options.node_name = host;
  }
  options.instance = absl::GetFlag(FLAGS_instance);
  options.cgroup_path = absl::GetFlag(FLAGS_cgroup);
  options.node_netns = absl::GetFlag(FLAGS_node_netns);
  options.bpffs = absl::GetFlag(FLAGS_bpffs);
  options.host_proc = absl::GetFlag(FLAGS_host_proc);
  options.cluster_id = absl::GetFlag(FLAGS_cluster_id);
  options.netns_dir = absl::GetFlag(FLAGS_netns_dir);
  options.run_dir = absl::GetFlag(FLAGS_run_dir);
  // The default names the run directory, known only once --run-dir and --instance are read.
  if (const std::string zds_listen = absl::GetFlag(FLAGS_zds_listen);
      zds_listen != "<run dir>/zds.sock") {
    options.zds_listen = zds_listen;
  }
  options.zds_connect = absl::GetFlag(FLAGS_zds_connect);
  options.zds_ack_timeout = absl::GetFlag(FLAGS_zds_ack_timeout);
  if (options.zds_ack_timeout < absl::Milliseconds(100) ||
      options.zds_ack_timeout > absl::Minutes(5)) {
    std::cerr << "ambitd: --zds-ack-timeout must be between 100ms and 5m\n";
    return 2;
  }
  const std::string dataplane = absl::GetFlag(FLAGS_dataplane);
  if (dataplane != "spawn" && dataplane != "external") {
    std::cerr << "ambitd: --dataplane must be spawn or external, not '" << dataplane << "'\n";
    return 2;
  }
  options.external_dataplane = dataplane == "external";
  options.tunnel_binary = absl::GetFlag(FLAGS_tunnel_binary);
  options.waypoint_binary = absl::GetFlag(FLAGS_waypoint_binary);
  if (!absl::GetFlag(FLAGS_waypoint_jwks_ca_file).empty()) {
    options.waypoint_args = {"--jwks-ca-file", absl::GetFlag(FLAGS_waypoint_jwks_ca_file)};
  }
  options.socket_mark = absl::GetFlag(FLAGS_socket_mark);
  if (absl::Status mark_ok = ambit::CheckSocketMark(options.socket_mark); !mark_ok.ok()) {
    std::cerr << "ambitd: " << mark_ok.message() << "\n";
    return 2;
  }
  const std::string probe_sources = absl::GetFlag(FLAGS_kubelet_probe_source);
  if (auto parsed = ambit::ParseKubeletProbeSources(probe_sources); !parsed.ok()) {
    std::cerr << "ambitd: --kubelet-probe-source: " << parsed.status().message() << "\n";
    return 2;
  }
  options.tunnel_args = {"--workers",     std::to_string(absl::GetFlag(FLAGS_tunnel_workers)),
                         "--socket-mark", std::to_string(options.socket_mark),
                         "--log-level",   absl::GetFlag(FLAGS_log_level)};
  options.ca_state_dir = absl::GetFlag(FLAGS_ca_state_dir);
  options.cacerts_dir = absl::GetFlag(FLAGS_cacerts_dir);
  options.ca_address = absl::GetFlag(FLAGS_ca_address);
  options.ca_root_cert = absl::GetFlag(FLAGS_ca_root_cert);
  options.ca_token_file = absl::GetFlag(FLAGS_ca_token_file);
  options.ca_listen = absl::GetFlag(FLAGS_ca_listen);
  options.ca_tokens = absl::GetFlag(FLAGS_ca_tokens);
  options.ca_only = absl::GetFlag(FLAGS_ca_only);
  options.ca_token_review = absl::GetFlag(FLAGS_ca_token_review);
  options.ca_token_audience = absl::GetFlag(FLAGS_ca_token_audience);
  options.ca_root_configmap = absl::GetFlag(FLAGS_ca_root_configmap);
  options.ca_token_users =
      absl::StrSplit(absl::GetFlag(FLAGS_ca_token_users), ',', absl::SkipEmpty());
  if (options.ca_token_review) {
    if (!options.ca_tokens.empty()) {
      std::cerr << "ambitd: --ca-token-review and --ca-tokens exclude each other\n";
      return 2;
    }
    if (options.ca_token_audience.empty() || options.ca_token_users.empty()) {
      std::cerr << "ambitd: --ca-token-review needs --ca-token-audience and --ca-token-users\n";
      return 2;
    }
  }
  options.cert_ttl = absl::GetFlag(FLAGS_cert_ttl);
  options.crl_file = absl::GetFlag(FLAGS_crl_file);
  options.ca_node_burst = absl::GetFlag(FLAGS_ca_node_burst);
  options.ca_node_rate = absl::GetFlag(FLAGS_ca_node_rate);
  if (!(options.ca_node_burst >= 1 && options.ca_node_burst <= 100000)) {
    std::cerr << "ambitd: --ca-node-burst must be between 1 and 100000\n";
    return 2;
  }
  if (!(options.ca_node_rate >= 0.01 && options.ca_node_rate <= 10000)) {
    std::cerr << "ambitd: --ca-node-rate must be between 0.01 and 10000\n";
    return 2;
  }
  options.admin_socket = absl::GetFlag(FLAGS_admin_socket);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.readiness_address = absl::GetFlag(FLAGS_readiness_address);
  options.heartbeat_interval = absl::GetFlag(FLAGS_dataplane_heartbeat_interval);
  options.heartbeat_deadline = absl::GetFlag(FLAGS_dataplane_heartbeat_deadline);
  options.take_over = absl::GetFlag(FLAGS_take_over);
  options.take_over_timeout = absl::GetFlag(FLAGS_take_over_timeout);
  if (options.heartbeat_interval < absl::Milliseconds(10) ||
      options.heartbeat_deadline < options.heartbeat_interval) {
    std::cerr << "ambitd: --dataplane-heartbeat-interval must be at least 10ms and at most "
                 "--dataplane-heartbeat-deadline\n";
    return 2;
  }
  if (!probe_sources.empty()) {
    options.tunnel_args.push_back("--kubelet-probe-source");
    options.tunnel_args.push_back(probe_sources);
  }
  options.drain_grace = absl::GetFlag(FLAGS_dataplane_drain_grace);
  if (options.drain_grace < absl::ZeroDuration() || options.drain_grace > absl::Hours(24)) {
    std::cerr << "ambitd: --dataplane-drain-grace must be between 0s and 24h\n";
    return 2;
  }
  options.standby_timeout = absl::GetFlag(FLAGS_dataplane_standby_timeout);
  if (options.standby_timeout < absl::Seconds(1) || options.standby_timeout > absl::Minutes(10)) {
    std::cerr << "ambitd: --dataplane-standby-timeout must be between 1s and 10m\n";
    return 2;
  }
  options.tunnel_args.push_back("--idle-timeout");
  options.tunnel_args.push_back(absl::FormatDuration(absl::GetFlag(FLAGS_hbone_idle_timeout)));
  options.tunnel_args.push_back("--failed-stream-burst");
  options.tunnel_args.push_back(absl::StrCat(absl::GetFlag(FLAGS_hbone_failed_stream_burst)));
  options.tunnel_args.push_back("--failed-stream-rate");
  options.tunnel_args.push_back(absl::StrCat(absl::GetFlag(FLAGS_hbone_failed_stream_rate)));
  options.tunnel_args.push_back("--access-log-format");
  options.tunnel_args.push_back(absl::GetFlag(FLAGS_access_log_format));
  options.tunnel_args.push_back("--max-config-bytes");
  options.tunnel_args.push_back(std::to_string(absl::GetFlag(FLAGS_max_config_bytes)));
  if (auto ttl = ambit::issuance::CheckCertTtl(options.cert_ttl); !ttl.ok()) {
    std::cerr << "ambitd: --cert-ttl " << absl::FormatDuration(options.cert_ttl) << ": "
              << ttl.message() << "\n";
    return 2;
  }
  if (!options.ca_address.empty() &&
      options.ca_root_cert.empty() == options.ca_root_configmap.empty()) {
    std::cerr << "ambitd: --ca-address needs one of --ca-root-cert and --ca-root-configmap (the "
                 "roots to trust)\n";
    return 2;
  }
  if (!options.ca_root_configmap.empty() &&
      (options.ca_address.empty() || options.kube_api.empty())) {
    std::cerr << "ambitd: --ca-root-configmap needs --ca-address and --kube-api\n";
    return 2;
  }
  if (!ParsePorts(absl::GetFlag(FLAGS_bypass_ports), "bypass-ports",
                  &options.outbound_bypass_ports) ||
      !ParsePorts(absl::GetFlag(FLAGS_inbound_bypass_ports), "inbound-bypass-ports",
                  &options.inbound_bypass_ports)) {
    return 2;
  }
  for (absl::string_view c :
       absl::StrSplit(absl::GetFlag(FLAGS_bypass_cidrs), ',', absl::SkipEmpty())) {
    auto cidr = ambit::Cidr::Parse(c);
    if (!cidr.ok()) {
      std::cerr << "ambitd: --bypass-cidrs: " << cidr.status().message() << "\n";
      return 2;
    }
    options.outbound_bypass_cidrs.push_back(*cidr);
  }

  if (absl::GetFlag(FLAGS_cleanup)) {
    auto status = ambit::node::Agent::Cleanup(options, absl::GetFlag(FLAGS_force));
    if (!status.ok()) {
      std::cerr << "ambitd: cleanup: " << status.message() << "\n";
      return 1;
    }
    return 0;
  }

  if (options.ca_only) {
    auto inputs = ambit::node::MakeCaOnlyInputs(options);
    if (!inputs.ok()) {
      AMBIT_LOG("ca", Error) << "not starting: " << inputs.status().message();
      return 1;
    }
    auto ca = ambit::node::CaOnly::Create(options, std::move(*inputs));
    if (!ca.ok()) {
      AMBIT_LOG("ca", Error) << "not starting: " << ca.status().message();
      return 1;
    }
    auto status = (*ca)->Run();
    if (!status.ok()) {
      AMBIT_LOG("ca", Error) << status.message();
      return 1;
    }
    return 0;
  }

  auto agent = ambit::node::Agent::Create(options);
  if (!agent.ok()) {
    AMBIT_LOG("agent", Error) << "not starting: " << agent.status().message();
    return 1;
  }
  auto status = (*agent)->Run();
  if (auto handoff = (*agent)->TakeHandOff()) {
    // Destroying the agent is the stepping aside: threads joined, listeners and data-plane
    // sessions closed, the data planes, pins and pods left to the new agent.
    agent->reset();
    return ambit::node::Agent::StepAside(std::move(*handoff));
  }
  if (!status.ok()) {
    AMBIT_LOG("agent", Error) << status.message();
    return 1;
  }
  return 0;
}
