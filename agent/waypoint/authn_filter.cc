#include "agent/waypoint/authn_filter.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/common/log.h"

namespace ambit::waypoint {
namespace {

constexpr const char* kLog = "waypoint";

// Envoy's response code details for a jwt_authn rejection, "jwt_authn_access_denied{<text>}"
// with the text's spaces as underscores (Envoy's form), so the access log keeps one token per
// field: "jwt_authn_access_denied{Jwt_is_expired}".
std::string Details(const std::string& body) {
  std::string text = body;
  for (char& c : text) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return absl::StrCat("jwt_authn_access_denied{", text, "}");
}

}  // namespace

FilterResult AuthnFilter::OnRequest(RequestContext& ctx) {
  authn::AuthnResult r =
      authenticator_->Authenticate(target_, ctx.request, clock_->Now(), cache_.get());
  if (!r.allowed) {
    ctx.details = Details(r.body);
    AMBIT_LOG(kLog, Debug) << "jwt_authn rejected " << ctx.request.method << " " << ctx.request.host
                           << ctx.request.path << ": " << r.reason;
    HeaderList headers;
    if (!r.www_authenticate.empty()) headers.emplace_back("www-authenticate", r.www_authenticate);
    return FilterResult::Respond(r.http_status, std::move(r.body), std::move(headers));
  }
  if (r.auth) {
    ctx.jwt_principal = r.auth->principal;
    ctx.request.auth = std::move(r.auth);
  }
  for (authn::HeaderMutation& m : r.header_mutations) {
    ctx.upstream_header_edits.push_back(HeaderEdit{
        m.op == authn::HeaderMutation::Op::kRemove ? HeaderEdit::Op::kRemove : HeaderEdit::Op::kSet,
        std::move(m.name), std::move(m.value)});
  }
  return FilterResult::Continue();
}

}  // namespace ambit::waypoint
