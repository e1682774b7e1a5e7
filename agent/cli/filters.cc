#include "agent/cli/filters.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ambit::cli {
namespace {

// An address as the admin API writes it: an IP, "ip:port" or "[ip6]:port".
std::optional<IpAddress> IpOf(absl::string_view text) {
  if (auto ip = IpAddress::Parse(text); ip.ok()) return *ip;
  if (auto sa = SocketAddress::Parse(text); sa.ok()) return sa->ip;
  return std::nullopt;
}

}  // namespace

std::vector<FlagSpec> NamespaceFlags() {
  return {
      {"namespace", 'n', "NS", "only objects of this Kubernetes namespace"},
      {"all-namespaces", 'A', "", "objects of every namespace (the default)"},
  };
}

std::vector<FlagSpec> NamespaceAndAddressFlags() {
  std::vector<FlagSpec> flags = NamespaceFlags();
  flags.push_back({"address", '\0', "IP", "only objects with this IP address"});
  return flags;
}

absl::StatusOr<RowFilter> RowFilter::FromFlags(const Context& ctx) {
  RowFilter f;
  if (auto ns = ctx.flag("namespace")) {
    if (ctx.flag("all-namespaces").has_value()) {
      return absl::InvalidArgumentError(
          "-n/--namespace and -A/--all-namespaces exclude each other");
    }
    if (ns->empty()) return absl::InvalidArgumentError("-n/--namespace needs a namespace");
    f.ns_ = *ns;
  }
  if (auto address = ctx.flag("address")) {
    auto ip = IpAddress::Parse(*address);
    if (!ip.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--address '", *address, "' is not an IP address, e.g. 198.18.1.7 or 2001:2::7"));
    }
    f.address_ = *ip;
  }
  return f;
}

bool RowFilter::Namespace(absl::string_view ns) const { return !ns_.has_value() || ns == *ns_; }

bool RowFilter::QualifiedName(absl::string_view ns_slash_name) const {
  if (!ns_.has_value()) return true;
  const size_t slash = ns_slash_name.find('/');
  return slash != absl::string_view::npos && ns_slash_name.substr(0, slash) == *ns_;
}

bool RowFilter::Address(const std::vector<std::string>& addresses) const {
  if (!address_.has_value()) return true;
  for (const std::string& a : addresses) {
    if (auto ip = IpOf(a); ip.has_value() && *ip == *address_) return true;
  }
  return false;
}

std::string RowFilter::Describe() const {
  std::vector<std::string> parts;
  if (ns_.has_value()) parts.push_back(absl::StrCat("in namespace ", *ns_));
  if (address_.has_value()) parts.push_back(absl::StrCat("with address ", address_->ToString()));
  return absl::StrJoin(parts, " ");
}

}  // namespace ambit::cli
