#include "agent/issuance/signing_queue.h"

#include <algorithm>
#include <utility>

#include "agent/common/log.h"

namespace ambit::issuance {

SigningQueue::SigningQueue(Signer* signer, int max_in_flight) : signer_(signer) {
  for (int i = 0; i < std::max(1, max_in_flight); ++i) threads_.emplace_back([this] { Work(); });
}

SigningQueue::~SigningQueue() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    order_.clear();
    waiting_.clear();
  }
  for (auto& t : threads_) t.join();
}

void SigningQueue::Submit(const std::string& identity, std::string csr_pem, absl::Duration ttl,
                          Done done) {
  Done superseded;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    auto [it, inserted] = waiting_.try_emplace(identity);
    if (inserted) {
      order_.push_back(identity);
    } else {
      superseded = std::move(it->second.done);
    }
    it->second = Job{std::move(csr_pem), ttl, std::move(done)};
  }
  if (superseded) {
    superseded(
        absl::AbortedError("superseded by a newer certificate request for the same identity"));
  }
}

bool SigningQueue::HasRunnable() const {
  if (stop_) return true;
  for (const std::string& identity : order_) {
    if (!running_.count(identity)) return true;
  }
  return false;
}

void SigningQueue::Work() {
  while (true) {
    std::string identity;
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SigningQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->HasRunnable(); }, this));
      if (stop_) return;
      auto next = std::find_if(order_.begin(), order_.end(),
                               [this](const std::string& id)
                                   ABSL_NO_THREAD_SAFETY_ANALYSIS { return !running_.count(id); });
      identity = std::move(*next);
      order_.erase(next);
      auto it = waiting_.find(identity);
      job = std::move(it->second);
      waiting_.erase(it);
      running_.insert(identity);
    }
    // When the CA is actually asked, which is what the data plane's retry schedule promises.
    AMBIT_LOG("ca", Info) << "signing " << identity << " with " << signer_->Description();
    auto chain = signer_->Sign(job.csr_pem, identity, job.ttl);
    job.done(std::move(chain));
    absl::MutexLock lock(&mu_);
    running_.erase(identity);
  }
}

size_t SigningQueue::running() const {
  absl::MutexLock lock(&mu_);
  return running_.size();
}

size_t SigningQueue::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_.size();
}

}  // namespace ambit::issuance
