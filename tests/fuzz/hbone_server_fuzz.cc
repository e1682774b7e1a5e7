// The HBONE server after the handshake: a client's HTTP/2 bytes (preface, SETTINGS, CONNECT
// requests, DATA, RST_STREAM, GOAWAY, anything) through HboneSession's real server code, with an
// owner that answers, writes, consumes, resets and shuts down as the seed in the input decides.
// Input layout: hbone_fuzz.h. Properties: no crash, leak or hang; a CONNECT reaches the owner only
// with an authority that parses as ip:port (port != 0).

#include <map>
#include <memory>
#include <vector>

#include "agent/common/ip_address.h"
#include "tests/fuzz/hbone_fuzz.h"

namespace {

using ambit::fuzz::Choices;
using ambit::hbone::HboneSession;
using ambit::hbone::StreamId;

class Owner;

class Observer final : public ambit::hbone::StreamObserver {
 public:
  Observer(Owner* owner, StreamId id) : owner_(owner), id_(id) {}
  void OnData(const uint8_t* data, size_t len) override;
  void OnWritable() override;
  void OnEndStream() override;
  void OnClosed() override { ended_ = true; }
  void OnReset(uint32_t) override { ended_ = true; }
  bool ended_ = false;

 private:
  Owner* owner_;
  StreamId id_;
};

class Owner final : public ambit::hbone::SessionDelegate {
 public:
  Owner(Choices* choices, bool drop_in_close) : choices_(choices), drop_(drop_in_close) {}

  ambit::hbone::StreamObserver* OnConnect(HboneSession& session, StreamId id,
                                          const ambit::hbone::ConnectRequest& request) override {
    auto parsed = ambit::SocketAddress::Parse(request.authority);
    FUZZ_REQUIRE(parsed.ok() && parsed->port != 0);
    auto observer = std::make_unique<Observer>(this, id);
    Observer* raw = observer.get();
    observers_.push_back(std::move(observer));
    switch (choices_->Next(6)) {
      case 0:
        return nullptr;  // 503
      case 1:
        (void)session.Respond(id, 401);
        return raw;
      case 2:
        (void)session.Respond(id, 200);
        session.Write(id, "hello from the app");
        return raw;
      case 3:
        session.Reset(id);
        return raw;
      default:
        pending_.push_back(id);  // answered later
        return raw;
    }
  }
  void OnIdle(HboneSession& session) override {
    if (choices_->Next(4) == 0) session.Shutdown();
  }
  void OnSessionClosed(HboneSession&, const absl::Status&) override {
    closed_ = true;
    if (drop_) session_.reset();
  }

  // Between read events: answer what waits, write, end streams.
  void Act() {
    if (session_ == nullptr || session_->closed()) return;
    std::vector<StreamId> pending;
    pending.swap(pending_);
    for (StreamId id : pending) {
      if (session_ == nullptr || session_->closed()) return;
      switch (choices_->Next(4)) {
        case 0:
          (void)session_->Respond(id, 503);
          break;
        case 1:
          session_->Reset(id, ambit::hbone::kConnectError);
          break;
        default:
          if (session_->Respond(id, 200).ok()) {
            std::string body(choices_->Next(3) == 0 ? 300000 : 10, 'x');
            session_->Write(id, body);
            if (choices_->Next(2) == 0) session_->CloseWrite(id);
          }
      }
    }
  }

  Choices* choices_;
  bool drop_;
  bool closed_ = false;
  std::shared_ptr<HboneSession> session_;
  std::vector<std::unique_ptr<Observer>> observers_;
  std::vector<StreamId> pending_;
};

void Observer::OnData(const uint8_t*, size_t len) {
  if (owner_->session_ == nullptr) return;
  switch (owner_->choices_->Next(4)) {
    case 0:
      break;  // the app is slow: the stream window stays closed
    case 1:
      owner_->session_->Reset(id_);
      break;
    default:
      owner_->session_->Consume(id_, len);
  }
}

void Observer::OnWritable() {
  if (owner_->session_ != nullptr) owner_->session_->Write(id_, "more");
}

void Observer::OnEndStream() {
  if (owner_->session_ != nullptr && owner_->choices_->Next(2) == 0) {
    owner_->session_->CloseWrite(id_);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ambit::fuzz::Input in(data, size);
  ambit::fuzz::Header header = ambit::fuzz::ReadHeader(in);
  Choices choices(header.seed);
  ambit::fuzz::InlineLoop loop;
  Owner owner(&choices, header.drop_in_close);
  auto transport = std::make_unique<ambit::fuzz::InputTransport>(
      in.Rest(), header.chunk, "spiffe://cluster.local/ns/fuzz/sa/client");
  ambit::fuzz::InputTransport* raw = transport.get();
  ambit::hbone::SessionOptions options;
  options.stream_send_buffer = 64 << 10;
  auto session = HboneSession::CreateWithTransport(
      &loop, ambit::fuzz::DummyFd(), std::move(transport), /*client=*/false, "", &owner, options);
  FUZZ_REQUIRE(session.ok());
  owner.session_ = *std::move(session);
  ambit::fuzz::Drive(loop, raw, owner.session_, header, [&] { owner.Act(); });
  loop.Clear();
  return 0;
}
