#include "agent/waypointd/hbone_stream.h"

#include <cstdint>
#include <list>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ambit::waypointd {
namespace {

// Streams closed gracefully whose other side has not ended yet, on this thread's loop, oldest
// first. They all wait kLingerLimit, counted in ticks of one loop timer that runs only while some
// stream lingers. A timer per close (loop timers cannot be cancelled) stayed in the loop for the
// whole limit with the stream's memory, however soon the stream ended: at a few thousand closes a
// second, a hundred thousand timers.
class LingerQueue {
 public:
  using Entry = std::pair<uint64_t, std::weak_ptr<HboneStream::Core>>;  // (expiry tick, stream)
  using Handle = std::list<Entry>::iterator;

  // This thread's queue, or null when it serves another loop still (tests run several loops on
  // one thread): the caller then arms a timer of its own.
  static LingerQueue* For(EventLoop* loop) {
    LingerQueue& queue = ThisThread();
    if (queue.loop_ != loop) {
      if (!queue.entries_.empty()) return nullptr;
      queue.loop_ = loop;
      queue.armed_ = false;
      ++queue.generation_;  // a timer armed on the previous loop finds itself stale
    }
    return &queue;
  }

  static LingerQueue& ThisThread() {
    thread_local LingerQueue queue;
    return queue;
  }

  Handle Add(std::weak_ptr<HboneStream::Core> core) {
    // Added between two ticks: the limit's ticks and one more is the limit to a tick more.
    const auto ticks = static_cast<uint64_t>(absl::ToInt64Seconds(kLingerLimit));
    entries_.emplace_back(tick_ + ticks + 1, std::move(core));
    Arm();
    return std::prev(entries_.end());
  }
  void Remove(Handle h) { entries_.erase(h); }

 private:
  static constexpr absl::Duration kTick = absl::Seconds(1);

  void Arm() {
    if (armed_ || entries_.empty()) return;
    armed_ = true;
    loop_->RunAfter(kTick, [this, gen = generation_] {
      if (gen != generation_) return;
      armed_ = false;
      ++tick_;
      Expire();
      Arm();
    });
  }
  void Expire();

  EventLoop* loop_ = nullptr;
  std::list<Entry> entries_;
  uint64_t tick_ = 0;
  uint64_t generation_ = 0;
  bool armed_ = false;
};

}  // namespace

struct HboneStream::Core final : hbone::StreamObserver, std::enable_shared_from_this<Core> {
  EventLoop* loop = nullptr;
  std::shared_ptr<hbone::HboneSession> session;
  hbone::StreamId id = -1;
  Observer* owner = nullptr;  // null once the owner closed: what arrives is dropped
  // Keeps the core alive while the session may still call it; dropped when the stream ends.
  std::shared_ptr<Core> self;
  bool over = false;            // the stream ended (or was never opened)
  bool connected = false;       // client: 2xx received
  std::string out;              // taken by Write, not yet by the session
  bool shut_requested = false;  // END_STREAM after `out`
  bool shut_sent = false;
  bool above_high = false;
  bool read_enabled = true;
  std::string held;       // from the peer while reading is off, unconsumed
  bool end_held = false;  // the peer's END_STREAM arrived behind `held`
  bool delivery_scheduled = false;
  std::shared_ptr<Counts> counts = std::make_shared<Counts>();
  // Client: what a retry of a refused CONNECT needs.
  std::string authority;
  hbone::ConnectHeaders headers;
  SessionSource reopen;
  bool retried = false;
  // While closed gracefully and not over: the loop thread's LingerQueue and the entry there.
  LingerQueue* lingering = nullptr;
  LingerQueue::Handle linger_at;

  // The CONNECT again, on a session from `reopen`; false when there is none or it fails. Safe to
  // send again as it is: what the owner wrote before the 2xx waits in `out` (Write flushes only
  // once connected), so the refused stream carried none of it and the peer processed nothing.
  bool Reopen() {
    auto fresh = reopen();
    if (!fresh.ok()) return false;
    // The refused stream's session may be ending inside this very callback: let go of it only
    // after this batch of events.
    loop->Defer([old = std::move(session)] {});
    session = *std::move(fresh);
    auto next = session->Connect(authority, headers, this);
    if (!next.ok()) return false;
    id = *next;
    return true;
  }

  void Flush() {
    while (!over && !out.empty()) {
      const size_t n = session->Write(id, out);
      if (n == 0) break;
      out.erase(0, n);
    }
    if (!over && out.empty() && shut_requested && !shut_sent) {
      shut_sent = true;
      session->CloseWrite(id);
    }
  }
  void End() {
    over = true;
    if (lingering != nullptr) {
      // Only on the thread whose queue holds the entry (a core ended from elsewhere, as a
      // process stops, leaves it to expire there).
      if (lingering == &LingerQueue::ThisThread()) lingering->Remove(linger_at);
      lingering = nullptr;
    }
    // The session forgets the stream after this callback; the core goes with the last holder.
    loop->Defer([keep = std::move(self)] {});
  }
  void Report(absl::Status status) {
    Observer* o = owner;
    owner = nullptr;
    if (o != nullptr) o->OnError(status);
  }
  void Deliver() {
    delivery_scheduled = false;
    if (owner == nullptr || !read_enabled) return;
    if (!held.empty()) {
      std::string data = std::move(held);
      held.clear();
      counts->in += data.size();
      if (!over) session->Consume(id, data.size());
      owner->OnData(data);
    }
    if (end_held && owner != nullptr && read_enabled && held.empty()) {
      end_held = false;
      owner->OnEnd();
    }
  }
  void ScheduleDelivery() {
    if (delivery_scheduled) return;
    delivery_scheduled = true;
    loop->Defer([weak = weak_from_this()] {
      if (auto c = weak.lock()) c->Deliver();
    });
  }

  // hbone::StreamObserver
  void OnResponse(int status) override {
    if (status >= 200 && status < 300) {
      connected = true;
      Flush();
      if (owner != nullptr) owner->OnConnected();
      return;
    }
    // Any other status ends the stream without another callback.
    End();
    Report(absl::UnavailableError(absl::StrCat("the destination answered CONNECT with ", status)));
  }
  void OnData(const uint8_t* data, size_t len) override {
    if (owner == nullptr) {
      session->Consume(id, len);  // closed by the owner: drop, keep the window open
      return;
    }
    if (!read_enabled || !held.empty()) {
      held.append(reinterpret_cast<const char*>(data), len);
      return;
    }
    counts->in += len;
    session->Consume(id, len);
    owner->OnData(absl::string_view(reinterpret_cast<const char*>(data), len));
  }
  void OnWritable() override {
    Flush();
    if (above_high && out.size() < waypoint::kHighWater / 4) {
      above_high = false;
      if (owner != nullptr) owner->OnWritable();
    }
  }
  void OnEndStream() override {
    if (owner == nullptr) return;
    if (!held.empty() || !read_enabled) {
      end_held = true;
      return;
    }
    owner->OnEnd();
  }
  void OnClosed() override {
    // Both directions finished; an END_STREAM still held is delivered first.
    End();
    if (owner != nullptr && (end_held || !held.empty())) ScheduleDelivery();
  }
  void OnReset(uint32_t code) override {
    if (reopen && owner != nullptr && hbone::RetryRefusedConnect(code, connected, retried)) {
      retried = true;
      if (Reopen()) return;
    }
    End();
    held.clear();
    end_held = false;
    Report(absl::AbortedError(absl::StrCat("HBONE stream reset (HTTP/2 error ", code, ")")));
  }
};

std::unique_ptr<HboneStream> HboneStream::Accepted(EventLoop* loop,
                                                   std::shared_ptr<hbone::HboneSession> session,
                                                   hbone::StreamId id, std::string peer) {
  auto core = std::make_shared<Core>();
  core->loop = loop;
  core->session = std::move(session);
  core->id = id;
  core->connected = true;
  core->self = core;
  return std::unique_ptr<HboneStream>(new HboneStream(std::move(core), std::move(peer)));
}

std::unique_ptr<HboneStream> HboneStream::Open(EventLoop* loop,
                                               std::shared_ptr<hbone::HboneSession> session,
                                               absl::string_view authority,
                                               const hbone::ConnectHeaders& headers,
                                               Observer* observer, std::string peer,
                                               SessionSource reopen) {
  auto core = std::make_shared<Core>();
  core->loop = loop;
  core->session = std::move(session);
  core->owner = observer;
  auto id = core->session->Connect(authority, headers, core.get());
  if (id.ok()) {
    core->id = *id;
    core->self = core;
    core->authority = std::string(authority);
    core->headers = headers;
    core->reopen = std::move(reopen);
  } else {
    core->over = true;
    loop->Defer([weak = std::weak_ptr<Core>(core), status = id.status()] {
      if (auto c = weak.lock()) c->Report(status);
    });
  }
  return std::unique_ptr<HboneStream>(new HboneStream(std::move(core), std::move(peer)));
}

HboneStream::~HboneStream() {
  // An owner that never closed: the stream must not call into it any more.
  if (core_->owner != nullptr) Close(true);
}

hbone::StreamObserver* HboneStream::stream_observer() { return core_.get(); }

std::shared_ptr<const HboneStream::Counts> HboneStream::counts() const { return core_->counts; }

std::function<void(const absl::Status&)> HboneStream::FailHandle() {
  return [weak = std::weak_ptr<Core>(core_)](const absl::Status& status) {
    auto c = weak.lock();
    if (!c || c->owner == nullptr) return;
    if (!c->over) {
      c->session->Reset(c->id, hbone::kCancel);
      c->End();
    }
    c->loop->Defer([weak, status] {
      if (auto c = weak.lock()) c->Report(status);
    });
  };
}

void HboneStream::SetObserver(Observer* observer) { core_->owner = observer; }

void HboneStream::Write(absl::string_view data) {
  Core& c = *core_;
  if (c.over || c.shut_requested) return;
  c.counts->out += data.size();
  c.out.append(data.data(), data.size());
  // A client stream waits for its 2xx before sending (the session queues nothing for us).
  if (c.connected) c.Flush();
  if (c.out.size() > waypoint::kHighWater) c.above_high = true;
}

size_t HboneStream::buffered() const { return core_->out.size(); }

void HboneStream::SetReadEnabled(bool enabled) {
  Core& c = *core_;
  c.read_enabled = enabled;
  if (enabled && (!c.held.empty() || c.end_held)) c.ScheduleDelivery();
}

void HboneStream::ShutdownWrite() {
  Core& c = *core_;
  c.shut_requested = true;
  if (c.connected) c.Flush();
}

void HboneStream::Close(bool abort) {
  Core& c = *core_;
  c.owner = nullptr;
  c.held.clear();
  if (c.over) return;
  if (abort || !c.connected) {
    c.session->Reset(c.id, hbone::kCancel);
    c.End();
    return;
  }
  // Graceful: what was written, then END_STREAM; the peer's remaining bytes are dropped. Bounded,
  // so a peer that never ends its side cannot hold the stream forever.
  c.shut_requested = true;
  c.Flush();
  if (c.over || c.lingering != nullptr) return;
  if (LingerQueue* q = LingerQueue::For(c.loop)) {
    c.linger_at = q->Add(core_);
    c.lingering = q;
    return;
  }
  c.loop->RunAfter(kLingerLimit, [weak = std::weak_ptr<Core>(core_)] {
    auto c = weak.lock();
    if (!c || c->over) return;
    c->session->Reset(c->id, hbone::kCancel);
    c->End();
  });
}

namespace {

void LingerQueue::Expire() {
  while (!entries_.empty() && entries_.front().first <= tick_) {
    std::shared_ptr<HboneStream::Core> c = entries_.front().second.lock();
    entries_.pop_front();
    if (c == nullptr) continue;
    c->lingering = nullptr;
    if (c->over) continue;
    c->session->Reset(c->id, hbone::kCancel);
    c->End();
  }
}

}  // namespace

}  // namespace ambit::waypointd
