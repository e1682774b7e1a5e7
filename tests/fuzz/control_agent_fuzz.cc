// Control messages from the data plane, as ambitd receives them: DecodeDataPlaneMessage, then what
// DataPlane and Agent do with each body: a csr_request's CSR goes to the built-in CA's signer (the
// agent first checks the identity belongs to a pod enrolled on the node; here every one passes),
// a certificate report becomes the admin API's view, a handed-back pod becomes the agent's typed
// record (DecodeHandedBackPod), a heartbeat answer is checked against the pods it lists (the
// readiness listener check), also when it comes in a sealed file (pong_ref: the file holds the
// input's own bytes, parsed as a Pong).
// Input: [descriptor count (byte % 4)] [Envelope bytes].

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/common/log.h"
#include "agent/common/sealed_file.h"
#include "agent/issuance/ca_server.h"
#include "agent/issuance/signer.h"
#include "agent/supervisor/control_message.h"
#include "agent/supervisor/dataplane.h"
#include "tests/fuzz/ca_fixture.h"
#include "tests/fuzz/fuzz_util.h"

namespace pb = ::ambit::dataplane::v1;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Rejections are logged as warnings: millions of them would drown the fuzzer's own output.
  ambit::log::SetLevel("", ambit::log::Level::kError);
  (void)ambit::fuzz::SharedCa();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<ambit::issuance::Signer> signer =
      ambit::issuance::MakeLocalSigner(ambit::fuzz::SharedCa());
  ambit::fuzz::Input in(data, size);
  size_t fd_count = in.Byte() % 4;
  const std::string message(in.Rest());
  auto env = ambit::supervisor::DecodeDataPlaneMessage(message, fd_count);
  if (!env.ok()) {
    FUZZ_REQUIRE(!env.status().message().empty());
    return 0;
  }
  switch (env->body_case()) {
    case pb::Envelope::kCsrRequest: {
      const auto& r = env->csr_request();
      auto chain = signer->Sign(r.csr_pem(), r.identity(), absl::Hours(1));
      if (chain.ok()) {
        // Issued only for exactly what the CSR asked, and a chain to the CA's root.
        auto uris = ambit::issuance::RequestedUris(r.csr_pem());
        FUZZ_REQUIRE(uris.ok() && uris->size() == 1 && uris->front() == r.identity());
        FUZZ_REQUIRE(chain->size() >= 2);
      }
      break;
    }
    case pb::Envelope::kCertificateReport: {
      std::vector<ambit::supervisor::CertificateState> certs;
      for (const auto& c : env->certificate_report().certificates()) {
        certs.push_back({c.identity(), c.state(), c.serial_hex(), c.issuer(), c.last_error(),
                         c.not_before_unix(), c.not_after_unix(), c.refs()});
      }
      FUZZ_REQUIRE(certs.size() ==
                   static_cast<size_t>(env->certificate_report().certificates_size()));
      break;
    }
    case pb::Envelope::kAddPod: {
      FUZZ_REQUIRE(static_cast<size_t>(env->add_pod().fds_size()) == fd_count);
      // No real descriptors: the record's mapping is what untrusted bytes reach.
      auto pod = ambit::supervisor::DecodeHandedBackPod(env->add_pod(), {});
      if (!pod.ok()) {
        FUZZ_REQUIRE(pod.status().code() == absl::StatusCode::kInvalidArgument);
        FUZZ_REQUIRE(!pod.status().message().empty());
        break;
      }
      // What the agent accepts it can describe again, as the same pod.
      FUZZ_REQUIRE(pod->workload.Key() == env->add_pod().uid());
      ambit::supervisor::PodDescriptor again;
      again.workload = pod->workload;
      again.netns_cookie = pod->netns_cookie;
      pb::Pod encoded;
      std::vector<int> fds;
      FUZZ_REQUIRE(ambit::supervisor::EncodeAddPod(again, &encoded, &fds).ok());
      auto back = ambit::supervisor::DecodeHandedBackPod(encoded, {});
      FUZZ_REQUIRE(back.ok() && back->workload == pod->workload);
      break;
    }
    case pb::Envelope::kPongRef:
    case pb::Envelope::kPong: {
      pb::Pong from_file;
      if (env->has_pong_ref()) {
        // The sealed file's bytes are the input's own: a Pong, or what the parse must refuse.
        auto file = ambit::CreateSealedFile("fuzz-pong", message);
        FUZZ_REQUIRE(file.ok());
        auto read = ambit::supervisor::ReadPongFile(file->get(), message.size());
        if (!read.ok()) {
          FUZZ_REQUIRE(read.status().code() == absl::StatusCode::kDataLoss ||
                       read.status().code() == absl::StatusCode::kInvalidArgument);
          break;
        }
        from_file = *std::move(read);
        // Another size than the file's is refused, never read past or short.
        FUZZ_REQUIRE(!ambit::supervisor::ReadPongFile(file->get(), message.size() + 1).ok());
      }
      const pb::Pong& pong = env->has_pong() ? env->pong() : from_file;
      ambit::supervisor::PongReport report;
      report.seq = pong.seq();
      report.workers = pong.workers();
      std::vector<ambit::supervisor::ExpectedListeners> expected;
      for (const auto& p : pong.pods()) {
        report.pods.push_back(
            {p.uid(), p.listening(), p.workers_accepting(), p.waiting_for_certificate()});
        expected.push_back({p.uid(), 6, report.seq});
      }
      expected.push_back({"fuzz/absent", 6, 0});  // never listed: always a problem
      auto problems = ambit::supervisor::ListenerProblems(expected, report);
      FUZZ_REQUIRE(!problems.empty() && problems.size() <= expected.size());
      break;
    }
    default:
      break;
  }
  return 0;
}
