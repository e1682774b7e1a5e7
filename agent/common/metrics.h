#pragma once

// Every metric ambit exports, declared once: name, type, help and label names. The data plane
// reports its counters by these declarations (agent/tunnel), and ambitd's /metrics page renders
// every family from them (agent/admin/prometheus.cc), so a name or help text lives in one place.
// Names and labels are part of the interface (dashboards, alerts, tests): never rename one.

#include <array>
#include <string_view>

namespace ambit::metrics {

// A histogram's samples are rendered as <name>_bucket{le=...}, _sum and _count.
enum class Type { kCounter, kGauge, kHistogram };

struct Metric {
  std::string_view name;
  Type type;
  std::string_view help;
  // Label names every sample carries, in order; empty entries are unused slots.
  std::array<std::string_view, 2> labels{};
};

// ---- Data plane (ambit-tunnel), per worker; ambitd sums the workers' samples. ----

// Istio's standard TCP metrics. Their labels are Istio's (reporter, source_workload, ...,
// connection_security_policy), named by the data plane's flow statistics.
inline constexpr Metric kTcpOpened{"istio_tcp_connections_opened_total", Type::kCounter,
                                   "Total TCP connections opened."};
inline constexpr Metric kTcpClosed{"istio_tcp_connections_closed_total", Type::kCounter,
                                   "Total TCP connections closed."};
inline constexpr Metric kTcpSentBytes{"istio_tcp_sent_bytes_total", Type::kCounter,
                                      "Bytes sent to the client (the response direction)."};
inline constexpr Metric kTcpReceivedBytes{
    "istio_tcp_received_bytes_total", Type::kCounter,
    "Bytes received from the client (the request direction)."};

inline constexpr Metric kPolicyDecisions{
    "ambit_policy_decisions_total",
    Type::kCounter,
    "Authorization decisions on connections reaching local pods, by result.",
    {"result"}};
inline constexpr Metric kHboneHandshakes{"ambit_hbone_handshakes_total",
                                         Type::kCounter,
                                         "HBONE (mTLS) sessions established.",
                                         {"result"}};
inline constexpr Metric kHboneHandshakeFailures{"ambit_hbone_handshake_failures_total",
                                                Type::kCounter,
                                                "HBONE handshakes that failed, by reason.",
                                                {"reason"}};
inline constexpr Metric kHboneErrors{"ambit_hbone_errors_total",
                                     Type::kCounter,
                                     "HTTP/2 misbehaviour of HBONE peers, by reason.",
                                     {"reason"}};
inline constexpr Metric kHboneStreamsOpened{"ambit_hbone_streams_opened_total", Type::kCounter,
                                            "HBONE CONNECT streams opened."};
inline constexpr Metric kHboneSessionsDrained{
    "ambit_hbone_sessions_drained_total",
    Type::kCounter,
    "HBONE connections that stopped taking new streams because a certificate expired or is no "
    "longer accepted, or because the data plane drains for its successor (upgrade), or that "
    "were closed at once because the peer is no longer trusted (peer_not_trusted), by reason.",
    {"reason"}};
inline constexpr Metric kPlaintextRefused{
    "ambit_plaintext_refused_total", Type::kCounter,
    "Plaintext connections refused because the port requires mTLS (STRICT)."};
inline constexpr Metric kClosedByPolicy{
    "ambit_connections_closed_by_policy_total", Type::kCounter,
    "Live connections closed because a policy change denied them."};
inline constexpr Metric kConnectionsRefused{
    "ambit_connections_refused_total",
    Type::kCounter,
    "New connections the data plane refused before any policy, by reason.",
    {"reason"}};
inline constexpr Metric kSnapshotsRejected{
    "ambit_snapshots_rejected_total", Type::kCounter,
    "Configuration snapshots the data plane could not apply."};

// ---- L7 waypoint (ambit-waypoint), per process; its own registry (agent/waypoint/metrics.h). ----

// Istio's standard HTTP metrics, one sample set per response code.
inline constexpr Metric kRequestsTotal{"istio_requests_total",
                                       Type::kCounter,
                                       "Requests the waypoint answered or forwarded.",
                                       {"reporter", "response_code"}};
inline constexpr Metric kRequestDuration{
    "istio_request_duration_milliseconds",
    Type::kHistogram,
    "Time from the request's first byte to the response's last.",
    {"reporter", "response_code"}};
inline constexpr Metric kRequestBytes{"istio_request_bytes",
                                      Type::kHistogram,
                                      "Request sizes (headers and body).",
                                      {"reporter", "response_code"}};
inline constexpr Metric kResponseBytes{"istio_response_bytes",
                                       Type::kHistogram,
                                       "Response sizes (headers and body).",
                                       {"reporter", "response_code"}};

// External authorization (CUSTOM policies) from the waypoint, by ext_authz provider.
inline constexpr Metric kExtAuthzChecks{
    "ambit_waypoint_ext_authz_checks_total",
    Type::kCounter,
    "Checks the waypoint asked of an ext_authz provider, by what came of them (allow, deny, error, "
    "failure_mode_allowed).",
    {"provider", "result"}};
inline constexpr Metric kExtAuthzDuration{
    "ambit_waypoint_ext_authz_duration_milliseconds",
    Type::kHistogram,
    "Time from the start of an ext_authz check to its answer or failure.",
    {"provider"}};

// ---- ambitd ----

inline constexpr Metric kDataplaneUp{
    "ambit_dataplane_up", Type::kGauge,
    "1 when ambitd is connected to a data plane that answers its heartbeat and could read its "
    "counters."};
inline constexpr Metric kDataplaneResponsive{
    "ambit_dataplane_responsive", Type::kGauge,
    "1 when the data plane answered ambitd's last heartbeat (through every worker thread) within "
    "the deadline."};
inline constexpr Metric kDataplaneRestarts{"ambit_dataplane_restarts_total", Type::kCounter,
                                           "Data-plane restarts since ambitd started."};
inline constexpr Metric kConfigGeneration{
    "ambit_config_generation",
    Type::kGauge,
    "Configuration generation: desired (built by ambitd) and applied (acknowledged by the data "
    "plane).",
    {"state"}};
inline constexpr Metric kDataplaneFailClosed{
    "ambit_dataplane_fail_closed", Type::kGauge,
    "1 while the data plane refuses new connections because the newest configuration could not "
    "be applied."};
inline constexpr Metric kEnrolledPods{"ambit_enrolled_pods", Type::kGauge,
                                      "Pods enrolled on this node."};
inline constexpr Metric kEnrollFailures{"ambit_enroll_failures", Type::kGauge,
                                        "Pods this node should enroll but could not."};
inline constexpr Metric kCertificateExpiry{
    "ambit_certificate_expiry_seconds",
    Type::kGauge,
    "Seconds until the workload certificate expires (negative: expired).",
    {"identity"}};
inline constexpr Metric kTrustRootExpiry{"ambit_trust_root_expiry_seconds",
                                         Type::kGauge,
                                         "Seconds until a trusted root expires.",
                                         {"subject"}};
inline constexpr Metric kBpfMapEntries{
    "ambit_bpf_map_entries", Type::kGauge, "Entries in an ambit BPF map.", {"map"}};
inline constexpr Metric kBpfMapMaxEntries{
    "ambit_bpf_map_max_entries", Type::kGauge, "Capacity of an ambit BPF map.", {"map"}};
inline constexpr Metric kBpfDrops{
    "ambit_bpf_drops_total",
    Type::kCounter,
    "Times ambit's BPF programs failed closed (refused a connect or dropped a SYN), by reason; "
    "`ambitctl bpf` says what each reason means.",
    {"reason"}};
inline constexpr Metric kReady{"ambit_ready", Type::kGauge, "1 when /healthz/ready answers 200."};

// ---- ambitd's API-server configuration source (--kube-api), per watched resource. ----
inline constexpr Metric kKubeSynced{
    "ambit_kube_synced",
    Type::kGauge,
    "1 once the resource's first full list from the API server arrived.",
    {"resource"}};
inline constexpr Metric kKubeLists{
    "ambit_kube_lists_total",
    Type::kCounter,
    "Full lists of the resource completed: the first, then one per relist (410 Gone, expired "
    "watch, undecodable event).",
    {"resource"}};
inline constexpr Metric kKubeWatchRestarts{"ambit_kube_watch_restarts_total",
                                           Type::kCounter,
                                           "Watches of the resource that ended and were started "
                                           "again (server timeout, disconnect, error).",
                                           {"resource"}};
inline constexpr Metric kKubeErrors{
    "ambit_kube_errors_total",
    Type::kCounter,
    "Failed lists and watches of the resource (connection, TLS, HTTP status, bad event).",
    {"resource"}};
inline constexpr Metric kKubeLastSyncAge{
    "ambit_kube_last_sync_age_seconds",
    Type::kGauge,
    "Seconds since the last list, event or bookmark of the resource arrived.",
    {"resource"}};

// Data plane, per worker.
inline constexpr Metric kKubeletProbes{
    "ambit_kubelet_probes_total", Type::kCounter,
    "Connections from the node's network namespace (kubelet probes) delivered to local pods past "
    "mTLS and authorization, as Istio exempts kubelet probes."};

// Data plane, per worker.
inline constexpr Metric kNatOriginalDst{
    "ambit_nat_original_destination_total",
    Type::kCounter,
    "Connections whose destination came from SO_ORIGINAL_DST: netfilter (istio-cni's in-pod "
    "rules) REDIRECTed them to the plaintext-inbound (15006) or outbound (15001) listener.",
    {"direction"}};

// ---- ambitd --ca-only (the cluster CA) ----

inline constexpr Metric kCaRequests{
    "ambit_ca_requests_total",
    Type::kCounter,
    "CreateCertificate calls the CA answered, by outcome: issued, unauthenticated (no token, a "
    "refused token, one that could not be checked, or another cluster's), denied (identity of "
    "no pod on the caller's node, or over its rate), unavailable (the pods' placement not "
    "loaded yet), invalid (a bad CSR), impersonation_denied (an ImpersonatedIdentity of no pod "
    "on the caller's node), impersonation_invalid (an ImpersonatedIdentity that is no Istio "
    "identity or not the CSR's).",
    {"outcome"}};
inline constexpr Metric kCaTokenReviews{
    "ambit_ca_token_reviews_total", Type::kCounter,
    "TokenReviews the CA sent to the API server (callers' tokens not answered from its cache)."};
inline constexpr Metric kHboneConnectRetries{
    "ambit_hbone_connect_retries_total", Type::kCounter,
    "HBONE CONNECTs the peer refused unprocessed (REFUSED_STREAM, or above the last stream id of "
    "its GOAWAY, e.g. a data plane draining for its successor) and opened again on another "
    "connection, once each."};

// ---- ambitd's ZDS sockets (--zds-listen: ambit-cni; --zds-connect: istio-cni). ----
inline constexpr Metric kZdsSessions{"ambit_zds_sessions",
                                     Type::kGauge,
                                     "ZDS sessions open, by who hands pods over: ambit-cni "
                                     "(--zds-listen) or istio-cni (--zds-connect).",
                                     {"source"}};
inline constexpr Metric kZdsRequests{
    "ambit_zds_requests_total",
    Type::kCounter,
    "ZDS requests answered, by type (add, keep, del, snapshot_sent; invalid for a packet that "
    "does not decode) and outcome (ok, error: acked with an error, invalid).",
    {"type", "outcome"}};

// ---- ambitd's istiod xDS source (--xds-address). ----
inline constexpr Metric kXdsConnected{
    "ambit_xds_connected", Type::kGauge,
    "1 while the delta ADS stream to istiod is open and istiod has answered on it."};
inline constexpr Metric kXdsResources{"ambit_xds_resources",
                                      Type::kGauge,
                                      "Resources of the type held from istiod (refused ones count "
                                      "with their last good version).",
                                      {"type_url"}};
inline constexpr Metric kXdsAcks{"ambit_xds_acks_total",
                                 Type::kCounter,
                                 "istiod's responses of the type acknowledged (every resource "
                                 "applied).",
                                 {"type_url"}};
inline constexpr Metric kXdsNacks{"ambit_xds_nacks_total",
                                  Type::kCounter,
                                  "istiod's responses of the type refused in part or whole (NACK "
                                  "with error_detail; the log names each resource and field).",
                                  {"type_url"}};
inline constexpr Metric kXdsReconnects{
    "ambit_xds_reconnects_total", Type::kCounter,
    "Delta ADS streams to istiod opened again after one ended or failed."};
// Plaintext clients of local pods (agent/tunnel/plaintext_clients.h), for STRICT readiness. Label
// sets are bounded by the data plane's tables (sources per worker, pod-port pairs per worker).
inline constexpr Metric kPlaintextClients{
    "ambit_plaintext_clients",
    Type::kGauge,
    "Distinct plaintext source addresses recently seen per local pod and port (refused ones "
    "included): who STRICT would refuse.",
    {"pod", "port"}};
inline constexpr Metric kPlaintextConnections{
    "ambit_plaintext_connections_total",
    Type::kCounter,
    "Plaintext connections decided by PeerAuthentication per local pod and port (STRICT refusals "
    "included); port \"other\" past the data plane's bound.",
    {"pod", "port"}};
inline constexpr Metric kPlaintextClientsEvicted{
    "ambit_plaintext_clients_evicted_total", Type::kCounter,
    "Plaintext sources dropped from the data plane's bounded table to make room for new ones."};

// Every declaration, in the order /metrics lists the families.
inline constexpr std::array<const Metric*, 53> kAll = {
    &kTcpOpened,
    &kTcpClosed,
    &kTcpSentBytes,
    &kTcpReceivedBytes,
    &kPolicyDecisions,
    &kHboneHandshakes,
    &kHboneHandshakeFailures,
    &kHboneErrors,
    &kHboneStreamsOpened,
    &kHboneSessionsDrained,
    &kPlaintextRefused,
    &kClosedByPolicy,
    &kConnectionsRefused,
    &kSnapshotsRejected,
    &kDataplaneUp,
    &kDataplaneResponsive,
    &kDataplaneRestarts,
    &kConfigGeneration,
    &kDataplaneFailClosed,
    &kEnrolledPods,
    &kEnrollFailures,
    &kCertificateExpiry,
    &kTrustRootExpiry,
    &kBpfMapEntries,
    &kBpfMapMaxEntries,
    &kBpfDrops,
    &kReady,
    &kRequestsTotal,
    &kRequestDuration,
    &kRequestBytes,
    &kResponseBytes,
    &kExtAuthzChecks,
    &kExtAuthzDuration,
    &kKubeSynced,
    &kKubeLists,
    &kKubeWatchRestarts,
    &kKubeErrors,
    &kKubeLastSyncAge,
    &kKubeletProbes,
    &kCaRequests,
    &kCaTokenReviews,
    &kNatOriginalDst,
    &kZdsSessions,
    &kZdsRequests,
    &kHboneConnectRetries,
    &kXdsConnected,
    &kXdsResources,
    &kXdsAcks,
    &kXdsNacks,
    &kXdsReconnects,
    &kPlaintextClients,
    &kPlaintextConnections,
    &kPlaintextClientsEvicted,
};

// The declaration of a name, or nullptr.
constexpr const Metric* Find(std::string_view name) {
  for (const Metric* m : kAll) {
    if (m->name == name) return m;
  }
  return nullptr;
}

}  // namespace ambit::metrics
