// `ambitctl verify mtls`: whether what crossed each enrolled pod's network interfaces was mTLS
// (HBONE on 15008) or plaintext, per peer, as the agent's BPF accounting counted it
// (VerifyMtls). Exit status 1 when plaintext the pod answered reached a port STRICT applies to,
// so scripts can gate on it.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/cli/admin_client.h"
#include "agent/cli/commands.h"

namespace ambit::cli {
namespace {

namespace pb = ::ambit::admin::v1;

std::string PortText(const pb::WireFlow& f) {
  return absl::StrCat(f.port(), f.port_is_local() ? " (pod)" : " (peer)");
}

Value FlowValue(const pb::WireFlow& f) {
  return Value::Object({
      {"peer", f.peer_address()},
      {"workload", f.peer_workload().empty() ? Value() : Value(f.peer_workload())},
      {"mtls", f.mtls()},
      {"protocol", f.protocol()},
      {"port", static_cast<int64_t>(f.port())},
      {"portIsLocal", f.port_is_local()},
      {"bytesOut", static_cast<int64_t>(f.bytes_out())},
      {"bytesIn", static_cast<int64_t>(f.bytes_in())},
      {"packetsOut", static_cast<int64_t>(f.packets_out())},
      {"packetsIn", static_cast<int64_t>(f.packets_in())},
      {"payloadOut", static_cast<int64_t>(f.payload_out())},
      {"payloadIn", static_cast<int64_t>(f.payload_in())},
      {"connectionsOut", static_cast<int64_t>(f.connections_out())},
      {"connectionsIn", static_cast<int64_t>(f.connections_in())},
      {"resetsOut", static_cast<int64_t>(f.resets_out())},
      {"resetsIn", static_cast<int64_t>(f.resets_in())},
      {"mtlsMode", f.mtls_mode().empty() ? Value() : Value(f.mtls_mode())},
      {"verdict", f.verdict()},
  });
}

std::string Rfc3339(int64_t unix_seconds) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(unix_seconds),
                          absl::UTCTimeZone());
}

absl::Status VerifyMtls(Context& ctx) {
  pb::VerifyMtlsRequest req;
  if (auto pod = ctx.flag("pod")) {
    if (pod->find('/') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--pod \"", *pod, "\": name the pod as NAMESPACE/NAME"));
    }
    req.set_pod(*pod);
  }
  if (auto since = ctx.flag("since")) {
    absl::Duration d;
    if (!absl::ParseDuration(*since, &d) || d <= absl::ZeroDuration() || d > absl::Hours(24)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--since \"", *since, "\": a positive duration of at most 24h, such as 90s, 5m or 1h"));
    }
    req.set_since_seconds(std::max<int64_t>(1, absl::ToInt64Seconds(d)));
  }
  auto stub = ConnectAdmin(ctx.admin_socket());
  if (!stub.ok()) return stub.status();
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  pb::VerifyMtlsResponse resp;
  grpc::Status status = (*stub)->VerifyMtls(&call, req, &resp);
  if (!status.ok()) return AdminCallError(ctx.admin_socket(), status);
  if (resp.plaintext_under_strict()) ctx.set_exit_code(kExitFailure);

  if (ctx.output_format() != OutputFormat::kTable) {
    Value pods = Value::MakeList();
    for (const pb::PodWire& p : resp.pods()) {
      Value flows = Value::MakeList();
      for (const pb::WireFlow& f : p.flows()) flows.Append(FlowValue(f));
      Value verdicts = Value::MakeList();
      for (const std::string& v : p.verdicts()) verdicts.Append(Value(v));
      pods.Append(Value::Object({
          {"pod", p.pod()},
          {"encryptedBytes", static_cast<int64_t>(p.encrypted_bytes())},
          {"plaintextBytes", static_cast<int64_t>(p.plaintext_bytes())},
          {"plaintextUnderStrict", p.plaintext_under_strict()},
          {"flows", flows},
          {"verdicts", verdicts},
      }));
    }
    ctx.Print(Value::Object({
        {"windowStart", Rfc3339(resp.window_start_unix())},
        {"now", Rfc3339(resp.now_unix())},
        {"plaintextUnderStrict", resp.plaintext_under_strict()},
        {"pods", pods},
    }));
    return absl::OkStatus();
  }
  Value rows = Value::MakeList();
  for (const pb::PodWire& p : resp.pods()) {
    for (const pb::WireFlow& f : p.flows()) {
      rows.Append(Value::Object({
          {"pod", p.pod()},
          {"peer", f.peer_address()},
          {"workload", f.peer_workload().empty() ? Value() : Value(f.peer_workload())},
          {"proto", f.protocol()},
          {"port", PortText(f)},
          {"encrypted", f.mtls() ? "mTLS" : "plaintext"},
          {"bytes out", static_cast<int64_t>(f.bytes_out())},
          {"bytes in", static_cast<int64_t>(f.bytes_in())},
          {"conns", static_cast<int64_t>(f.connections_out() + f.connections_in())},
          {"resets", static_cast<int64_t>(f.resets_out() + f.resets_in())},
          {"verdict", f.verdict()},
      }));
    }
  }
  ctx.out() << "Counted on the pods' interfaces from " << Rfc3339(resp.window_start_unix())
            << " to " << Rfc3339(resp.now_unix()) << ".\n";
  if (!rows.as_list().empty()) {
    ctx.out() << "\n";
    ctx.Print(rows);
  }
  for (const pb::PodWire& p : resp.pods()) {
    ctx.out() << "\n"
              << p.pod() << ": " << p.encrypted_bytes() << " bytes mTLS, " << p.plaintext_bytes()
              << " bytes plaintext\n";
    for (const std::string& v : p.verdicts()) ctx.out() << "  " << v << "\n";
  }
  if (resp.pods().empty()) ctx.out() << "\nNo pod is enrolled on this node.\n";
  if (resp.plaintext_under_strict()) {
    ctx.out() << "\nFAIL: plaintext was answered on a port where STRICT applies.\n";
  }
  return absl::OkStatus();
}

}  // namespace

Command VerifyCommand() {
  return Command{
      .name = "verify",
      .summary = "Prove properties of the traffic from what crossed the wire",
      .subcommands = {Command{
          .name = "mtls",
          .summary = "Per pod and peer: bytes sent as mTLS (HBONE) and as plaintext",
          .description =
              "What crossed each enrolled pod's network interfaces, as ambitd's BPF accounting\n"
              "counted it: TCP on port 15008 (HBONE) is mTLS, any other TCP, UDP or IP protocol\n"
              "is plaintext (ICMP and IGMP are not counted). Per pod and peer: bytes and\n"
              "packets each way, connection attempts (SYNs), resets, for plaintext its port,\n"
              "and a verdict.\n"
              "A plaintext attempt STRICT refused (the tunnel reset it and sent nothing back) is\n"
              "listed as refused: it crossed the wire, but no byte reached the application.\n"
              "Exit status 1 when plaintext the pod answered reached a port where STRICT\n"
              "applies now; 0 otherwise.",
          .examples = "ambitctl verify mtls\n"
                      "ambitctl verify mtls --pod default/api --since 5m\n"
                      "ambitctl verify mtls -o json",
          .flags = {{"pod", '\0', "NS/NAME", "only this enrolled pod"},
                    {"since", '\0', "DURATION",
                     "only the last DURATION (such as 5m; at most the last hour is kept)"}},
          .run = VerifyMtls,
      }},
  };
}

}  // namespace ambit::cli
