// Control messages from ambitd, as the data plane receives them: DecodeAgentMessage (envelope,
// protocol version, descriptors against the body), then what Tunnel::HandleEnvelope does with
// each body short of real descriptors: a snapshot is mapped to the mesh model
// (agent/mesh/wire.h; what it accepts must map back to the same model) and becomes a MeshSnapshot
// (workloads, services, compiled AuthorizationPolicies, RequestAuthentications kept for the
// waypoint) that routes and authorizes connections; an add_pod maps to a mesh::Workload and back
// and becomes a Pod (DecodePod, with /dev/null as its descriptors), and its identity gets a key
// and a CSR; a csr_response's chain is checked by the CertManager against the request it
// answers; a trust bundle's roots are loaded.
// The same bytes are also read as a stats-socket request (DecodeStatsSocketRequest).
// Input: [descriptor count (byte % 4)] [Envelope bytes].

#include <fcntl.h>

#include <memory>
#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "agent/common/ip_address.h"
#include "agent/common/log.h"
#include "agent/common/sealed_file.h"
#include "agent/mesh/wire.h"
#include "agent/tls/cert_manager.h"
#include "agent/tls/trust_bundle.h"
#include "agent/tunnel/control_message.h"
#include "agent/tunnel/mesh_snapshot.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace pb = ::ambit::dataplane::v1;

class RecordingSigner final : public ambit::tls::CsrSigner {
 public:
  void RequestSigning(uint64_t request_id, const std::string&, const std::string& csr) override {
    last_id = request_id;
    FUZZ_REQUIRE(!csr.empty());
  }
  uint64_t last_id = 0;
};

void ExerciseSnapshot(const pb::Snapshot& s) {
  // The one wire mapping: whatever it accepts maps back to the wire and reads the same.
  auto model = ambit::mesh::FromProto(s);
  if (!model.ok()) {
    FUZZ_REQUIRE(!model.status().message().empty());
    FUZZ_REQUIRE(!ambit::tunnel::MeshSnapshot::FromProto(s).ok());
    FUZZ_REQUIRE(!ambit::mesh::DecodeSnapshot(s.SerializeAsString()).ok());
    return;
  }
  pb::Snapshot again;
  FUZZ_REQUIRE(ambit::mesh::ToProto(*model, &again).ok());
  auto reread = ambit::mesh::FromProto(again);
  FUZZ_REQUIRE(reread.ok() && *reread == *model);
  // The streaming forms agree with the message forms: the serialized message decodes to the
  // same model, and the model encodes to bytes that decode to it again.
  auto streamed = ambit::mesh::DecodeSnapshot(s.SerializeAsString());
  FUZZ_REQUIRE(streamed.ok() && *streamed == *model);
  std::string encoded;
  FUZZ_REQUIRE(ambit::mesh::EncodeSnapshot(*model, &encoded).ok());
  auto redecoded = ambit::mesh::DecodeSnapshot(encoded);
  FUZZ_REQUIRE(redecoded.ok() && *redecoded == *model);
  const size_t request_authentications = model->request_authentications.size();
  FUZZ_REQUIRE(request_authentications == static_cast<size_t>(s.request_authentications_size()));
  std::shared_ptr<const ambit::tunnel::MeshSnapshot> snapshot =
      ambit::tunnel::MeshSnapshot::Create(*std::move(model));
  FUZZ_REQUIRE(snapshot != nullptr);
  // Kept whole for the waypoint.
  FUZZ_REQUIRE(snapshot->request_authentications().size() == request_authentications);
  // Route and authorize a connection to every address the snapshot names, from the first one.
  std::vector<ambit::IpAddress> ips;
  for (const auto& w : s.workloads()) {
    for (const auto& ip : w.ips()) {
      if (auto p = ambit::IpAddress::Parse(ip); p.ok()) ips.push_back(*p);
    }
  }
  for (const auto& svc : s.services()) {
    for (const auto& ip : svc.cluster_ips()) {
      if (auto p = ambit::IpAddress::Parse(ip); p.ok()) ips.push_back(*p);
    }
  }
  if (ips.size() > 16) ips.resize(16);
  for (const auto& ip : ips) {
    for (uint16_t port : {uint16_t{80}, uint16_t{8080}}) {
      ambit::SocketAddress dst{ip, port};
      ambit::tunnel::Route route = snapshot->Resolve(dst, 7);
      if (route.kind == ambit::tunnel::Route::Kind::kHbone) FUZZ_REQUIRE(route.workload != nullptr);
      std::string decided_by;
      (void)snapshot->Authorize(ambit::SocketAddress{ips.front(), 43210}, dst,
                                "spiffe://cluster.local/ns/fuzz/sa/client", &decided_by);
      (void)snapshot->WorkloadByIp(ip);
    }
  }
}

void ExerciseAddPod(const pb::Pod& p, size_t fd_count) {
  // The pod's mapping to the mesh model: whatever it accepts maps back and reads the same.
  auto workload = ambit::mesh::PodFromProto(p);
  if (workload.ok()) {
    pb::Pod again;
    FUZZ_REQUIRE(ambit::mesh::PodToProto(*workload, &again).ok());
    auto reread = ambit::mesh::PodFromProto(again);
    FUZZ_REQUIRE(reread.ok() && *reread == *workload);
  } else {
    FUZZ_REQUIRE(!workload.status().message().empty());
  }
  // The pod the tunnel builds, with /dev/null standing in for the descriptors.
  std::vector<ambit::UniqueFd> fds;
  for (size_t i = 0; i < fd_count; ++i) fds.emplace_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto pod = ambit::tunnel::DecodePod(p, std::move(fds));
  if (!pod.ok()) {
    FUZZ_REQUIRE(!pod.status().message().empty());
    return;
  }
  FUZZ_REQUIRE(workload.ok() && (*pod)->uid == workload->Key());
  if ((*pod)->spiffe_id.empty()) return;
  // The identity reaches the CertManager, which makes a key and a CSR for it.
  ambit::FakeClock clock(absl::FromUnixSeconds(1800000000));
  RecordingSigner signer;
  ambit::tls::CertManager certs(&signer, &clock);
  certs.AddRef((*pod)->spiffe_id);
  certs.Tick();
  certs.Release((*pod)->spiffe_id);
}

void ExerciseCsrResponse(const pb::CsrResponse& r) {
  ambit::FakeClock clock(absl::FromUnixSeconds(1800000000));
  RecordingSigner signer;
  ambit::tls::CertManager certs(&signer, &clock);
  const std::string identity = "spiffe://cluster.local/ns/fuzz/sa/app";
  certs.AddRef(identity);
  certs.Tick();
  if (signer.last_id == 0) return;
  if (!r.error().empty()) {
    certs.OnSigned(signer.last_id, absl::UnavailableError(r.error()));
  } else {
    certs.OnSigned(signer.last_id,
                   std::vector<std::string>(r.chain_pem().begin(), r.chain_pem().end()));
  }
  (void)certs.Get(identity);
  (void)certs.Statuses();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Rejections are logged as warnings: millions of them would drown the fuzzer's own output.
  ambit::log::SetLevel("", ambit::log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  size_t fd_count = in.Byte() % 4;
  absl::string_view bytes = in.Rest();
  // The stats socket's requests come from the same agent: the same bytes read as one of those
  // decode to a request the tunnel can act on, or to a reason.
  auto stats = ambit::tunnel::DecodeStatsSocketRequest(bytes);
  if (stats.ok()) {
    FUZZ_REQUIRE(stats->has_stats() || stats->has_log_level());
    ambit::log::Level level;
    if (stats->has_log_level())
      FUZZ_REQUIRE(ambit::log::ParseLevel(stats->log_level().level(), &level));
  } else {
    FUZZ_REQUIRE(!stats.status().message().empty());
  }
  auto env = ambit::tunnel::DecodeAgentMessage(bytes, fd_count);
  if (!env.ok()) {
    FUZZ_REQUIRE(!env.status().message().empty());
    return 0;
  }
  FUZZ_REQUIRE(env->protocol_version() == pb::PROTOCOL_VERSION_CURRENT);
  switch (env->body_case()) {
    case pb::Envelope::kSnapshot:
      ExerciseSnapshot(env->snapshot());
      break;
    case pb::Envelope::kSnapshotRef: {
      // The sealed file holds the envelope's own bytes: a Snapshot or not, of the announced size
      // or not; whatever it holds is decoded and exercised the same way.
      auto file = ambit::CreateSealedFile("fuzz-snapshot", bytes);
      FUZZ_REQUIRE(file.ok());
      std::vector<ambit::UniqueFd> fds;
      fds.push_back(std::move(*file));
      auto snapshot = ambit::tunnel::ReadSnapshotFile(env->snapshot_ref(), fds, 1 << 20);
      if (snapshot.ok()) {
        pb::Snapshot again;
        FUZZ_REQUIRE(ambit::mesh::ToProto(*snapshot, &again).ok());
        ExerciseSnapshot(again);
      }
      break;
    }
    case pb::Envelope::kAddPod:
      FUZZ_REQUIRE(static_cast<size_t>(env->add_pod().fds_size()) == fd_count);
      ExerciseAddPod(env->add_pod(), fd_count);
      break;
    case pb::Envelope::kCsrResponse:
      ExerciseCsrResponse(env->csr_response());
      break;
    case pb::Envelope::kTrustBundle:
      (void)ambit::tls::TrustBundle::Create(std::vector<std::string>(
          env->trust_bundle().root_pem().begin(), env->trust_bundle().root_pem().end()));
      break;
    default:
      break;
  }
  return 0;
}
