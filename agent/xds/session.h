#pragma once

// The client side of one delta ADS subscription set (envoy.service.discovery.v3
// DeltaAggregatedResources) as ztunnel runs it against istiod, without I/O: the requests that
// open a stream, what each response does to the resources held, and the ACK or NACK it gets.
//
//  - Start: one wildcard request per type URL, each with the node and, after a reconnect, the
//    name and version of every resource still held (initial_resource_versions), so that istiod
//    sends only what changed and the removals the client missed.
//  - Handle: every resource is decoded and mapped on its own (mapping.h). A good one replaces the
//    version held; a bad one is refused and the version held (if any) stays in force, as does its
//    version in the next initial_resource_versions. Names in removed_resources are dropped. The
//    reply carries the response's nonce: an ACK, or a NACK whose error_detail names each refused
//    resource and field. A response of a type not subscribed to is NACKed whole.
//  - Bounded: at most max_resources per type (new names past it are refused).
//  - A type counts as received once its first response was handled, refused resources or not:
//    the rest of it applies, and the refusals are reported (last good per resource, not per type).
//
// The context (trust domain, root namespace) comes from mesh.yaml and may change: SetContext
// maps every held resource again. Not thread-safe; one owner (XdsSource locks around it).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/config/error.h"
#include "agent/xds/mapping.h"
#include "envoy/service/discovery/v3/discovery.pb.h"

namespace ambit::xds {

class Session {
 public:
  struct Options {
    std::vector<std::string> type_urls = {std::string(kAddressType),
                                          std::string(kAuthorizationType)};
    size_t max_resources = 500000;  // per type
  };

  // One resource held: the version istiod gave, its bytes and what they map to.
  struct Held {
    std::string version;
    std::string bytes;
    Mapped mapped;
  };

  struct Counters {
    uint64_t responses = 0;
    uint64_t acks = 0;
    uint64_t nacks = 0;
  };

  // The result of one response.
  struct Outcome {
    envoy::service::discovery::v3::DeltaDiscoveryRequest reply;  // the ACK or NACK to send
    bool nack = false;
    bool changed = false;  // the resources held changed
  };

  Session(Options options, MapContext context);

  // The first request of each type on a new stream.
  std::vector<envoy::service::discovery::v3::DeltaDiscoveryRequest> Start(
      const envoy::config::core::v3::Node& node) const;
  Outcome Handle(const envoy::service::discovery::v3::DeltaDiscoveryResponse& response);

  // Maps every held resource under `context`; a resource that no longer maps is left out of
  // Collect until it maps again (its error is in Collect's errors). True if anything changed.
  bool SetContext(const MapContext& context);
  const MapContext& context() const { return context_; }

  // Whether a response of the type was handled on some stream.
  bool Received(const std::string& type_url) const;
  // The subscribed types no response has come for yet.
  std::vector<std::string> Missing() const;
  const std::map<std::string, Held>& resources(const std::string& type_url) const;
  Counters counters(const std::string& type_url) const;

  // Every object of every resource held, by id (a duplicate id is an error naming both
  // resources; the first by type and name wins), plus the refusals of the last response of each
  // type that are still unresolved, as config errors of source kSourceName.
  void Collect(std::map<std::string, config::ConfigObject>* objects,
               std::vector<config::ConfigError>* errors) const;

 private:
  struct Type {
    bool received = false;
    std::map<std::string, Held> held;  // by resource name
    // Resources refused and not yet replaced or removed, by name: their error.
    std::map<std::string, std::string> refused;
    Counters counters;
  };

  Options options_;
  MapContext context_;
  std::map<std::string, Type> types_;  // by type URL, every subscribed one
  // Held resources whose mapping failed under the current context (SetContext), by
  // "<type URL> <name>": their error.
  std::map<std::string, std::string> unmappable_;
};

}  // namespace ambit::xds
