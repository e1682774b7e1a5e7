// istiod's delta ADS responses, as XdsSource hands them to its session. Input: the first byte
// picks how the rest is read: even, a whole DeltaDiscoveryResponse (any type URL, any resources,
// removals); odd, one resource's bytes of the type its second bit picks (Address or
// Authorization), wrapped in a response under the name the resource claims. Each input is
// handled twice (the second as a redelivery) and then under another mesh context, as a mesh.yaml
// change remaps it. Checks, besides "no crash": every reply carries the response's nonce and type;
// a NACK says why; no type holds more than the bound; every collected object has an id; a
// second identical delivery of an acknowledged response changes nothing.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "agent/xds/session.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace dv3 = ::envoy::service::discovery::v3;
namespace xds = ::ambit::xds;

std::string ClaimedName(bool authorization, const std::string& bytes) {
  if (authorization) {
    istio::security::Authorization a;
    if (!a.ParseFromString(bytes)) return "x";
    return a.namespace_() + "/" + a.name();
  }
  istio::workload::Address a;
  if (!a.ParseFromString(bytes)) return "x";
  if (a.has_service()) return a.service().namespace_() + "/" + a.service().hostname();
  return a.workload().uid();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  dv3::DeltaDiscoveryResponse response;
  if ((mode & 1) == 0) {
    if (!response.ParseFromString(rest)) return 0;
  } else {
    const bool authorization = (mode & 2) != 0;
    response.set_type_url(std::string(authorization ? xds::kAuthorizationType : xds::kAddressType));
    response.set_nonce("n");
    dv3::Resource* r = response.add_resources();
    r->set_name(ClaimedName(authorization, rest));
    r->set_version("1");
    r->mutable_resource()->set_type_url(response.type_url());
    r->mutable_resource()->set_value(rest);
  }
  constexpr size_t kMax = 64;
  xds::Session session({.max_resources = kMax}, {});
  xds::Session::Outcome first = session.Handle(response);
  FUZZ_REQUIRE(first.reply.response_nonce() == response.nonce());
  FUZZ_REQUIRE(first.reply.type_url() == response.type_url());
  FUZZ_REQUIRE(first.nack == first.reply.has_error_detail());
  if (first.nack) FUZZ_REQUIRE(!first.reply.error_detail().message().empty());
  xds::Session::Outcome again = session.Handle(response);
  std::set<std::string> names;
  for (const auto& r : response.resources()) names.insert(r.name());
  if (!first.nack && names.size() == static_cast<size_t>(response.resources_size())) {
    FUZZ_REQUIRE(!again.changed && !again.nack);
  }
  for (absl::string_view t : {xds::kAddressType, xds::kAuthorizationType}) {
    FUZZ_REQUIRE(session.resources(std::string(t)).size() <= kMax);
  }
  auto collect = [&session] {
    std::map<std::string, ambit::config::ConfigObject> objects;
    std::vector<ambit::config::ConfigError> errors;
    session.Collect(&objects, &errors);
    for (const auto& [id, object] : objects) FUZZ_REQUIRE(!id.empty());
    for (const auto& e : errors) FUZZ_REQUIRE(!e.message.empty());
  };
  collect();
  session.SetContext({.trust_domain = "example.org", .root_namespace = "mesh-root"});
  collect();
  auto start = session.Start(envoy::config::core::v3::Node());
  FUZZ_REQUIRE(start.size() == 2);
  return 0;
}
