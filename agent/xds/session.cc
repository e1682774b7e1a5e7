#include "agent/xds/session.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ambit::xds {
namespace {

namespace dv3 = ::envoy::service::discovery::v3;

// google.rpc.Code INVALID_ARGUMENT, as a NACK's error_detail.code.
constexpr int kInvalidArgument = 3;
// A NACK's message names every refused resource; past this it is cut (the log has all).
constexpr size_t kMaxErrorDetail = 16 * 1024;

// Refusal messages already name the resource ("Workload <uid>: field ..."); a failure to decode
// the envelope does not, so it is named here.
std::string Named(absl::string_view name, absl::string_view message) {
  return absl::StrCat("resource '", name, "': ", message);
}

}  // namespace

Session::Session(Options options, MapContext context)
    : options_(std::move(options)), context_(std::move(context)) {
  for (const std::string& t : options_.type_urls) types_[t];
}

std::vector<dv3::DeltaDiscoveryRequest> Session::Start(
    const envoy::config::core::v3::Node& node) const {
  std::vector<dv3::DeltaDiscoveryRequest> out;
  for (const std::string& t : options_.type_urls) {
    dv3::DeltaDiscoveryRequest req;
    *req.mutable_node() = node;
    req.set_type_url(t);
    // No names to subscribe: a wildcard subscription to every resource of the type.
    for (const auto& [name, held] : types_.at(t).held) {
      (*req.mutable_initial_resource_versions())[name] = held.version;
    }
    out.push_back(std::move(req));
  }
  return out;
}

Session::Outcome Session::Handle(const dv3::DeltaDiscoveryResponse& response) {
  Outcome outcome;
  outcome.reply.set_type_url(response.type_url());
  outcome.reply.set_response_nonce(response.nonce());
  std::vector<std::string> rejects;
  auto it = types_.find(response.type_url());
  if (it == types_.end()) {
    rejects.push_back(absl::StrCat("type URL '", response.type_url(), "' was not subscribed to"));
  } else {
    Type& type = it->second;
    type.received = true;
    ++type.counters.responses;
    for (const std::string& name : response.removed_resources()) {
      if (type.held.erase(name) > 0) outcome.changed = true;
      type.refused.erase(name);
      unmappable_.erase(absl::StrCat(response.type_url(), " ", name));
    }
    for (const dv3::Resource& r : response.resources()) {
      std::string error;
      if (r.name().empty()) {
        error = "a resource without a name";
      } else if (!r.has_resource()) {
        error = Named(r.name(), "no resource (a removal goes in removed_resources)");
      } else if (r.resource().type_url() != response.type_url()) {
        error = Named(r.name(), absl::StrCat("holds a '", r.resource().type_url(),
                                             "' in a response of '", response.type_url(), "'"));
      } else if (!type.held.contains(r.name()) && type.held.size() >= options_.max_resources) {
        error = Named(r.name(), absl::StrCat("more than ", options_.max_resources,
                                             " resources of this type"));
      } else {
        absl::StatusOr<Mapped> mapped =
            MapResource(response.type_url(), r.name(), r.resource().value(), context_);
        if (mapped.ok()) {
          Held& held = type.held[r.name()];
          if (held.bytes != r.resource().value() || held.version != r.version()) {
            held.version = r.version();
            held.bytes = r.resource().value();
            held.mapped = std::move(*mapped);
            outcome.changed = true;
          }
          type.refused.erase(r.name());
          unmappable_.erase(absl::StrCat(response.type_url(), " ", r.name()));
          continue;
        }
        error = std::string(mapped.status().message());
      }
      rejects.push_back(error);
      if (!r.name().empty()) {
        type.refused[r.name()] = error;
        outcome.changed = true;  // the errors reported changed
      }
    }
  }
  if (rejects.empty()) {
    if (it != types_.end()) ++it->second.counters.acks;
    return outcome;
  }
  if (it != types_.end()) ++it->second.counters.nacks;
  outcome.nack = true;
  std::string message = absl::StrJoin(rejects, "; ");
  if (message.size() > kMaxErrorDetail) {
    message.resize(kMaxErrorDetail);
    message += "...";
  }
  outcome.reply.mutable_error_detail()->set_code(kInvalidArgument);
  outcome.reply.mutable_error_detail()->set_message(std::move(message));
  return outcome;
}

bool Session::SetContext(const MapContext& context) {
  if (context == context_) return false;
  context_ = context;
  unmappable_.clear();
  for (auto& [type_url, type] : types_) {
    for (auto& [name, held] : type.held) {
      absl::StatusOr<Mapped> mapped = MapResource(type_url, name, held.bytes, context_);
      if (mapped.ok()) {
        held.mapped = std::move(*mapped);
      } else {
        held.mapped.clear();
        unmappable_[absl::StrCat(type_url, " ", name)] = std::string(mapped.status().message());
      }
    }
  }
  return true;
}

bool Session::Received(const std::string& type_url) const {
  auto it = types_.find(type_url);
  return it != types_.end() && it->second.received;
}

std::vector<std::string> Session::Missing() const {
  std::vector<std::string> out;
  for (const std::string& t : options_.type_urls) {
    if (!types_.at(t).received) out.push_back(t);
  }
  return out;
}

const std::map<std::string, Session::Held>& Session::resources(const std::string& type_url) const {
  static const std::map<std::string, Held> kNone;
  auto it = types_.find(type_url);
  return it == types_.end() ? kNone : it->second.held;
}

Session::Counters Session::counters(const std::string& type_url) const {
  auto it = types_.find(type_url);
  return it == types_.end() ? Counters{} : it->second.counters;
}

void Session::Collect(std::map<std::string, config::ConfigObject>* objects,
                      std::vector<config::ConfigError>* errors) const {
  const std::string source(kSourceName);
  std::map<std::string, std::string> owner;  // object id -> the resource that yielded it
  for (const std::string& t : options_.type_urls) {
    const Type& type = types_.at(t);
    for (const auto& [name, held] : type.held) {
      for (const config::ParsedObject& o : held.mapped) {
        auto [at, inserted] = owner.emplace(o.id, name);
        if (inserted) {
          objects->insert_or_assign(o.id, o.object);
          continue;
        }
        // A waypoint's Gateway comes from every resource that uses it: the same object.
        if (o.id.starts_with("Gateway ") && objects->at(o.id) == o.object) continue;
        errors->push_back({source, o.id, "",
                           absl::StrCat("resource '", name, "' maps to the same object as '",
                                        at->second, "'; the one of '", at->second, "' is used")});
      }
    }
    for (const auto& [name, error] : type.refused) {
      errors->push_back(
          {source, "", "",
           absl::StrCat(error, type.held.contains(name)
                                   ? " (refused; its last good version stays in force)"
                                   : " (refused)")});
    }
  }
  for (const auto& [key, error] : unmappable_) {
    errors->push_back({source, "", "", absl::StrCat(error, " (left out under the mesh config)")});
  }
}

}  // namespace ambit::xds
