#pragma once

// One typed model of what ambitd tells the data plane about the mesh: every workload (pod) of the
// cluster, the services that select them, the PeerAuthentication resolved for the workloads of
// this node, and the policies (AuthorizationPolicy, RequestAuthentication) as the agent loaded
// them. ambitd fills it from the cluster state; agent/mesh/wire.h is its only mapping to and from
// the control channel; ambit-tunnel indexes it (agent/tunnel/mesh_snapshot.h). Adding a field
// means this file, wire.cc and the code that reads it.
//
// Plain value types (no Protobuf, no I/O): thread-compatible. The data plane keeps one Workload
// per pod of the cluster, so the record stays small: no derived strings (the key is computed),
// labels and mTLS only for the workloads of this node.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "agent/authn/model.h"
#include "agent/authz/ext_authz.h"
#include "agent/authz/model.h"
#include "agent/authz/peer_authentication.h"
#include "agent/common/ip_address.h"
#include "agent/identity/spiffe_id.h"

namespace ambit::mesh {

// Istio's PeerAuthentication mode: the one definition is authz's. A resolved mode is never
// kUnset; the wire mapping refuses it in both directions.
using authz::MtlsMode;

// The mode in force and the PeerAuthentication that decided it.
struct MtlsDecision {
  MtlsMode mode = MtlsMode::kPermissive;  // Istio's default when nothing is configured
  std::string policy;                     // "namespace/name"; empty: the default

  friend bool operator==(const MtlsDecision&, const MtlsDecision&) = default;
};

// PeerAuthentication as resolved for one workload: its mode, and the ports a portLevelMtls entry
// changes.
struct MtlsPolicy {
  MtlsDecision workload;
  std::map<uint16_t, MtlsDecision> ports;

  // What applies to connections to `port` of the workload.
  const MtlsDecision& ForPort(uint16_t port) const;

  friend bool operator==(const MtlsPolicy&, const MtlsPolicy&) = default;
};

// A pod anywhere in the cluster.
struct Workload {
  std::string namespace_name;
  std::string name;
  std::string service_account;
  std::string node;
  // Istio's workload metadata (state::Pod's), for every workload, peers too: metrics and access
  // logs name a flow's source and destination by them. Empty: not known ("unknown" in metrics).
  std::string workload_name;
  std::string canonical_service;
  std::string canonical_revision;
  identity::SpiffeId identity;  // what its certificate proves; the HBONE client checks it
  std::vector<IpAddress> ips;
  bool enrolled_here = false;  // served by this node's data plane
  bool in_mesh = false;        // captured by ambit on its node: reachable over HBONE
  // Only for workloads enrolled here (policies select their destination by labels, and
  // PeerAuthentication applies where the connection arrives): a peer's would make the data
  // plane's memory grow with the cluster. mtls is set exactly when enrolled_here.
  std::map<std::string, std::string> labels;
  std::optional<MtlsPolicy> mtls;
  // Waypoint::Key() of the waypoint traffic addressed to this pod goes through; empty: none.
  // For a workload enrolled here it also means only that waypoint's identities may connect,
  // unless waypoint_bypass_allowed (set only for workloads enrolled here).
  std::string waypoint;
  bool waypoint_bypass_allowed = false;

  // "namespace/name": the key services name their endpoints by.
  std::string Key() const;

  friend bool operator==(const Workload&, const Workload&) = default;
};

// Kubernetes' Service port protocols.
enum class Protocol { kTcp, kUdp, kSctp };

// "TCP", "UDP", "SCTP".
absl::string_view ProtocolName(Protocol protocol);
// The inverse of ProtocolName; exact. nullopt for anything else.
std::optional<Protocol> ParseProtocol(absl::string_view name);

// What a waypoint makes of a service port's bytes, from its declared application protocol
// (Istio's protocol selection: `appProtocol`, else the port name's `<protocol>[-<suffix>]`).
enum class AppProtocol {
  kDetect,  // not declared (or not a protocol Istio knows): HTTP/1.x or h2c if the bytes are, else
            // TCP
  kHttp,    // http, http2, grpc, grpc-web: parsed as HTTP, decided per request
  kOpaque,  // tcp, tls, https, mongo, mysql, redis: passed through after the L4 decision
};

// "detect", "http", "opaque".
absl::string_view AppProtocolName(AppProtocol protocol);
// Istio's protocol selection for one port: `app_protocol` if set, else the name's prefix.
AppProtocol SelectAppProtocol(absl::string_view app_protocol, absl::string_view port_name);

struct ServicePort {
  uint16_t port = 0;
  uint16_t target_port = 0;  // the pod port; 0 when the service names one that cannot be mapped
  Protocol protocol = Protocol::kTcp;
  AppProtocol app = AppProtocol::kDetect;

  friend bool operator==(const ServicePort&, const ServicePort&) = default;
};

struct Service {
  std::string namespace_name;
  std::string name;
  std::vector<IpAddress> cluster_ips;  // empty for a headless service
  std::vector<ServicePort> ports;
  std::vector<std::string> endpoints;  // Workload::Key() of every workload it selects
  // Waypoint::Key() of the waypoint traffic addressed to a cluster IP goes through; empty: none.
  std::string waypoint;

  // "namespace/name".
  std::string Key() const;

  friend bool operator==(const Service&, const Service&) = default;
};

// A waypoint (Gateway of class istio-waypoint): where traffic bound to it goes, and who it is.
struct Waypoint {
  std::string namespace_name;
  std::string name;
  // Workload::Key() of its pods, workloads of the same snapshot: their addresses are where
  // traffic goes (port 15008), their identities the only ones a bound destination accepts.
  // Empty: no pod yet, and traffic bound to it is refused.
  std::vector<std::string> instances;

  // "namespace/name".
  std::string Key() const;

  friend bool operator==(const Waypoint&, const Waypoint&) = default;
};

// Why the tunnel of `workload` ("namespace/name"), bound to `waypoint` with the bypass closed,
// refuses `principal` (a verified SPIFFE ID; empty: a plaintext client): the words of the access
// log and of `ambitctl check`, one text for both.
std::string BypassRefusal(absl::string_view workload, absl::string_view waypoint, bool no_pod,
                          absl::string_view principal);

// One configuration generation, whole.
struct Snapshot {
  uint64_t version = 0;
  std::string trust_domain;
  // MeshConfig trustDomainAliases: HBONE peers of these trust domains are accepted (their chain
  // must still verify against the bundle) and policies match them as the mesh's own.
  std::vector<std::string> trust_domain_aliases;
  std::string root_namespace;
  // The cluster's name in Istio's telemetry (source_cluster, destination_cluster): ambitd's
  // --cluster-id. Empty: "unknown".
  std::string cluster_id;
  // Ports of ambit's own listeners besides 15001, 15006 and 15008 (metrics, readiness): the data
  // plane never delivers a connection to any of them.
  std::vector<uint16_t> reserved_ports;
  std::vector<Workload> workloads;
  std::vector<Service> services;
  // Every waypoint a workload or service names, and every waypoint with a pod here: which pods
  // are waypoints (where ambit-waypoint runs) is read from their instances.
  std::vector<Waypoint> waypoints;
  // As validated by the agent; the data plane compiles them.
  std::vector<authz::Policy> authorization_policies;
  // Every RequestAuthentication in force, of every namespace, as validated by the agent: a
  // waypoint serves many namespaces and authenticates requests with them. The node tunnel keeps
  // them for it and uses none (it sees no HTTP).
  std::vector<authn::RequestAuthentication> request_authentications;
  // MeshConfig's ext_authz extensionProviders, each once by name, Istio's defaults filled in and
  // `service` resolved to a Service of this snapshot (or unresolved, saying why): what a CUSTOM
  // AuthorizationPolicy names. Only a waypoint asks them.
  std::vector<authz::ExtAuthzProvider> ext_authz_providers;

  friend bool operator==(const Snapshot&, const Snapshot&) = default;
};

}  // namespace ambit::mesh
