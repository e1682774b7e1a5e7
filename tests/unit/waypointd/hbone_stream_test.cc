// HboneStream's graceful close over a real HBONE session pair: the stream ends as soon as the
// peer ends its side, and a peer that never does is reset after kLingerLimit (one tick late at
// most), from the per-thread linger queue.

#include "agent/waypointd/hbone_stream.h"

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/unit/hbone/hbone_fixture.h"

namespace ambit::waypointd {
namespace {

using hbone::testing::HboneFixture;

struct Recorder : waypoint::ByteStream::Observer {
  void OnConnected() override { connected = true; }
  void OnData(absl::string_view data) override { received.append(data.data(), data.size()); }
  void OnEnd() override { ended = true; }
  void OnError(const absl::Status& s) override { error = s; }
  bool connected = false;
  bool ended = false;
  std::string received;
  absl::Status error;
};

class HboneStreamLingerTest : public HboneFixture {
 protected:
  // A client HboneStream to the test server, connected, that has written "hello"; the server's
  // side of it, which has read it.
  void OpenAndGreet() {
    StartServer();
    session_ = Dial();
    ASSERT_NE(session_, nullptr);
    stream_ = HboneStream::Open(loop_.get(), session_, "127.0.0.1:8080", {}, &recorder_,
                                "127.0.0.1:15008");
    ASSERT_TRUE(Run([&] { return recorder_.connected; }));
    stream_->Write("hello");
    ASSERT_TRUE(
        Run([&] { return !server_->streams.empty() && server_->streams[0]->received == "hello"; }));
  }

  std::shared_ptr<hbone::HboneSession> session_;
  Recorder recorder_;
  std::unique_ptr<HboneStream> stream_;
};

TEST_F(HboneStreamLingerTest, EndsWhenThePeerEndsItsSide) {
  OpenAndGreet();
  auto* peer = server_->streams[0].get();
  stream_->Close(/*abort=*/false);
  ASSERT_TRUE(Run([&] { return peer->end_stream; })) << "END_STREAM after what was written";
  peer->Send("bye", /*then_close=*/true);
  ASSERT_TRUE(Run([&] { return session_->active_streams() == 0; }));
  EXPECT_TRUE(peer->closed);
  EXPECT_FALSE(peer->reset.has_value()) << "a graceful close, no reset";
}

TEST_F(HboneStreamLingerTest, APeerThatNeverEndsIsResetAfterTheLimit) {
  OpenAndGreet();
  auto* peer = server_->streams[0].get();
  const absl::Time closed_at = absl::Now();
  stream_->Close(/*abort=*/false);
  ASSERT_TRUE(Run([&] { return peer->end_stream; }));
  // The peer keeps its side open and silent.
  ASSERT_TRUE(Run([&] { return peer->reset.has_value(); }, kLingerLimit + absl::Seconds(5)))
      << "still open " << absl::Now() - closed_at << " after the graceful close";
  const absl::Duration waited = absl::Now() - closed_at;
  EXPECT_GE(waited, kLingerLimit - absl::Milliseconds(50)) << waited;
  EXPECT_LE(waited, kLingerLimit + absl::Seconds(3)) << waited;
  EXPECT_EQ(session_->active_streams(), 0u);
}

}  // namespace
}  // namespace ambit::waypointd
