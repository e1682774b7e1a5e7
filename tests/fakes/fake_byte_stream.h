#pragma once

// A ByteStream and an UpstreamConnector without sockets: the test sees what was written and plays
// the peer through the observer. Each stream's state outlives the stream, so a test can still
// look at a connection its owner has closed and freed.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "agent/waypoint/byte_stream.h"

namespace ambit::testing {

struct FakeStreamState {
  waypoint::ByteStream::Observer* observer = nullptr;
  std::string written;
  bool closed = false;
  bool aborted = false;
  bool write_shut = false;

  // Plays the peer; nothing once the owner closed the stream.
  void Data(absl::string_view data) {
    if (!closed) observer->OnData(data);
  }
  void End() {
    if (!closed) observer->OnEnd();
  }
  void Error(absl::Status s) {
    if (!closed) observer->OnError(s);
  }
};

class FakeByteStream final : public waypoint::ByteStream {
 public:
  explicit FakeByteStream(std::shared_ptr<FakeStreamState> state) : state_(std::move(state)) {}
  void SetObserver(Observer* observer) override { state_->observer = observer; }
  void Write(absl::string_view data) override {
    if (!state_->closed) state_->written.append(data.data(), data.size());
  }
  size_t buffered() const override { return 0; }
  void SetReadEnabled(bool) override {}
  void ShutdownWrite() override { state_->write_shut = true; }
  void Close(bool abort) override {
    state_->closed = true;
    state_->aborted = abort;
  }
  std::string Describe() const override { return "fake"; }

 private:
  std::shared_ptr<FakeStreamState> state_;
};

class FakeConnector final : public waypoint::UpstreamConnector {
 public:
  std::unique_ptr<waypoint::ByteStream> Connect(waypoint::ByteStream::Observer* observer) override {
    auto state = std::make_shared<FakeStreamState>();
    state->observer = observer;
    streams.push_back(state);
    return std::make_unique<FakeByteStream>(state);
  }
  std::string Describe() const override { return "fake authorizer"; }

  std::vector<std::shared_ptr<FakeStreamState>> streams;  // every connection, in order
};

}  // namespace ambit::testing
