#include "agent/issuance/signing_queue.h"

#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace ambit::issuance {
namespace {

// Signs at once, except identities marked hung: those block until released (as a call to a CA
// that accepted the connection and never answers blocks until its deadline).
class GateSigner final : public Signer {
 public:
  absl::StatusOr<std::vector<std::string>> Sign(const std::string& csr_pem,
                                                const std::string& identity,
                                                absl::Duration) override {
    absl::MutexLock lock(&mu_);
    ++running_;
    max_running_ = std::max(max_running_, running_);
    ++calls_[identity];
    running_by_identity_[identity]++;
    max_per_identity_ = std::max(max_per_identity_, running_by_identity_[identity]);
    while (hung_.count(identity)) released_.Wait(&mu_);
    --running_;
    --running_by_identity_[identity];
    return std::vector<std::string>{"cert for " + identity + " " + csr_pem};
  }
  std::vector<std::string> TrustBundle() const override { return {}; }
  std::string Description() const override { return "gate"; }

  void Hang(const std::string& identity) {
    absl::MutexLock lock(&mu_);
    hung_.insert(identity);
  }
  void Release(const std::string& identity) {
    absl::MutexLock lock(&mu_);
    hung_.erase(identity);
    released_.SignalAll();
  }
  int calls(const std::string& identity) {
    absl::MutexLock lock(&mu_);
    return calls_[identity];
  }
  int max_running() {
    absl::MutexLock lock(&mu_);
    return max_running_;
  }
  int max_per_identity() {
    absl::MutexLock lock(&mu_);
    return max_per_identity_;
  }

 private:
  absl::Mutex mu_;
  absl::CondVar released_;
  std::set<std::string> hung_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> running_by_identity_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int max_running_ ABSL_GUARDED_BY(mu_) = 0;
  int max_per_identity_ ABSL_GUARDED_BY(mu_) = 0;
};

// Results by request name, filled from the signing threads.
class Results {
 public:
  SigningQueue::Done For(const std::string& name) {
    return [this, name](absl::StatusOr<std::vector<std::string>> chain) {
      absl::MutexLock lock(&mu_);
      results_[name] = chain.ok() ? absl::Status() : chain.status();
      done_.insert(name);
      answered_.SignalAll();
    };
  }
  // Waits (bounded) for `name`'s answer; false if none came.
  bool Wait(const std::string& name, absl::Duration timeout = absl::Seconds(5)) {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + timeout;
    while (!done_.count(name) && absl::Now() < deadline) {
      answered_.WaitWithDeadline(&mu_, deadline);
    }
    return done_.count(name) > 0;
  }
  absl::Status Get(const std::string& name) {
    absl::MutexLock lock(&mu_);
    return results_[name];
  }
  bool Answered(const std::string& name) {
    absl::MutexLock lock(&mu_);
    return done_.count(name) > 0;
  }

 private:
  absl::Mutex mu_;
  absl::CondVar answered_;
  std::map<std::string, absl::Status> results_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> done_ ABSL_GUARDED_BY(mu_);
};

constexpr char kA[] = "spiffe://cluster.local/ns/a/sa/a";
constexpr char kB[] = "spiffe://cluster.local/ns/b/sa/b";

TEST(SigningQueueTest, AHungIdentityDoesNotDelayAnother) {
  GateSigner signer;
  Results results;
  {
    SigningQueue queue(&signer, 4);
    signer.Hang(kA);
    queue.Submit(kA, "csr-a", absl::Hours(1), results.For("a"));
    queue.Submit(kB, "csr-b", absl::Hours(1), results.For("b"));
    ASSERT_TRUE(results.Wait("b"));
    EXPECT_TRUE(results.Get("b").ok());
    EXPECT_FALSE(results.Answered("a"));
    signer.Release(kA);
    ASSERT_TRUE(results.Wait("a"));
  }
}

TEST(SigningQueueTest, AtMostOnePerIdentityAndANewerRequestReplacesAWaitingOne) {
  GateSigner signer;
  Results results;
  {
    SigningQueue queue(&signer, 4);
    signer.Hang(kA);
    queue.Submit(kA, "first", absl::Hours(1), results.For("first"));
    // Let the first call start before the next ones arrive.
    for (int i = 0; i < 500 && queue.running() == 0; ++i) absl::SleepFor(absl::Milliseconds(2));
    ASSERT_EQ(queue.running(), 1u);
    queue.Submit(kA, "second", absl::Hours(1), results.For("second"));
    queue.Submit(kA, "third", absl::Hours(1), results.For("third"));
    // The second never reaches the CA: the third replaced it while it waited.
    ASSERT_TRUE(results.Wait("second"));
    EXPECT_EQ(results.Get("second").code(), absl::StatusCode::kAborted);
    EXPECT_EQ(queue.waiting(), 1u);
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(signer.calls(kA), 1);  // the third waits for the first
    signer.Release(kA);
    ASSERT_TRUE(results.Wait("first"));
    ASSERT_TRUE(results.Wait("third"));
    EXPECT_TRUE(results.Get("third").ok());
    EXPECT_EQ(signer.calls(kA), 2);
    EXPECT_EQ(signer.max_per_identity(), 1);
  }
}

TEST(SigningQueueTest, ConcurrencyIsBounded) {
  GateSigner signer;
  Results results;
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i)
    ids.push_back("spiffe://cluster.local/ns/n/sa/s" + std::to_string(i));
  {
    SigningQueue queue(&signer, 3);
    for (const auto& id : ids) signer.Hang(id);
    for (const auto& id : ids) queue.Submit(id, "csr", absl::Hours(1), results.For(id));
    for (int i = 0; i < 500 && queue.running() < 3; ++i) absl::SleepFor(absl::Milliseconds(2));
    absl::SleepFor(absl::Milliseconds(50));
    EXPECT_EQ(queue.running(), 3u);
    EXPECT_EQ(queue.waiting(), 7u);
    for (const auto& id : ids) signer.Release(id);
    for (const auto& id : ids) ASSERT_TRUE(results.Wait(id)) << id;
    EXPECT_EQ(signer.max_running(), 3);
  }
}

TEST(SigningQueueTest, DestructionDropsWaitingRequestsAndJoins) {
  GateSigner signer;
  Results results;
  signer.Hang(kA);
  auto queue = std::make_unique<SigningQueue>(&signer, 1);
  queue->Submit(kA, "a", absl::Hours(1), results.For("a"));
  for (int i = 0; i < 500 && queue->running() == 0; ++i) absl::SleepFor(absl::Milliseconds(2));
  queue->Submit(kB, "b", absl::Hours(1), results.For("b"));
  std::thread release([&signer] {
    absl::SleepFor(absl::Milliseconds(100));
    signer.Release(kA);
  });
  queue.reset();  // waits for the running call, never starts the waiting one
  release.join();
  EXPECT_TRUE(results.Answered("a"));
  EXPECT_FALSE(results.Answered("b"));
  EXPECT_EQ(signer.calls(kB), 0);
}

}  // namespace
}  // namespace ambit::issuance
