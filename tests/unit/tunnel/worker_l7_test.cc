#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "agent/tunnel/l7_hook.h"
#include "agent/tunnel/worker.h"

namespace ambit::tunnel {
namespace {

// Keeps something on each worker's loop, as the waypoint's authorizer clients do, and records
// whether the loop still existed when it had to let go.
class LoopHoldingHandler final : public InboundHandler {
 public:
  hbone::StreamObserver* OnConnect(Worker&, hbone::HboneSession&, hbone::StreamId,
                                   const hbone::ConnectRequest&, const std::shared_ptr<const Pod>&,
                                   const SocketAddress&, FlowRecord) override {
    return nullptr;
  }
  void OnAccepted(Worker&, const std::shared_ptr<const Pod>&, ListenerKind, UniqueFd) override {}
  void OnWorkerStopped(Worker& worker) override {
    stopped.push_back(worker.index());
    // The loop is still there: what the handler keeps on it can be torn down through it.
    worker.loop().Defer([] {});
  }
  std::vector<int> stopped;
};

// The handler outlives the workers (the shell's options hold it); what it keeps on a worker's
// loop used to be destroyed with it, after the loop, touching freed memory at exit.
TEST(WorkerL7Test, HandlerLetsGoOfAWorkersLoopBeforeTheLoopGoes) {
  auto handler = std::make_shared<LoopHoldingHandler>();
  auto settings = std::make_shared<DataPlaneSettings>();
  settings->l7 = handler;
  {
    auto w0 = Worker::Create(0, settings);
    auto w1 = Worker::Create(1, settings);
    ASSERT_TRUE(w0.ok()) << w0.status();
    ASSERT_TRUE(w1.ok()) << w1.status();
    (*w0)->Start();
    (*w1)->Start();
    (*w0)->Stop();
    (*w1)->Stop();
    EXPECT_TRUE(handler->stopped.empty());
  }
  EXPECT_EQ(handler->stopped, (std::vector<int>{1, 0}));
}

}  // namespace
}  // namespace ambit::tunnel
