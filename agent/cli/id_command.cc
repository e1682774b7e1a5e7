#include "agent/cli/commands.h"
#include "agent/identity/spiffe_id.h"

namespace ambit::cli {

Value DescribeSpiffeId(absl::string_view text, bool* valid) {
  auto id = identity::ParseSpiffeId(text);
  *valid = id.ok();
  if (!id.ok()) {
    return Value::Object({{"valid", false}, {"error", std::string(id.status().message())}});
  }
  Value out =
      Value::Object({{"valid", true}, {"trustDomain", id->trust_domain}, {"path", id->path}});
  if (auto istio = identity::AsIstioIdentity(*id); istio.has_value()) {
    out.Set("namespace", istio->namespace_name);
    out.Set("serviceAccount", istio->service_account);
  }
  return out;
}

namespace {

Command ParseCommand() {
  return Command{
      .name = "parse",
      .summary = "Parse and validate a SPIFFE ID",
      .description =
          "Parses ID as a SPIFFE ID (github.com/spiffe/spiffe, standards/SPIFFE-ID.md) and prints\n"
          "its trust domain and path; for Istio's form spiffe://<td>/ns/<ns>/sa/<sa> also the\n"
          "namespace and service account. An invalid ID prints valid: false and the reason, and\n"
          "exits with status 1.",
      .args_usage = "ID",
      .examples =
          "ambitctl id parse spiffe://cluster.local/ns/default/sa/web\n"
          "ambitctl id parse spiffe://example.org/payments/web-fe -o json",
      .min_args = 1,
      .max_args = 1,
      .run = [](Context& ctx) -> absl::Status {
        bool valid = false;
        ctx.Print(DescribeSpiffeId(ctx.args()[0], &valid));
        if (!valid) ctx.set_exit_code(kExitFailure);
        return absl::OkStatus();
      },
  };
}

}  // namespace

Command IdCommand() {
  return Command{
      .name = "id",
      .summary = "Work with SPIFFE IDs",
      .description = "Work with SPIFFE IDs, the workload identities in ambit's certificates.",
      .subcommands = {ParseCommand()},
  };
}

}  // namespace ambit::cli
