#pragma once

// The rules of one ZDS session, apart from its socket: ambitd (ztunnel's role) says hello first,
// then answers each request in order, one at a time (the next is not read before the answer to
// the last went out). Which pods a snapshot session keeps is decided here too.
//
// Two kinds of session:
//  - snapshot (`--zds-connect`, istio-cni): after each (re)connect the CNI side sends every pod
//    it knows, as add (netns attached) or keep (a pod of an earlier session whose netns it no
//    longer holds), then snapshot_sent. The pods of that source not named before snapshot_sent
//    are gone. A keep after snapshot_sent is an error; so is a second snapshot_sent.
//  - incremental (`--zds-listen`, ambit-cni, one session per CNI call): adds and dels only
//    change what they name; a session that closes removes nothing; snapshot_sent is answered and
//    changes nothing.
// An add of a uid that is already known replaces its netns (the CNI side re-sent it).
//
// Thread-safety: none; one owner.

#include <set>
#include <string>
#include <vector>

#include "agent/zds/codec.h"

namespace ambit::zds {

// Who handed a workload over: ambit-cni through --zds-listen, istio-cni through --zds-connect.
enum class Source { kAmbitCni = 0, kIstioCni = 1 };
inline constexpr size_t kSourceCount = 2;
// "ambit-cni", "istio-cni": the `source` label of ambit_zds_sessions.
const char* SourceName(Source source);

enum class SessionKind { kIncremental, kSnapshot };

class SessionState {
 public:
  explicit SessionState(SessionKind kind) : kind_(kind) {}

  SessionKind kind() const { return kind_; }
  // The hello went out (the first thing a session does); requests are read only after it.
  void HelloSent() { hello_sent_ = true; }
  bool hello_sent() const { return hello_sent_; }
  bool snapshot_sent() const { return snapshot_sent_; }
  // A request is being answered: the socket is not read until Answered().
  bool awaiting_answer() const { return awaiting_answer_; }

  struct Step {
    // Non-empty: answer with this error at once; nothing changes.
    std::string error;
    // snapshot_sent of a snapshot session: the uids of this source to remove (known before and
    // named by neither add nor keep in this session).
    std::vector<std::string> remove;
  };
  // A decoded request arrived. `known` holds the uids this session's source has now (before the
  // request). Unless the step carries an error, the caller carries the request out and calls
  // Answered() once its answer is sent.
  Step OnRequest(Request::Type type, const std::string& uid, const std::set<std::string>& known);
  void Answered() { awaiting_answer_ = false; }

 private:
  SessionKind kind_;
  bool hello_sent_ = false;
  bool snapshot_sent_ = false;
  bool awaiting_answer_ = false;
  std::set<std::string> named_;  // added or kept before snapshot_sent
};

}  // namespace ambit::zds
