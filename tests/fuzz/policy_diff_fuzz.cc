// ambitctl policy diff inside ambitd (agent/node/policy_diff.h): a file's YAML as the admin API
// hands it over, and the data plane's live connections it is judged against.
// Input: [16-bit length][one file's content (YAML)] [rest: the data plane's StatsResponse].
// Properties: no crash or leak; every connection named as closed is one of the live inbound
// flows; a flipped workload's default really changes.

#include <memory>
#include <set>
#include <string>

#include "agent/node/policy_diff.h"
#include "ambit/admin/v1/admin.pb.h"
#include "ambit/dataplane/v1/dataplane.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::shared_ptr<const ambit::state::ClusterState> Cluster() {
  auto c = std::make_shared<ambit::state::ClusterState>();
  for (const auto& [ns, name, sa, ip] : {std::tuple{"backend", "api", "api", "198.18.0.2"},
                                         {"frontend", "web", "web", "198.18.0.3"}}) {
    ambit::state::Pod p;
    p.namespace_name = ns;
    p.name = name;
    p.service_account = sa;
    p.labels = {{"app", name}};
    p.netns_path = "/run/netns/x";  // ambit.dev/netns: in the mesh
    p.ips = {*ambit::IpAddress::Parse(ip)};
    c->pods[p.Key()] = p;
  }
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto* cluster = new std::shared_ptr<const ambit::state::ClusterState>(Cluster());
  ambit::fuzz::Input in(data, size);
  ambit::admin::v1::PolicyDiffRequest req;
  auto* f = req.add_files();
  f->set_name("fuzz.yaml");
  f->set_content(std::string(in.TakeSized()));
  ambit::dataplane::v1::StatsResponse live;
  const absl::string_view rest = in.Rest();
  if (!live.ParseFromArray(rest.data(), static_cast<int>(rest.size()))) live.Clear();
  auto out = ambit::node::PolicyDiff({.cluster = *cluster}, live, req);
  if (!out.ok()) return 0;
  std::set<uint64_t> inbound;
  for (const auto& flow : live.flows()) {
    if (flow.direction() == "inbound") inbound.insert(flow.id());
  }
  for (const auto& c : out->closed()) FUZZ_REQUIRE(inbound.contains(c.id()));
  for (const auto& w : out->flipped()) FUZZ_REQUIRE(w.before() != w.after());
  return 0;
}
