// Commands that preview a change before it is made: `ambitctl strict-readiness`, `ambitctl
// policy diff`.

#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "agent/admin/policy_diff_limits.h"
#include "agent/cli/admin_client.h"
#include "agent/cli/commands.h"
#include "agent/common/status.h"

namespace ambit::cli {
namespace {

namespace pb = ::ambit::admin::v1;

std::string Rfc3339(int64_t unix_seconds) {
  if (unix_seconds == 0) return "";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

Value StrictReadinessValue(const pb::StrictReadinessResponse& resp) {
  Value workloads = Value::MakeList();
  for (const auto& w : resp.workloads()) {
    Value ports = Value::MakeList();
    for (const auto& p : w.ports()) {
      Value clients = Value::MakeList();
      for (const auto& c : p.clients()) {
        clients.Append(Value::Object({{"address", c.address()},
                                      {"workload", c.workload()},
                                      {"connections", c.connections()},
                                      {"refused", c.refused()},
                                      {"firstSeen", Rfc3339(c.first_seen().unix_seconds())},
                                      {"lastSeen", Rfc3339(c.last_seen().unix_seconds())}}));
      }
      ports.Append(Value::Object({{"port", p.port()},
                                  {"mtlsMode", p.mtls_mode()},
                                  {"wouldRefuse", p.would_refuse()},
                                  {"clients", clients}}));
    }
    workloads.Append(Value::Object({{"namespace", w.namespace_()},
                                    {"name", w.name()},
                                    {"mtlsMode", w.mtls_mode()},
                                    {"mtlsPolicy", w.mtls_policy()},
                                    {"wouldRefuse", w.would_refuse()},
                                    {"ports", ports}}));
  }
  Value notes = Value::MakeList();
  for (const auto& n : resp.notes()) notes.Append(n);
  return Value::Object({{"wouldRefuse", resp.would_refuse()},
                        {"workloads", workloads},
                        {"suggestedPeerAuthentication", resp.suggested_peer_authentication()},
                        {"notes", notes}});
}

absl::Status RunStrictReadiness(Context& ctx) {
  std::vector<std::string> parts = absl::StrSplit(ctx.args()[0], '/');
  if (parts.size() > 2 || parts[0].empty() || (parts.size() == 2 && parts[1].empty())) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", ctx.args()[0], "\" is not NAMESPACE or NAMESPACE/POD"));
  }
  pb::StrictReadinessRequest req;
  req.set_namespace_(parts[0]);
  if (parts.size() == 2) req.set_name(parts[1]);
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  pb::StrictReadinessResponse resp;
  grpc::Status status = (*stub)->StrictReadiness(&call, req, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  // A negative answer, not a failure: scripts gate a rollout on it.
  if (resp.would_refuse()) ctx.set_exit_code(kExitFailure);
  if (ctx.output_format() != OutputFormat::kTable) {
    ctx.Print(StrictReadinessValue(resp));
    return absl::OkStatus();
  }
  // One row per (pod, port, client): who would be refused, and who already is.
  Value rows = Value::MakeList();
  for (const auto& w : resp.workloads()) {
    const std::string pod = absl::StrCat(w.namespace_(), "/", w.name());
    if (w.ports().empty()) {
      rows.Append(Value::Object({{"pod", pod},
                                 {"port", ""},
                                 {"mode", w.mtls_mode()},
                                 {"client", "(no plaintext seen)"},
                                 {"clientWorkload", ""},
                                 {"connections", 0},
                                 {"refused", 0},
                                 {"lastSeen", ""},
                                 {"strict", "ok"}}));
    }
    for (const auto& p : w.ports()) {
      for (const auto& c : p.clients()) {
        const bool delivered = c.connections() > c.refused();
        rows.Append(Value::Object({{"pod", pod},
                                   {"port", p.port()},
                                   {"mode", p.mtls_mode()},
                                   {"client", c.address()},
                                   {"clientWorkload", c.workload().empty() ? "-" : c.workload()},
                                   {"connections", c.connections()},
                                   {"refused", c.refused()},
                                   {"lastSeen", Rfc3339(c.last_seen().unix_seconds())},
                                   {"strict", delivered ? "WOULD REFUSE" : "refused already"}}));
      }
    }
  }
  if (rows.as_list().empty()) {
    ctx.out() << "No pod of namespace " << req.namespace_() << " is enrolled on this node.\n";
  } else {
    ctx.Print(rows);
  }
  ctx.out() << "\n"
            << (resp.would_refuse() ? "STRICT would refuse the clients marked WOULD REFUSE.\n"
                                    : "STRICT would refuse no client seen.\n");
  for (const auto& n : resp.notes()) ctx.out() << "Note: " << n << "\n";
  ctx.out() << "\nSuggested PeerAuthentication (kubectl apply -f -):\n"
            << resp.suggested_peer_authentication();
  return absl::OkStatus();
}

// The directory's YAML files as ambitd's loader reads them (*.yaml, *.yml; not hidden ones, not
// the mesh file, not subdirectories), bounded as the admin API bounds them.
absl::StatusOr<pb::PolicyDiffRequest> ReadPolicyDir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (d == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("cannot read config directory ", dir, ": ", std::strerror(errno)));
  }
  std::vector<std::string> names;
  while (dirent* e = readdir(d.get())) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (!absl::EndsWith(name, ".yaml") && !absl::EndsWith(name, ".yml")) continue;
    if (name == "mesh.yaml" || name == "mesh.yml") continue;  // not a policy file
    struct stat st;
    if (stat((dir + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " holds no .yaml or .yml file"));
  }
  if (names.size() > static_cast<size_t>(admin::kMaxPolicyDiffFiles)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " holds ", names.size(),
                                                   " YAML files; policy diff sends at most ",
                                                   admin::kMaxPolicyDiffFiles));
  }
  pb::PolicyDiffRequest req;
  size_t total = 0;
  for (const auto& name : names) {
    std::ifstream in(dir + "/" + name, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", dir, "/", name));
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    total += content.size() + name.size();
    if (total > admin::kMaxPolicyDiffBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, " holds more than ", admin::kMaxPolicyDiffBytes >> 20,
          " MiB of YAML (the admin API's bound for policy diff); pass a directory with only "
          "the policies"));
    }
    auto* f = req.add_files();
    f->set_name(name);
    f->set_content(std::move(content));
  }
  return req;
}

Value PolicyDiffValue(const pb::PolicyDiffResponse& resp) {
  Value closed = Value::MakeList();
  for (const auto& c : resp.closed()) {
    // A string, as `connections -o json` prints ids (64 bits do not fit a JSON number).
    closed.Append(Value::Object({{"id", absl::StrCat(c.id())},
                                 {"pod", c.pod()},
                                 {"source", c.source()},
                                 {"sourceIdentity", c.source_identity()},
                                 {"destination", c.destination()},
                                 {"mode", c.mode()},
                                 {"allowedBy", c.allowed_by()},
                                 {"reason", c.reason()}}));
  }
  Value flipped = Value::MakeList();
  for (const auto& w : resp.flipped()) {
    Value allows = Value::MakeList();
    for (const auto& p : w.allow_policies()) allows.Append(p);
    flipped.Append(Value::Object({{"namespace", w.namespace_()},
                                  {"name", w.name()},
                                  {"before", w.before()},
                                  {"after", w.after()},
                                  {"allowPolicies", allows}}));
  }
  Value findings = Value::MakeList();
  for (const auto& f : resp.findings()) {
    findings.Append(Value::Object({{"policy", f.policy()},
                                   {"file", f.file()},
                                   {"kind", f.kind()},
                                   {"message", f.message()}}));
  }
  Value problems = Value::MakeList();
  for (const auto& p : resp.problems()) problems.Append(p.text());
  Value notes = Value::MakeList();
  for (const auto& n : resp.notes()) notes.Append(n);
  return Value::Object({{"authorizationPolicies", resp.authorization_policies()},
                        {"peerAuthentications", resp.peer_authentications()},
                        {"connectionsChecked", resp.connections_checked()},
                        {"closed", closed},
                        {"flipped", flipped},
                        {"findings", findings},
                        {"problems", problems},
                        {"generation", Value::Object({{"desired", resp.generation().desired()},
                                                      {"applied", resp.generation().applied()}})},
                        {"notes", notes}});
}

absl::Status RunPolicyDiff(Context& ctx) {
  auto dir = ctx.flag("config");
  if (!dir.has_value() || dir->empty()) {
    return absl::InvalidArgumentError("--config DIR is required");
  }
  AMBIT_ASSIGN_OR_RETURN(pb::PolicyDiffRequest req, ReadPolicyDir(*dir));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  pb::PolicyDiffResponse resp;
  grpc::Status status = (*stub)->PolicyDiff(&call, req, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  if (ctx.flag("exit-code").has_value() &&
      (!resp.closed().empty() || !resp.flipped().empty() || !resp.findings().empty())) {
    ctx.set_exit_code(kExitFailure);
  }
  if (ctx.output_format() != OutputFormat::kTable) {
    ctx.Print(PolicyDiffValue(resp));
    return absl::OkStatus();
  }
  Value doc = PolicyDiffValue(resp);
  ctx.out() << *dir << ": " << resp.authorization_policies() << " AuthorizationPolicies, "
            << resp.peer_authentications() << " PeerAuthentications (nothing applied)\n";
  for (const auto& p : resp.problems()) ctx.out() << "problem: " << p.text() << "\n";
  auto section = [&](const std::string& title, const char* key, bool empty) {
    ctx.out() << "\n" << title << ":\n";
    if (empty) {
      ctx.out() << "  none\n";
    } else {
      ctx.Print(*doc.Find(key));
    }
  };
  section(absl::StrCat("Live connections that would be closed (", resp.closed_size(), " of ",
                       resp.connections_checked(), " checked)"),
          "closed", resp.closed().empty());
  section("Workloads whose default changes", "flipped", resp.flipped().empty());
  section("Rules that can never match at the node", "findings", resp.findings().empty());
  for (const auto& n : resp.notes()) ctx.out() << "Note: " << n << "\n";
  return absl::OkStatus();
}

}  // namespace

Command PolicyDiffCommand() {
  return Command{
      .name = "diff",
      .summary = "What a directory's policies would change on the running agent (applies nothing)",
      .description =
          "Sends the YAML files of DIR to the running ambitd, which parses them with its own\n"
          "configuration parser and answers, as if their AuthorizationPolicies and\n"
          "PeerAuthentications replaced those in force: which live connections reaching this\n"
          "node's pods would be closed, which workloads would change from default-allow to\n"
          "default-deny (an ALLOW policy selects them) or back, and which rules can never\n"
          "match at the node (HTTP fields in a policy not bound to a waypoint, spiffe://\n"
          "written in principals, namespaces or service accounts no known pod has). Nothing is\n"
          "applied. At most 1000 files and 3 MiB.\n"
          "With --exit-code: exit 1 when anything would change or a rule can never match.",
      .examples =
          "ambitctl policy diff --config ./next\n"
          "ambitctl policy diff --config ./next -o json --exit-code",
      .flags = {{.name = "config",
                 .value_name = "DIR",
                 .help = "the directory of policies to compare (required)"},
                {.name = "exit-code",
                 .help = "exit 1 when a connection would close, a default flips, or a rule "
                         "never matches"}},
      .run = RunPolicyDiff,
  };
}

Command StrictReadinessCommand() {
  return Command{
      .name = "strict-readiness",
      .summary = "Whether STRICT mTLS would refuse anyone, and a PeerAuthentication that would not",
      .description =
          "Lists the plaintext clients this node's data plane recently saw reach the pods of\n"
          "NAMESPACE (or of the one POD) enrolled here, per port: address, the mesh workload\n"
          "with that address if any, connections, refusals, first and last seen. A client\n"
          "whose plaintext is delivered now (PERMISSIVE) is one STRICT would refuse; one\n"
          "refused already (STRICT) is shown too. Then a PeerAuthentication to apply: STRICT,\n"
          "with portLevelMtls PERMISSIVE for the ports that still see plaintext.\n"
          "The data plane keeps a bounded table (the least recently seen sources are\n"
          "forgotten first) and sees this node's pods only.\n"
          "Exit status: 0 when STRICT would refuse no client seen, 1 when it would refuse\n"
          "someone (or the command failed), 2 on a usage error.",
      .args_usage = "NAMESPACE[/POD]",
      .examples =
          "ambitctl strict-readiness demo\n"
          "ambitctl strict-readiness demo/web-0 -o json\n"
          "ambitctl strict-readiness demo -o json | jq -r .suggestedPeerAuthentication",
      .min_args = 1,
      .max_args = 1,
      .run = RunStrictReadiness,
  };
}

}  // namespace ambit::cli
