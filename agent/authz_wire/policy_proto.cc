#include "agent/authz_wire/policy_proto.h"

#include "absl/strings/str_cat.h"

namespace ambit::authz_wire {
namespace {

namespace pb = ::ambit::dataplane::v1;

template <typename R>
std::vector<std::string> Vec(const R& repeated) {
  return std::vector<std::string>(repeated.begin(), repeated.end());
}

template <typename R>
void Fill(const std::vector<std::string>& in, R* out) {
  for (const auto& s : in) out->Add(std::string(s));
}

}  // namespace

void ToProto(const authz::Policy& p, pb::AuthzPolicy* out) {
  out->set_name(p.name);
  out->set_namespace_(p.namespace_name);
  switch (p.action) {
    case authz::Action::kAllow:
      out->set_action(pb::AuthzPolicy::ALLOW);
      break;
    case authz::Action::kDeny:
      out->set_action(pb::AuthzPolicy::DENY);
      break;
    case authz::Action::kAudit:
      out->set_action(pb::AuthzPolicy::AUDIT);
      break;
    case authz::Action::kCustom:
      out->set_action(pb::AuthzPolicy::CUSTOM);
      break;
  }
  out->set_provider(p.provider);
  out->set_provider_undefined(p.provider_undefined);
  out->set_has_selector(p.selector.has_value());
  if (p.selector) {
    for (const auto& [k, v] : *p.selector) (*out->mutable_selector())[k] = v;
  }
  for (const auto& t : p.target_refs) {
    auto* r = out->add_target_refs();
    r->set_group(t.group);
    r->set_kind(t.kind);
    r->set_name(t.name);
  }
  out->set_has_rules(p.rules.has_value());
  if (p.rules) {
    for (const auto& rule : *p.rules) {
      auto* r = out->add_rules();
      for (const auto& s : rule.from) {
        auto* f = r->add_from();
        Fill(s.principals, f->mutable_principals());
        Fill(s.not_principals, f->mutable_not_principals());
        Fill(s.request_principals, f->mutable_request_principals());
        Fill(s.not_request_principals, f->mutable_not_request_principals());
        Fill(s.namespaces, f->mutable_namespaces());
        Fill(s.not_namespaces, f->mutable_not_namespaces());
        Fill(s.service_accounts, f->mutable_service_accounts());
        Fill(s.not_service_accounts, f->mutable_not_service_accounts());
        Fill(s.ip_blocks, f->mutable_ip_blocks());
        Fill(s.not_ip_blocks, f->mutable_not_ip_blocks());
        Fill(s.remote_ip_blocks, f->mutable_remote_ip_blocks());
        Fill(s.not_remote_ip_blocks, f->mutable_not_remote_ip_blocks());
        Fill(s.trust_domains, f->mutable_trust_domains());
        Fill(s.not_trust_domains, f->mutable_not_trust_domains());
      }
      for (const auto& o : rule.to) {
        auto* t = r->add_to();
        Fill(o.hosts, t->mutable_hosts());
        Fill(o.not_hosts, t->mutable_not_hosts());
        Fill(o.ports, t->mutable_ports());
        Fill(o.not_ports, t->mutable_not_ports());
        Fill(o.methods, t->mutable_methods());
        Fill(o.not_methods, t->mutable_not_methods());
        Fill(o.paths, t->mutable_paths());
        Fill(o.not_paths, t->mutable_not_paths());
      }
      for (const auto& c : rule.when) {
        auto* w = r->add_when();
        w->set_key(c.key);
        Fill(c.values, w->mutable_values());
        Fill(c.not_values, w->mutable_not_values());
      }
    }
  }
  out->set_dry_run(p.dry_run);
  out->set_source_file(p.source_file);
}

absl::StatusOr<authz::Policy> FromProto(const pb::AuthzPolicy& in) {
  authz::Policy p;
  p.name = in.name();
  p.namespace_name = in.namespace_();
  // The raw number: an action this build does not know must not become a default (a DENY read
  // as ALLOW would open what it closes).
  switch (static_cast<int>(in.action())) {
    case pb::AuthzPolicy::ALLOW:
      p.action = authz::Action::kAllow;
      break;
    case pb::AuthzPolicy::DENY:
      p.action = authz::Action::kDeny;
      break;
    case pb::AuthzPolicy::AUDIT:
      p.action = authz::Action::kAudit;
      break;
    case pb::AuthzPolicy::CUSTOM:
      p.action = authz::Action::kCustom;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("AuthorizationPolicy ", in.namespace_(), "/", in.name(), ": action: ",
                       in.action() == pb::AuthzPolicy::ACTION_UNSPECIFIED
                           ? std::string("ACTION_UNSPECIFIED is not an action")
                           : absl::StrCat("unknown action ", static_cast<int>(in.action()))));
  }
  p.provider = in.provider();
  p.provider_undefined = in.provider_undefined();
  if (in.has_selector()) {
    p.selector = std::map<std::string, std::string>(in.selector().begin(), in.selector().end());
  }
  for (const auto& t : in.target_refs()) p.target_refs.push_back({t.group(), t.kind(), t.name()});
  if (in.has_rules()) {
    std::vector<authz::Rule> rules;
    for (const auto& r : in.rules()) {
      authz::Rule rule;
      for (const auto& f : r.from()) {
        rule.from.push_back(authz::Source{
            Vec(f.principals()), Vec(f.not_principals()), Vec(f.request_principals()),
            Vec(f.not_request_principals()), Vec(f.namespaces()), Vec(f.not_namespaces()),
            Vec(f.service_accounts()), Vec(f.not_service_accounts()), Vec(f.ip_blocks()),
            Vec(f.not_ip_blocks()), Vec(f.remote_ip_blocks()), Vec(f.not_remote_ip_blocks()),
            Vec(f.trust_domains()), Vec(f.not_trust_domains())});
      }
      for (const auto& t : r.to()) {
        rule.to.push_back(authz::Operation{
            Vec(t.hosts()), Vec(t.not_hosts()), Vec(t.ports()), Vec(t.not_ports()),
            Vec(t.methods()), Vec(t.not_methods()), Vec(t.paths()), Vec(t.not_paths())});
      }
      for (const auto& w : r.when()) {
        rule.when.push_back(authz::Condition{w.key(), Vec(w.values()), Vec(w.not_values())});
      }
      rules.push_back(std::move(rule));
    }
    p.rules = std::move(rules);
  }
  p.dry_run = in.dry_run();
  p.source_file = in.source_file();
  return p;
}

}  // namespace ambit::authz_wire
