// The HBONE client after the handshake: a server's HTTP/2 bytes (SETTINGS, responses to our
// CONNECTs on streams 1, 3 and 5, DATA, RST_STREAM, GOAWAY, PUSH_PROMISE, anything) through
// HboneSession's real client code, with an owner that opens tunnels, writes, consumes and resets
// as the seed in the input decides. Input layout: hbone_fuzz.h. Properties: no crash, leak or
// hang; each stream ends at most once (OnClosed or OnReset), and nothing is delivered after that.

#include <memory>
#include <vector>

#include "tests/fuzz/hbone_fuzz.h"

namespace {

using ambit::fuzz::Choices;
using ambit::hbone::HboneSession;
using ambit::hbone::StreamId;

struct Owner;

class Observer final : public ambit::hbone::StreamObserver {
 public:
  explicit Observer(Owner* owner) : owner_(owner) {}
  void OnResponse(int status) override;
  void OnData(const uint8_t* data, size_t len) override;
  void OnEndStream() override { FUZZ_REQUIRE(!ended_); }
  void OnClosed() override {
    FUZZ_REQUIRE(!ended_);
    ended_ = true;
  }
  void OnReset(uint32_t) override {
    FUZZ_REQUIRE(!ended_);
    ended_ = true;
  }
  StreamId id = 0;
  bool ended_ = false;

 private:
  Owner* owner_;
};

struct Owner final : public ambit::hbone::SessionDelegate {
  explicit Owner(Choices* c, bool drop) : choices(c), drop_in_close(drop) {}

  void Open() {
    if (session == nullptr || session->closed()) return;
    auto observer = std::make_unique<Observer>(this);
    ambit::hbone::ConnectHeaders headers{"for=\"198.18.0.1:43210\"", "k8s.namespace.name=fuzz",
                                         "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
    auto id = session->Connect("198.18.0.2:8080", headers, observer.get());
    if (!id.ok()) return;
    observer->id = *id;
    observers.push_back(std::move(observer));
  }
  void OnSessionClosed(HboneSession&, const absl::Status&) override {
    if (drop_in_close) session.reset();
  }
  void OnIdle(HboneSession& s) override {
    if (choices->Next(3) == 0) s.Shutdown();
  }
  void Act() {
    if (session == nullptr || session->closed()) return;
    switch (choices->Next(5)) {
      case 0:
        Open();
        break;
      case 1:
        if (!observers.empty()) session->Reset(observers[choices->Next(observers.size())]->id);
        break;
      case 2:
        if (!observers.empty()) session->CloseWrite(observers[choices->Next(observers.size())]->id);
        break;
      default:
        break;
    }
  }

  Choices* choices;
  bool drop_in_close;
  std::shared_ptr<HboneSession> session;
  std::vector<std::unique_ptr<Observer>> observers;
};

void Observer::OnResponse(int status) {
  FUZZ_REQUIRE(!ended_);
  if (status < 200 || status >= 300 || owner_->session == nullptr) return;
  owner_->session->Write(id, "hello from the client app");
  if (owner_->choices->Next(2) == 0) owner_->session->CloseWrite(id);
}

void Observer::OnData(const uint8_t*, size_t len) {
  FUZZ_REQUIRE(!ended_);
  if (owner_->session == nullptr) return;
  if (owner_->choices->Next(4) != 0) owner_->session->Consume(id, len);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  ambit::fuzz::Header header = ambit::fuzz::ReadHeader(in);
  Choices choices(header.seed);
  ambit::fuzz::InlineLoop loop;
  Owner owner(&choices, header.drop_in_close);
  const std::string server = "spiffe://cluster.local/ns/fuzz/sa/server";
  auto transport = std::make_unique<ambit::fuzz::InputTransport>(in.Rest(), header.chunk, server);
  ambit::fuzz::InputTransport* raw = transport.get();
  ambit::hbone::SessionOptions options;
  options.stream_send_buffer = 64 << 10;
  auto session =
      HboneSession::CreateWithTransport(&loop, ambit::fuzz::DummyFd(), std::move(transport),
                                        /*client=*/true, server, &owner, options);
  FUZZ_REQUIRE(session.ok());
  owner.session = *std::move(session);
  // Streams 1 and 3 are requested before the handshake (queued), as the tunnel does.
  owner.Open();
  owner.Open();
  ambit::fuzz::Drive(loop, raw, owner.session, header, [&] { owner.Act(); });
  loop.Clear();
  return 0;
}
