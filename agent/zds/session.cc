#include "agent/zds/session.h"

#include "absl/strings/str_cat.h"

namespace ambit::zds {

const char* SourceName(Source source) {
  return source == Source::kIstioCni ? "istio-cni" : "ambit-cni";
}

SessionState::Step SessionState::OnRequest(Request::Type type, const std::string& uid,
                                           const std::set<std::string>& known) {
  Step step;
  if (!hello_sent_) {
    step.error = "request before the hello was sent";
    return step;
  }
  if (awaiting_answer_) {
    step.error = "request while the previous one is unanswered";
    return step;
  }
  const bool snapshot = kind_ == SessionKind::kSnapshot;
  switch (type) {
    case Request::Type::kAdd:
      if (snapshot && !snapshot_sent_) named_.insert(uid);
      break;
    case Request::Type::kKeep:
      if (snapshot && snapshot_sent_) {
        step.error =
            absl::StrCat("keep of ", uid, " after snapshot_sent (keep is for the snapshot)");
        return step;
      }
      if (!known.contains(uid)) {
        step.error = absl::StrCat("keep of ", uid, ": no such workload from this source");
        return step;
      }
      if (snapshot) named_.insert(uid);
      break;
    case Request::Type::kDel:
      named_.erase(uid);
      break;
    case Request::Type::kSnapshotSent:
      if (snapshot) {
        if (snapshot_sent_) {
          step.error = "second snapshot_sent in one session";
          return step;
        }
        snapshot_sent_ = true;
        for (const std::string& k : known) {
          if (!named_.contains(k)) step.remove.push_back(k);
        }
        named_.clear();
      }
      break;
  }
  awaiting_answer_ = true;
  return step;
}

}  // namespace ambit::zds
