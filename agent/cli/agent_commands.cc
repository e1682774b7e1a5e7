// ambitctl commands that ask the running agent over its admin API: workloads, policies, check,
// bpf, services, log and config-dump. Each builds a Value from one admin view; config-dump puts
// all of them (and the certificates) into one document.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/cli/admin_client.h"
#include "agent/cli/commands.h"
#include "agent/cli/filters.h"
#include "agent/common/status.h"

namespace ambit::cli {
namespace {

namespace pb = ::ambit::admin::v1;
using Stub = pb::Admin::Stub;

template <typename Req, typename Resp>
absl::StatusOr<Resp> Call(Context& ctx, Stub& stub,
                          grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                          const Req& req = Req(),
                          std::chrono::seconds deadline = std::chrono::seconds(5)) {
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + deadline);
  Resp resp;
  grpc::Status status = (stub.*method)(&call, req, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  return resp;
}

template <typename Container>
Value Strings(const Container& items) {
  Value out = Value::MakeList();
  for (const auto& s : items) out.Append(Value(std::string(s)));
  return out;
}

Value OrNull(const std::string& s) { return s.empty() ? Value() : Value(s); }

Value GenerationValue(const pb::ConfigGeneration& g) {
  return Value::Object({{"desired", static_cast<int64_t>(g.desired())},
                        {"applied", static_cast<int64_t>(g.applied())},
                        {"pendingMs", static_cast<int64_t>(g.pending_ms())},
                        {"error", OrNull(g.error())},
                        {"failClosed", g.fail_closed()}});
}

// One line under a table: which generation it shows and whether the data plane enforces it.
std::string GenerationLine(const pb::ConfigGeneration& g) {
  if (g.desired() == g.applied()) {
    return absl::StrCat("Configuration generation ", g.desired(),
                        ", enforced by the data plane.\n");
  }
  std::string line = absl::StrCat(
      "NOT ENFORCED YET: this shows configuration generation ", g.desired(), "; the data plane ",
      g.applied() == 0 ? std::string("has applied none")
                       : absl::StrCat("enforces generation ", g.applied()),
      " (pending ", g.pending_ms(), " ms");
  if (!g.error().empty()) absl::StrAppend(&line, ": ", g.error());
  absl::StrAppend(&line, ")");
  if (g.fail_closed()) absl::StrAppend(&line, "; it refuses new connections until this applies");
  return line + ".\n";
}

// The views. `table`: one line per row, nested parts flattened into text.
Value WorkloadsValue(const pb::ListWorkloadsResponse& resp, bool table, bool wide = false) {
  Value out = Value::MakeList();
  for (const auto& w : resp.workloads()) {
    Value redirect;
    if (w.has_redirect()) {
      if (table) {
        redirect =
            absl::StrCat("cookie=", w.redirect().netns_cookie(), " slot=", w.redirect().slot(),
                         " listeners=", absl::StrJoin(w.redirect().listeners(), ","),
                         " netns=", w.redirect().netns_source());
      } else {
        redirect = Value::Object({{"netnsCookie", w.redirect().netns_cookie()},
                                  {"slot", w.redirect().slot()},
                                  {"netnsSource", w.redirect().netns_source()},
                                  {"listeners", Strings(w.redirect().listeners())}});
      }
    }
    Value row = Value::Object({
        {"namespace", w.namespace_()},
        {table ? "pod" : "name", w.name()},
        {"ips", Strings(w.ips())},
        {"node", w.node()},
        {"identity", w.identity()},
        {"role", w.role()},
        {"mtls", w.mtls_mode()},
    });
    if (!table) row.Set("mtlsPolicy", OrNull(w.mtls_policy()));
    if (wide) row.Set("mtls policy", w.mtls_policy().empty() ? "-" : w.mtls_policy());
    row.Set("waypoint",
            table ? Value(w.waypoint().empty() ? "-" : w.waypoint()) : OrNull(w.waypoint()));
    if (!table) {
      row.Set("waypointInstanceOf", OrNull(w.waypoint_instance_of()));
      row.Set("waypointBypassAllowed", w.waypoint_bypass_allowed());
    } else if (wide) {
      row.Set("waypoint of", w.waypoint_instance_of().empty() ? "-" : w.waypoint_instance_of());
    }
    row.Set("redirect", redirect);
    std::string status = w.status().empty() ? "ok" : w.status();
    if (table && w.warnings_size() > 0) {
      absl::StrAppend(&status, " (", w.warnings_size(),
                      w.warnings_size() == 1 ? " warning" : " warnings", ")");
    }
    row.Set("status", status);
    if (!table) row.Set("warnings", Strings(w.warnings()));
    if (!table || !w.enroll_error().empty()) row.Set("error", OrNull(w.enroll_error()));
    out.Append(std::move(row));
  }
  return out;
}

Value PoliciesValue(const pb::ListPoliciesResponse& resp, bool table, bool wide = false) {
  Value policies = Value::MakeList();
  for (const auto& p : resp.policies()) {
    Value row = Value::Object({
        {"kind", p.kind()},
        {"namespace", p.namespace_()},
        {"name", p.name()},
        {table ? "action/mode" : "action", p.action()},
        {"scope", p.scope()},
        {"dryRun", p.dry_run()},
    });
    if (!table) {
      row.Set("provider", OrNull(p.provider()));
      row.Set("portLevelMtls", Strings(p.port_level()));
      row.Set("sourceFile", OrNull(p.source_file()));
      row.Set("warnings", Strings(p.warnings()));
    } else {
      row.Set("warnings", static_cast<int64_t>(p.warnings_size()));
      if (wide) {
        row.Set("provider", p.provider().empty() ? "-" : p.provider());
        row.Set("source", p.source_file().empty() ? "-" : p.source_file());
      }
    }
    policies.Append(std::move(row));
  }
  Value rejected = Value::MakeList();
  Value warnings = Value::MakeList();
  for (const auto& e : resp.problems()) {
    if (table) {
      (e.warning() ? warnings : rejected).Append(Value(e.text()));
      continue;
    }
    (e.warning() ? warnings : rejected)
        .Append(Value::Object({{"file", e.file()},
                               {"line", e.line()},
                               {"object", OrNull(e.object())},
                               {"field", OrNull(e.field())},
                               {"message", e.message()},
                               {"error", e.text()}}));
  }
  if (table) {
    for (const auto& p : resp.policies()) {
      for (const auto& w : p.warnings()) warnings.Append(Value(w));
    }
  }
  return Value::Object({{"policies", policies}, {"rejected", rejected}, {"warnings", warnings}});
}

Value ServicesValue(const pb::ListServicesResponse& resp) {
  Value out = Value::MakeList();
  for (const auto& s : resp.services()) {
    Value ports = Value::MakeList();
    for (const auto& p : s.ports()) {
      ports.Append(Value(absl::StrCat(p.port(), p.target_port().empty() ? "" : "->",
                                      p.target_port(), "/", p.protocol())));
    }
    out.Append(Value::Object({{"namespace", s.namespace_()},
                              {"name", s.name()},
                              {"clusterIps", Strings(s.cluster_ips())},
                              {"ports", ports},
                              {"endpoints", Strings(s.endpoints())},
                              {"waypoint", OrNull(s.waypoint())}}));
  }
  return out;
}

Value BpfValue(const pb::GetBpfResponse& resp) {
  Value programs = Value::MakeList();
  for (const auto& p : resp.programs()) {
    programs.Append(Value::Object({{"name", p.name()},
                                   {"id", p.id()},
                                   {"verifiedInsns", p.verified_insns()},
                                   {"attachedTo", OrNull(p.attached_to())}}));
  }
  Value maps = Value::MakeList();
  for (const auto& m : resp.maps()) {
    maps.Append(Value::Object({{"name", m.name()},
                               {"id", m.id()},
                               {"type", m.type()},
                               {"entries", m.entries()},
                               {"maxEntries", m.max_entries()},
                               {"error", OrNull(m.error())}}));
  }
  Value links = Value::MakeList();
  for (const auto& l : resp.links()) {
    links.Append(Value::Object(
        {{"pinned", l.pinned()}, {"id", l.id()}, {"progId", l.prog_id()}, {"type", l.type()}}));
  }
  Value drops = Value::MakeList();
  for (const auto& d : resp.drops()) {
    drops.Append(Value::Object({{"reason", d.reason()},
                                {"count", d.count()},
                                {"program", d.program()},
                                {"meaning", d.meaning()}}));
  }
  return Value::Object({{"pinRoot", resp.pin_root()},
                        {"abiVersion", resp.abi_version()},
                        {"programs", programs},
                        {"maps", maps},
                        {"links", links},
                        {"drops", drops},
                        {"dropsError", OrNull(resp.drops_error())}});
}

Value LogLevelsValue(const pb::LogLevelResponse& resp) {
  Value out = Value::MakeList();
  for (const auto& l : resp.levels()) {
    out.Append(Value::Object({{"component", l.component()}, {"level", l.level()}}));
  }
  return out;
}

std::string Age(int64_t ms) {
  if (ms < 1000) return absl::StrCat(ms, "ms");
  int64_t s = ms / 1000;
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m", s % 60, "s");
  return absl::StrCat(s / 3600, "h", (s % 3600) / 60, "m");
}

Value EndValue(const pb::ConnectionEnd& e, bool table) {
  if (table) {
    std::string who = e.workload().empty() ? e.address() : e.workload();
    if (!e.service().empty()) absl::StrAppend(&who, " (svc ", e.service(), ")");
    return who;
  }
  return Value::Object({{"workload", OrNull(e.workload())},
                        {"identity", OrNull(e.identity())},
                        {"address", e.address()},
                        {"service", OrNull(e.service())}});
}

Value ConnectionsValue(const pb::ListConnectionsResponse& resp, bool table, bool wide = false) {
  Value out = Value::MakeList();
  for (const auto& c : resp.connections()) {
    if (table) {
      // The identity shown is the peer's: who the local pod talks to, as mTLS proved it.
      const pb::ConnectionEnd& peer = c.direction() == "outbound" ? c.destination() : c.source();
      Value row = Value::Object({
          {"pod", c.pod()},
          {"direction", c.direction()},
          {"source", EndValue(c.source(), true)},
          {"destination", EndValue(c.destination(), true)},
          {"peer identity", peer.identity().empty() ? "-" : peer.identity()},
          {"security", c.mtls() ? "mTLS" : "plaintext"},
          {"policy", c.policy().empty() ? "-" : c.policy()},
          {"sent", c.bytes_sent()},
          {"received", c.bytes_received()},
          {"age", Age(c.age_ms())},
      });
      if (wide) {
        // The local pod's own identity and the addresses, which the narrow table leaves out.
        const pb::ConnectionEnd& local = c.direction() == "outbound" ? c.source() : c.destination();
        row.Set("id", absl::StrCat(c.id()));
        row.Set("mode", c.mode());
        row.Set("local identity", local.identity().empty() ? "-" : local.identity());
        row.Set("source address", c.source().address());
        row.Set("destination address", c.destination().address());
      }
      out.Append(std::move(row));
      continue;
    }
    out.Append(Value::Object({
        {"id", absl::StrCat(c.id())},
        {"pod", c.pod()},
        {"direction", c.direction()},
        {"mode", c.mode()},
        {"security", c.mtls() ? "mutual_tls" : "none"},
        {"source", EndValue(c.source(), false)},
        {"destination", EndValue(c.destination(), false)},
        {"policy", OrNull(c.policy())},
        {"bytesSent", c.bytes_sent()},
        {"bytesReceived", c.bytes_received()},
        {"ageMs", c.age_ms()},
    }));
  }
  return out;
}

absl::Status Connections(Context& ctx) {
  pb::ListConnectionsRequest req;
  if (auto pod = ctx.flag("pod")) {
    if (pod->find('/') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pod \"", *pod, "\": expected NAMESPACE/NAME"));
    }
    req.set_pod(*pod);
  }
  AMBIT_ASSIGN_OR_RETURN(const RowFilter filter, RowFilter::FromFlags(ctx));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::ListConnections, req);
  if (!resp.ok()) return resp.status();
  // A connection is in the namespace of its local pod; it has the addresses of both ends.
  KeepIf(resp->mutable_connections(), [&filter](const pb::Connection& c) {
    return filter.QualifiedName(c.pod()) &&
           filter.Address({c.source().address(), c.destination().address()});
  });
  const bool table = ctx.output_format() == OutputFormat::kTable;
  if (table && resp->connections().empty()) {
    ctx.out() << "No live connections" << (req.pod().empty() ? "" : absl::StrCat(" of ", req.pod()))
              << (filter.active() ? absl::StrCat(" ", filter.Describe()) : "") << ".\n";
    return absl::OkStatus();
  }
  ctx.Print(table ? ConnectionsValue(*resp, true, ctx.wide())
                  : Value::Object({{"connections", ConnectionsValue(*resp, false)}}));
  return absl::OkStatus();
}

absl::Status Workloads(Context& ctx) {
  AMBIT_ASSIGN_OR_RETURN(const RowFilter filter, RowFilter::FromFlags(ctx));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::ListWorkloads);
  if (!resp.ok()) return resp.status();
  KeepIf(resp->mutable_workloads(), [&filter](const pb::Workload& w) {
    return filter.Namespace(w.namespace_()) && filter.Address(StringList(w.ips()));
  });
  const bool table = ctx.output_format() == OutputFormat::kTable;
  if (table && resp->workloads().empty()) {
    ctx.out() << (filter.active()
                      ? absl::StrCat("No workloads ", filter.Describe(), " in the configuration.\n")
                      : "No workloads in the configuration.\n")
              << GenerationLine(resp->generation());
    return absl::OkStatus();
  }
  if (table) {
    ctx.Print(WorkloadsValue(*resp, true, ctx.wide()));
    bool heading = false;
    for (const auto& w : resp->workloads()) {
      for (const auto& text : w.warnings()) {
        if (!heading) ctx.out() << "\nWarnings:\n";
        heading = true;
        ctx.out() << w.namespace_() << "/" << w.name() << ": " << text << "\n";
      }
    }
    ctx.out() << "\n" << GenerationLine(resp->generation());
  } else {
    ctx.Print(Value::Object({{"workloads", WorkloadsValue(*resp, false)},
                             {"generation", GenerationValue(resp->generation())}}));
  }
  return absl::OkStatus();
}

absl::Status Policies(Context& ctx) {
  AMBIT_ASSIGN_OR_RETURN(const RowFilter filter, RowFilter::FromFlags(ctx));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::ListPolicies);
  if (!resp.ok()) return resp.status();
  // Rejected resources stay listed whatever the filter: each is a configuration error to fix.
  KeepIf(resp->mutable_policies(),
         [&filter](const pb::PolicyEntry& p) { return filter.Namespace(p.namespace_()); });
  const bool table = ctx.output_format() == OutputFormat::kTable;
  Value v = PoliciesValue(*resp, table, ctx.wide());
  if (!table) {
    v.Set("generation", GenerationValue(resp->generation()));
    ctx.Print(v);
    return absl::OkStatus();
  }
  if (v.Find("policies")->as_list().empty()) {
    ctx.out() << "No AuthorizationPolicy or PeerAuthentication"
              << (filter.active() ? absl::StrCat(" ", filter.Describe()) : "") << " in force.\n";
  } else {
    ctx.Print(*v.Find("policies"));
  }
  if (!v.Find("rejected")->as_list().empty()) {
    ctx.out() << "\nRejected (not in force):\n";
    ctx.Print(*v.Find("rejected"));
  }
  if (!v.Find("warnings")->as_list().empty()) {
    ctx.out() << "\nWarnings:\n";
    ctx.Print(*v.Find("warnings"));
  }
  ctx.out() << "\n" << GenerationLine(resp->generation());
  return absl::OkStatus();
}

// The HTTP request of `check`: --method, --path, --header (repeated), --now.
absl::Status AddHttpFlags(Context& ctx, pb::CheckRequest* req) {
  for (const char* name : {"method", "path", "header", "now"}) {
    if (ctx.flag(name).has_value()) req->set_http(true);
  }
  if (auto method = ctx.flag("method")) {
    if (method->empty() || std::any_of(method->begin(), method->end(), [](char c) {
          return !absl::ascii_isalpha(static_cast<unsigned char>(c)) && c != '-' && c != '_';
        })) {
      return absl::InvalidArgumentError(
          absl::StrCat("--method '", *method, "' is not an HTTP method, e.g. GET or POST"));
    }
    req->set_method(*method);
  }
  if (auto path = ctx.flag("path")) {
    if (path->empty() || ((*path)[0] != '/' && *path != "*")) {
      return absl::InvalidArgumentError(
          absl::StrCat("--path '", *path, "' must start with '/', e.g. /get?x=1"));
    }
    req->set_path(*path);
  }
  for (const std::string& header : ctx.flag_values("header")) {
    // ":authority: x" names an HTTP/2 pseudo-header.
    const size_t colon =
        header.empty() ? std::string::npos : header.find(':', header.front() == ':' ? 1 : 0);
    const std::string name = colon == std::string::npos
                                 ? ""
                                 : std::string(absl::StripAsciiWhitespace(header.substr(0, colon)));
    if (name.empty() || name.find_first_of(" \t\r\n") != std::string::npos ||
        header.find_first_of("\r\n") != std::string::npos ||
        header.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--header '", header,
                       "' is not 'name: value', e.g. --header 'authorization: Bearer <jwt>'"));
    }
    auto* h = req->add_headers();
    h->set_name(absl::AsciiStrToLower(name));
    h->set_value(std::string(absl::StripAsciiWhitespace(header.substr(colon + 1))));
  }
  if (ctx.flag("now").has_value()) {
    AMBIT_ASSIGN_OR_RETURN(absl::Time now, NowFlag(ctx));
    req->set_now_unix_seconds(absl::ToUnixSeconds(now));
  }
  return absl::OkStatus();
}

Value HeaderEditsValue(const google::protobuf::RepeatedPtrField<pb::CheckHeaderEdit>& edits) {
  Value out = Value::MakeList();
  for (const auto& e : edits) {
    out.Append(Value::Object({{"op", e.op()},
                              {"name", e.name()},
                              {"value", e.op() == "remove" ? Value() : Value(e.value())}}));
  }
  return out;
}

// A CUSTOM policy at the waypoint: what its provider answered and what follows.
Value ExtAuthzValue(const pb::CheckExtAuthz& e) {
  Value headers = Value::MakeList();
  for (const auto& h : e.headers()) {
    headers.Append(Value::Object({{"name", h.name()}, {"value", h.value()}}));
  }
  return Value::Object({
      {"provider", e.provider()},
      {"policy", OrNull(e.policy())},
      {"asked", e.asked()},
      {"notAsked", OrNull(e.not_asked())},
      {"answer", OrNull(e.answer())},
      {"status", e.status() != 0 ? Value(static_cast<int64_t>(e.status())) : Value()},
      {"headers", std::move(headers)},
      {"body", OrNull(e.body())},
      {"upstreamEdits", HeaderEditsValue(e.upstream_edits())},
      {"downstreamEdits", HeaderEditsValue(e.downstream_edits())},
      {"detail", OrNull(e.detail())},
      {"latencyMs", e.asked() ? Value(static_cast<double>(e.latency_us()) / 1000.0) : Value()},
      {"waypointPod", OrNull(e.waypoint_pod())},
      {"kind", OrNull(e.kind())},
      {"failOpen", e.fail_open()},
      {"statusOnError",
       e.status_on_error() != 0 ? Value(static_cast<int64_t>(e.status_on_error())) : Value()},
      {"unresolved", OrNull(e.unresolved())},
      {"result", e.result()},
  });
}

// What `check -o json` prints: the decision as `policy check` prints it, then the waypoint, the
// HTTP answer, authentication and each hop.
Value CheckValue(const pb::CheckResponse& resp) {
  admin::DecisionSummary s{resp.decision(), resp.provider(), resp.after_ext_authz_allow(),
                           resp.policy(),   resp.reason(),   resp.mtls_mode()};
  s.refused_by_strict =
      resp.source_principal().empty() && resp.mtls_mode() == "STRICT" && resp.decision() == "deny";
  Value v = DecisionSummaryValue(s);
  auto text = [](const std::string& t) { return t.empty() ? Value() : Value(t); };
  v.Set("source", text(resp.source_principal()));
  v.Set("destination", text(resp.destination()));
  v.Set("destinationIp", text(resp.destination_ip()));
  v.Set("service", text(resp.service()));
  v.Set("endpoint", text(resp.endpoint_note()));
  v.Set("waypoint", text(resp.waypoint()));
  v.Set("httpStatus",
        resp.http_status() != 0 ? Value(static_cast<int64_t>(resp.http_status())) : Value());
  if (resp.has_authn()) {
    const pb::CheckAuthn& a = resp.authn();
    Value policies = Value::MakeList();
    for (const auto& p : a.policies()) policies.Append(Value(p));
    v.Set("authn",
          Value::Object({
              {"result", a.result()},
              {"status", a.status() != 0 ? Value(static_cast<int64_t>(a.status())) : Value()},
              {"reason", a.reason()},
              {"principal", text(a.principal())},
              {"rule", text(a.rule())},
              {"policies", std::move(policies)},
          }));
  } else {
    v.Set("authn", Value());
  }
  Value hops = Value::MakeList();
  for (const auto& h : resp.hops()) {
    hops.Append(Value::Object({
        {"kind", h.kind()},
        {"name", h.name()},
        {"decision", h.decision()},
        {"policy", text(h.policy())},
        {"reason", h.reason()},
        {"source", text(h.source_principal())},
    }));
  }
  v.Set("hops", std::move(hops));
  v.Set("extAuthz", resp.has_ext_authz() ? ExtAuthzValue(resp.ext_authz()) : Value());
  v.Set("generation", GenerationValue(resp.generation()));
  return v;
}

absl::Status Check(Context& ctx) {
  const std::string& from = ctx.args()[0];
  const std::string& to_port = ctx.args()[1];
  size_t colon = to_port.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(to_port.substr(colon + 1), &port) ||
      port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", to_port,
        "' is not TO:PORT, e.g. backend/api:8080, 198.18.1.7:8080 or [2001:2::7]:8080"));
  }
  std::string to = to_port.substr(0, colon);
  if (to.size() > 2 && to.front() == '[' && to.back() == ']') to = to.substr(1, to.size() - 2);
  if (from.find('/') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("FROM '", from, "' is not namespace/pod, e.g. default/web"));
  }
  pb::CheckRequest req;
  req.set_from(from);
  req.set_to(to);
  req.set_port(port);
  AMBIT_RETURN_IF_ERROR(AddHttpFlags(ctx, &req));
  req.set_no_ext_authz(ctx.flag("no-ext-authz").has_value());
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  // Asking the waypoint's ext_authz provider takes up to min(its timeout, 5 s) and the exchange
  // with the waypoint a little more (supervisor::DataPlane::kProbeWait).
  auto resp = Call(ctx, **stub, &Stub::Check, req, std::chrono::seconds(15));
  if (!resp.ok()) return resp.status();
  if (ctx.flag("exit-code").has_value() && resp->decision() == "deny") {
    ctx.set_exit_code(kExitFailure);
  }
  if (ctx.output_format() == OutputFormat::kTable) {
    ctx.out() << resp->trace();
    if (resp->generation().desired() != resp->generation().applied()) {
      ctx.out() << GenerationLine(resp->generation());
    }
    return absl::OkStatus();
  }
  ctx.Print(CheckValue(*resp));
  return absl::OkStatus();
}

absl::Status Bpf(Context& ctx) {
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::GetBpf);
  if (!resp.ok()) return resp.status();
  Value v = BpfValue(*resp);
  if (ctx.output_format() != OutputFormat::kTable) {
    ctx.Print(v);
    return absl::OkStatus();
  }
  ctx.out() << "Pins: " << resp->pin_root() << " (ABI v" << resp->abi_version()
            << ")\n\nPrograms:\n";
  ctx.Print(*v.Find("programs"));
  ctx.out() << "\nMaps:\n";
  ctx.Print(*v.Find("maps"));
  ctx.out() << "\nLinks:\n";
  ctx.Print(*v.Find("links"));
  ctx.out() << "\nDrops (the programs failed closed):\n";
  if (!resp->drops_error().empty()) {
    ctx.out() << "  unavailable: " << resp->drops_error() << "\n";
  } else {
    ctx.Print(*v.Find("drops"));
  }
  return absl::OkStatus();
}

Value DrainingValue(const pb::DataPlaneStatus& d) {
  if (d.draining_pids().empty()) return Value();
  Value pids = Value::MakeList();
  for (int pid : d.draining_pids()) pids.Append(Value(pid));
  return pids;
}

absl::Status RollDataPlane(Context& ctx) {
  pb::RollDataPlaneRequest req;
  req.set_process(ctx.args().empty() ? "tunnel" : ctx.args()[0]);
  if (req.process() != "tunnel" && req.process() != "waypoint") {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", req.process(), "\": the process to roll is tunnel or waypoint"));
  }
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  // The roll ends when the successor serves or is abandoned (ambitd bounds it).
  auto resp = Call(ctx, **stub, &Stub::RollDataPlane, req, std::chrono::seconds(90));
  if (!resp.ok()) return resp.status();
  if (ctx.output_format() == OutputFormat::kTable) {
    ctx.out() << resp->message() << "\n";
    return absl::OkStatus();
  }
  ctx.Print(Value::Object({{"mode", resp->mode()},
                           {"oldPid", resp->old_pid() != 0 ? Value(resp->old_pid()) : Value()},
                           {"newPid", resp->new_pid() != 0 ? Value(resp->new_pid()) : Value()},
                           {"message", resp->message()}}));
  return absl::OkStatus();
}

absl::Status Status(Context& ctx) {
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::GetStatus);
  if (!resp.ok()) return resp.status();
  Value problems = Value::MakeList();
  for (const auto& p : resp->problems()) problems.Append(p);
  Value planes = Value::MakeList();
  for (const auto& d : resp->data_planes()) {
    planes.Append(Value::Object({{"name", d.name()},
                                 {"mode", d.mode()},
                                 {"needed", d.needed()},
                                 {"connected", d.connected()},
                                 {"pid", d.pid() != 0 ? Value(d.pid()) : Value()},
                                 {"restarts", d.restarts()},
                                 {"socket", d.socket()},
                                 {"problem", d.problem().empty() ? Value() : Value(d.problem())},
                                 {"roll", d.roll().empty() ? Value() : Value(d.roll())},
                                 {"drainingPids", DrainingValue(d)}}));
  }
  Value v = Value::Object({{"ready", resp->ready()},
                           {"problems", std::move(problems)},
                           {"dataPlanes", std::move(planes)},
                           {"generation", GenerationValue(resp->generation())}});
  ctx.Print(v);
  // Scripts and probes can ask "is it ready" by the exit status alone.
  if (!resp->ready()) ctx.set_exit_code(kExitFailure);
  return absl::OkStatus();
}

absl::Status Services(Context& ctx) {
  AMBIT_ASSIGN_OR_RETURN(const RowFilter filter, RowFilter::FromFlags(ctx));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::ListServices);
  if (!resp.ok()) return resp.status();
  KeepIf(resp->mutable_services(), [&filter](const pb::Service& s) {
    return filter.Namespace(s.namespace_()) && filter.Address(StringList(s.cluster_ips()));
  });
  if (ctx.output_format() == OutputFormat::kTable) {
    if (resp->services().empty()) {
      ctx.out() << "No services" << (filter.active() ? absl::StrCat(" ", filter.Describe()) : "")
                << " in the configuration.\n";
    } else {
      ctx.Print(ServicesValue(*resp));
    }
    return absl::OkStatus();
  }
  ctx.Print(Value::Object({{"services", ServicesValue(*resp)}}));
  return absl::OkStatus();
}

absl::Status Log(Context& ctx) {
  pb::LogLevelRequest req;
  if (auto c = ctx.flag("component")) req.set_component(*c == "default" ? "" : *c);
  if (auto l = ctx.flag("level")) {
    if (l->empty()) return absl::InvalidArgumentError("--level needs a value");
    req.set_level(*l);
  }
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  auto resp = Call(ctx, **stub, &Stub::LogLevel, req);
  if (!resp.ok()) return resp.status();
  if (ctx.output_format() == OutputFormat::kTable) {
    ctx.Print(LogLevelsValue(*resp));
  } else {
    ctx.Print(Value::Object({{"levels", LogLevelsValue(*resp)}}));
  }
  return absl::OkStatus();
}

absl::Status ConfigDump(Context& ctx) {
  const std::string format = ctx.flag("format").value_or("ambit");
  if (format != "ambit" && format != "ztunnel") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format must be ambit or ztunnel, not \"", format, "\""));
  }
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  Stub& s = **stub;
  if (format == "ztunnel") {
    // ambitd builds it: the layout needs the configuration generation itself, not the views.
    pb::GetConfigDumpRequest req;
    req.set_format(format);
    auto dump = Call(ctx, s, &Stub::GetConfigDump, req, std::chrono::seconds(30));
    if (!dump.ok()) return dump.status();
    ctx.out() << dump->json() << "\n";
    return absl::OkStatus();
  }
  auto certs = Call(ctx, s, &Stub::ListCertificates);
  if (!certs.ok()) return certs.status();
  auto workloads = Call(ctx, s, &Stub::ListWorkloads);
  if (!workloads.ok()) return workloads.status();
  auto services = Call(ctx, s, &Stub::ListServices);
  if (!services.ok()) return services.status();
  auto policies = Call(ctx, s, &Stub::ListPolicies);
  if (!policies.ok()) return policies.status();
  auto bpf = Call(ctx, s, &Stub::GetBpf);
  if (!bpf.ok()) return bpf.status();
  auto levels = Call(ctx, s, &Stub::LogLevel);
  if (!levels.ok()) return levels.status();
  // Connections come from the data plane: a dump still works while it restarts.
  auto connections = Call(ctx, s, &Stub::ListConnections);
  Value conns = connections.ok() ? ConnectionsValue(*connections, false)
                                 : Value(std::string(connections.status().message()));
  Value doc = Value::Object({
      {"workloads", WorkloadsValue(*workloads, false)},
      {"services", ServicesValue(*services)},
      {"policies", PoliciesValue(*policies, false)},
      {"certificates", CertificatesValue(*certs)},
      {"bpf", BpfValue(*bpf)},
      {"logLevels", LogLevelsValue(*levels)},
      {"connections", conns},
  });
  // One document for tools: JSON unless YAML was asked for.
  ctx.out() << Render(
      doc, ctx.output_format() == OutputFormat::kYaml ? OutputFormat::kYaml : OutputFormat::kJson);
  return absl::OkStatus();
}

}  // namespace

Command WorkloadsCommand() {
  return Command{
      .name = "workloads",
      .summary = "List the pods the agent knows: identity, enrollment, mTLS, redirection",
      .description =
          "Lists every pod in the agent's configuration: namespace, pod, IPs, node, SPIFFE\n"
          "identity, role (enrolled: captured on this node; pending: should be, not yet;\n"
          "refused: should be, but will not be until its configuration changes; peer: in the\n"
          "mesh on another node; outside: not in the mesh), the workload's mTLS mode from\n"
          "PeerAuthentication (port-level overrides aside), the waypoint it uses\n"
          "(istio.io/use-waypoint), for enrolled pods the redirect state (netns cookie, BPF\n"
          "slot, the listeners open in the pod), and a status: ok, \"conflict: IP x held by\n"
          "ns/name\" (an older pod holds one of its addresses; the older is the one with the\n"
          "earlier metadata.creationTimestamp, else the one the agent saw first, then by\n"
          "namespace/name), \"refused: ...\" (it names the node's own network namespace) or\n"
          "\"enroll failed; retrying\".",
      .examples =
          "ambitctl workloads\nambitctl workloads -n default -o wide\n"
          "ambitctl workloads --address 198.18.1.7\nambitctl workloads -o json",
      .flags = NamespaceAndAddressFlags(),
      .run = Workloads,
  };
}

Command ConnectionsCommand() {
  return Command{
      .name = "connections",
      .summary = "List live connections: who to whom, identities, mTLS, policy, bytes, age",
      .description =
          "Lists the data plane's live connections: the local pod, direction (outbound: leaving\n"
          "it; inbound: reaching it), source and destination workload (or address) and\n"
          "SPIFFE identity, whether the connection crosses the wire in mTLS (HBONE) or\n"
          "plaintext, the policy that allowed it, bytes each way (sent: from the client,\n"
          "received: back to it) and age. Connections that were refused are not live; their\n"
          "access-log lines and `ambitctl check` say why.",
      .examples =
          "ambitctl connections\nambitctl connections --pod default/web\n"
          "ambitctl connections -o json",
      .flags = {{"pod", '\0', "NS/NAME", "only connections of this local pod"},
                {"namespace", 'n', "NS", "only connections of local pods in this namespace"},
                {"all-namespaces", 'A', "", "connections of every namespace (the default)"},
                {"address", '\0', "IP", "only connections with this address at either end"}},
      .run = Connections,
  };
}

Command PoliciesCommand() {
  return Command{
      .name = "policies",
      .summary = "List the AuthorizationPolicies and PeerAuthentications in force",
      .description =
          "Lists every AuthorizationPolicy (action) and PeerAuthentication (mode) in force,\n"
          "with its scope (mesh-wide, namespace, selector or targetRefs), dry-run, and what\n"
          "the node tunnel (L4) will not enforce as written; then the resources the last\n"
          "configuration load rejected, with their errors (they are not in force).",
      .examples =
          "ambitctl policies\nambitctl policies -n backend -o wide\nambitctl policies -o json",
      .flags = NamespaceFlags(),
      .run = Policies,
  };
}

Command CheckLiveCommand() {
  return Command{
      .name = "check",
      .summary = "Ask the running agent what would happen to a connection now",
      .description =
          "Evaluates a connection from pod FROM (namespace/pod) to TO:PORT with the policies\n"
          "the agent has in force, as the data path would. TO is a pod (IP or namespace/pod) or\n"
          "a Service (cluster IP or namespace/name; PORT is then the service port, and its\n"
          "first endpoint by name is evaluated). The source is FROM's SPIFFE identity when FROM\n"
          "is in the mesh, else a plaintext client.\n"
          "When the destination uses a waypoint (istio.io/use-waypoint), hop 1 is the waypoint:\n"
          "RequestAuthentication (JWT: 401/403 with Envoy's text), then the L7\n"
          "AuthorizationPolicies attached to its Gateway and the addressed Service, for the\n"
          "request given by --method, --path and --header (default GET /); hop 2 is the\n"
          "destination's node tunnel, which accepts only the waypoint's identity and applies its\n"
          "L4 policy. Without a waypoint the node tunnel decides at L4 and sees no HTTP.\n"
          "A CUSTOM policy at the waypoint hands the request to an ext_authz provider: the agent\n"
          "asks the waypoint running on this node to call the provider with this request (a real\n"
          "check: an authorizer with side effects has them; --no-ext-authz skips it) and shows\n"
          "what it answered (allow, deny with status, headers and body, or error), how long it\n"
          "took, and what follows (failOpen, statusOnError, then DENY/ALLOW policy). Not asked\n"
          "(--no-ext-authz, no waypoint on this node, the waypoint could not ask), the decision "
          "is\n"
          "undetermined.\n"
          "Output: a trace for people; -o json prints {decision, provider, afterExtAuthzAllow,\n"
          "policy, reason, mtls, source, destination, destinationIp, service, endpoint, waypoint,\n"
          "httpStatus, authn: {result, status, reason, principal, rule, policies}, hops: [{kind,\n"
          "name, decision, policy, reason, source}], extAuthz: {provider, policy, asked,\n"
          "notAsked, answer, status, headers, body, upstreamEdits, downstreamEdits, detail,\n"
          "latencyMs, waypointPod, kind, failOpen, statusOnError, unresolved, result},\n"
          "generation}. A plaintext client of a STRICT port is denied (STRICT refuses it before\n"
          "any policy; mtls.refusedPlaintextSource says so). Exits 0 for any decision (with\n"
          "--exit-code: 1 on deny), 1 when a pod or service is unknown or the agent cannot be\n"
          "asked.",
      .args_usage = "FROM TO:PORT",
      .examples =
          "ambitctl check default/web backend/api:8080\n"
          "ambitctl check default/web 198.18.1.7:8080 -o json\n"
          "ambitctl check default/web backend/httpbin:80 --method POST --path '/admin?x=1' \\\n"
          "    --header \"authorization: Bearer $TOKEN\"\n"
          "ambitctl check default/web backend/httpbin:80 --header 'x-ext-authz: allow'\n"
          "ambitctl check default/web backend/httpbin:80 --no-ext-authz",
      .min_args = 2,
      .max_args = 2,
      .flags = {{"method", '\0', "METHOD", "the HTTP method a waypoint sees (default GET)"},
                {"path", '\0', "PATH", "the HTTP path with its query (default /)"},
                {"header", '\0', "'NAME: VALUE'",
                 "an HTTP header, repeatable; 'authorization: Bearer <jwt>' carries a token"},
                {"now", '\0', "UNIX_SECONDS",
                 "the time JWT exp/nbf are checked against (default: now)"},
                {"no-ext-authz", '\0', "",
                 "do not call a CUSTOM policy's ext_authz provider (it may have side effects); "
                 "the decision is then undetermined"},
                {"exit-code", '\0', "",
                 "exit 1 when the decision is deny (undetermined ext_authz exits 0)"}},
      .run = Check,
  };
}

Command BpfCommand() {
  return Command{
      .name = "bpf",
      .summary = "Show this agent's BPF programs, links and maps",
      .description =
          "Lists the redirect programs of this agent instance (id, verified instructions, where\n"
          "attached), the links pinned under its pin root, its pinned maps with the entries\n"
          "in use (counted by walking the keys) against their maximum, and how often the\n"
          "programs failed closed (dropped or refused a connection), by reason, with what each\n"
          "reason means.",
      .examples = "ambitctl bpf\nambitctl bpf -o json",
      .run = Bpf,
  };
}

Command StatusCommand() {
  return Command{
      .name = "status",
      .summary = "Is the node ready, and if not why; the data-plane processes",
      .description =
          "Says whether the agent is ready (what /healthz/ready answers) with each reason when\n"
          "it is not, then each data-plane process: how it runs (spawn: started and restarted\n"
          "by ambitd; external: started apart from ambitd, e.g. as its own container, which\n"
          "ambitd only connects to), the control socket it serves, whether it is connected,\n"
          "its PID (in its own PID namespace when external) and, when it is missing, why.\n"
          "ambit-waypoint is needed only while a waypoint's pod is enrolled on the node. Exits\n"
          "1 when the node is not ready.",
      .examples = "ambitctl status\nambitctl status -o json",
      .run = Status,
  };
}

Command DataPlaneCommand() {
  return Command{
      .name = "dataplane",
      .summary = "Drive the data-plane processes (ambit-tunnel, ambit-waypoint)",
      .subcommands = {Command{
          .name = "roll",
          .summary = "Replace a data-plane process without dropping or refusing a connection",
          .description =
              "Starts a new process of the data plane (tunnel, the default, or waypoint) from\n"
              "the binary on disk, with the same arguments and control socket. It stands by on\n"
              "<control socket>.next and gets every pod, the trust bundle and the configuration;\n"
              "once it serves every pod (certificates present, every listener watched), the old\n"
              "process is drained (--dataplane-drain-grace): it stops accepting, sends GOAWAY on\n"
              "its HBONE sessions and exits when its last connection ends or at the deadline.\n"
              "A successor that does not serve in time is stopped and the old process keeps\n"
              "serving. Waits for the roll to end. With --dataplane=external a roll is a new\n"
              "container on the same socket: this says so and shows what runs.",
          .args_usage = "[tunnel|waypoint]",
          .examples = "ambitctl dataplane roll\nambitctl dataplane roll waypoint -o json",
          .max_args = 1,
          .run = RollDataPlane,
      }},
  };
}

Command ServicesCommand() {
  return Command{
      .name = "services",
      .summary = "List the services: cluster IPs, ports, endpoints",
      .description =
          "Lists every Service in the configuration with its cluster IPs, ports (port->target\n"
          "/protocol) and the pods its selector picks.",
      .examples =
          "ambitctl services\nambitctl services -n backend\nambitctl services --address "
          "10.96.0.10\n"
          "ambitctl services -o json",
      .flags = NamespaceAndAddressFlags(),
      .run = Services,
  };
}

Command LogCommand() {
  return Command{
      .name = "log",
      .summary = "Read or change log levels at run time (ambitd and the data plane)",
      .description =
          "Without --level, shows the log level of each component (and the default for\n"
          "components without their own). With --level, sets it for --component, or the\n"
          "default when no component is named, in ambitd and in the data plane (ambit-tunnel:\n"
          "tunnel, access, hbone, tls). `--component access --level warn` silences the\n"
          "access log. Changes last until the process restarts.",
      .examples =
          "ambitctl log\nambitctl log --level debug --component authz\n"
          "ambitctl log --level warn",
      .flags = {{"level", '\0', "LEVEL", "debug, info, warn or error: set this level"},
                {"component", '\0', "C",
                 "the component (agent, authz, config, ...); default: all"}},
      .run = Log,
  };
}

Command ConfigDumpCommand() {
  return Command{
      .name = "config-dump",
      .summary = "Everything the agent knows, as one JSON document",
      .description =
          "Workloads, services, policies (and rejected resources), certificates, BPF programs\n"
          "and maps, log levels and live connections, as one JSON document (YAML with -o\n"
          "yaml). When the data plane cannot be asked, connections holds the reason.\n"
          "With --format ztunnel: the configuration in force in the layout of ztunnel's\n"
          "/config_dump (workloads, services, policies, certificates; no key material), for\n"
          "tools that read ztunnel's dumps.",
      .examples = "ambitctl config-dump > dump.json\nambitctl config-dump --format ztunnel",
      .flags = {{"format", '\0', "F", "ambit (default) or ztunnel: ztunnel's /config_dump layout"}},
      .run = ConfigDump,
  };
}

}  // namespace ambit::cli
