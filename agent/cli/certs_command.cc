#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "agent/cli/admin_client.h"
#include "agent/cli/commands.h"
#include "agent/cli/filters.h"
#include "agent/common/formats.h"
#include "agent/common/status.h"
#include "agent/identity/spiffe_id.h"

namespace ambit::cli {
namespace {

std::string Rfc3339(int64_t unix_seconds) {
  if (unix_seconds == 0) return "";
  return FormatTimestamp(absl::FromUnixSeconds(unix_seconds));
}

}  // namespace

Value CertificatesValue(const ambit::admin::v1::ListCertificatesResponse& resp) {
  Value certs = Value::MakeList();
  for (const auto& c : resp.certificates()) {
    certs.Append(Value::Object({
        {"identity", c.identity()},
        {"state", c.state()},
        {"serial", FormatSerial(c.serial())},
        {"notBefore", Rfc3339(c.not_before().unix_seconds())},
        {"notAfter", Rfc3339(c.not_after().unix_seconds())},
        {"issuer", c.issuer()},
        {"pods", c.pods()},
        {"error", c.last_error()},
        {"sha256Fingerprint", c.sha256_fingerprint()},
    }));
  }
  Value roots = Value::MakeList();
  for (const auto& r : resp.trust_bundle()) {
    roots.Append(Value::Object({
        {"subject", r.subject()},
        {"serial", FormatSerial(r.serial())},
        {"notAfter", Rfc3339(r.not_after().unix_seconds())},
        {"sha256Fingerprint", r.sha256_fingerprint()},
    }));
  }
  return Value::Object({{"ca", resp.ca()}, {"certificates", certs}, {"trustBundle", roots}});
}

namespace {

// The namespace of an identity of Istio's form (spiffe://td/ns/NS/sa/SA); "" for any other.
std::string IdentityNamespace(const std::string& identity) {
  auto id = identity::ParseSpiffeId(identity);
  if (!id.ok()) return "";
  auto istio = identity::AsIstioIdentity(*id);
  return istio.has_value() ? istio->namespace_name : "";
}

// `certs --pem [IDENTITY]`: the chains as PEM, so `| openssl x509 -noout -text` reads the leaf.
absl::Status PrintChains(Context& ctx) {
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ambit::admin::v1::CertificatePemRequest req;
  if (!ctx.args().empty()) req.set_identity(ctx.args()[0]);
  ambit::admin::v1::CertificatePemResponse resp;
  grpc::Status status = (*stub)->CertificatePem(&call, req, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  if (resp.chains().empty()) {
    return absl::NotFoundError("no workload certificate on this node yet (no enrolled pods?)");
  }
  if (ctx.output_format() == OutputFormat::kTable) {
    // Plain PEM, nothing else: what openssl and every other PEM reader takes as it is.
    for (const auto& c : resp.chains()) ctx.out() << c.chain_pem();
    return absl::OkStatus();
  }
  Value chains = Value::MakeList();
  for (const auto& c : resp.chains()) {
    chains.Append(Value::Object({{"identity", c.identity()},
                                 {"sha256Fingerprint", c.sha256_fingerprint()},
                                 {"chainPem", c.chain_pem()}}));
  }
  ctx.Print(Value::Object({{"chains", chains}}));
  return absl::OkStatus();
}

absl::Status ListCertificates(Context& ctx) {
  if (ctx.flag("pem").has_value()) return PrintChains(ctx);
  if (!ctx.args().empty()) {
    return absl::InvalidArgumentError("IDENTITY is for --pem; `ambitctl certs` lists them all");
  }
  AMBIT_ASSIGN_OR_RETURN(const RowFilter filter, RowFilter::FromFlags(ctx));
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ambit::admin::v1::ListCertificatesResponse resp;
  grpc::Status status = (*stub)->ListCertificates(&call, {}, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  KeepIf(resp.mutable_certificates(), [&filter](const ambit::admin::v1::Certificate& c) {
    return filter.Namespace(IdentityNamespace(c.identity()));
  });

  Value doc = CertificatesValue(resp);
  const Value& certs = *doc.Find("certificates");
  const Value& roots = *doc.Find("trustBundle");
  if (ctx.output_format() == OutputFormat::kTable) {
    // Two tables for people: the workload certificates, then the roots they chain to.
    if (certs.as_list().empty()) {
      ctx.out() << (filter.active() ? absl::StrCat("No workload certificates of identities ",
                                                   filter.Describe(), ".\n")
                                    : "No workload certificates (no enrolled pods).\n");
    } else {
      ctx.Print(certs);
    }
    ctx.out() << "\nCA: " << resp.ca() << "\nTrust bundle:\n";
    ctx.Print(roots);
    return absl::OkStatus();
  }
  ctx.Print(doc);
  return absl::OkStatus();
}

std::vector<FlagSpec> CertsFlags() {
  std::vector<FlagSpec> flags = NamespaceFlags();
  flags.push_back({.name = "pem", .help = "print the certificate chains as PEM (never a key)"});
  return flags;
}

}  // namespace

Command CertsCommand() {
  return Command{
      .name = "certs",
      .summary = "List workload certificates and the trust bundle",
      .description =
          "Lists the certificate of every identity enrolled on this node (state: pending,\n"
          "valid, renewing, expired or failed; serial; validity; issuer; pods using it) and\n"
          "the roots in the trust bundle. Private keys never leave the data plane and are\n"
          "never shown. sha256Fingerprint is the leaf's, as `openssl x509 -fingerprint\n"
          "-sha256` prints it and as a peer of the pod's port 15008 sees it.\n"
          "With --pem: the chain each identity presents on port 15008 (leaf first, exactly as\n"
          "peers receive it), as PEM, for IDENTITY (a SPIFFE ID) or every identity here.",
      .args_usage = "[IDENTITY]",
      .examples =
          "ambitctl certs\nambitctl certs -n default\nambitctl certs -o json\n"
          "ambitctl certs --pem spiffe://cluster.local/ns/default/sa/web | openssl x509 "
          "-noout -text",
      .max_args = 1,
      .flags = CertsFlags(),
      .run = ListCertificates,
  };
}

}  // namespace ambit::cli
