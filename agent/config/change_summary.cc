#include "agent/config/change_summary.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace ambit::config {
namespace {

struct Lists {
  std::vector<std::string> added, changed, removed;
};

// Both maps are sorted by key: one merge pass.
template <typename Map>
void Compare(absl::string_view kind, const Map& before, const Map& after, Lists* out) {
  auto b = before.begin();
  auto a = after.begin();
  while (b != before.end() || a != after.end()) {
    if (a == after.end() || (b != before.end() && b->first < a->first)) {
      out->removed.push_back(absl::StrCat(kind, " ", b->first));
      ++b;
    } else if (b == before.end() || a->first < b->first) {
      out->added.push_back(absl::StrCat(kind, " ", a->first));
      ++a;
    } else {
      if (!(a->second == b->second)) out->changed.push_back(absl::StrCat(kind, " ", a->first));
      ++a;
      ++b;
    }
  }
}

// A pod's first sighting is the loader's bookkeeping, not configuration.
bool SamePod(state::Pod a, state::Pod b) {
  a.first_seen = b.first_seen;
  a.first_seen_load = b.first_seen_load;
  return a == b;
}

}  // namespace

ChangeSummary SummarizeChanges(const state::ClusterState& before,
                               const SecurityConfig& before_security,
                               const state::ClusterState& after,
                               const SecurityConfig& after_security, size_t cap) {
  Lists l;
  if (!(before.mesh == after.mesh)) l.changed.push_back("MeshConfig");
  Compare("Namespace", before.namespaces, after.namespaces, &l);
  {
    Lists pods;
    Compare("Pod", before.pods, after.pods, &pods);
    l.added.insert(l.added.end(), pods.added.begin(), pods.added.end());
    l.removed.insert(l.removed.end(), pods.removed.begin(), pods.removed.end());
    for (std::string& c : pods.changed) {
      const std::string key = c.substr(4);  // "Pod "
      if (!SamePod(before.pods.at(key), after.pods.at(key))) l.changed.push_back(std::move(c));
    }
  }
  Compare("Service", before.services, after.services, &l);
  Compare("Gateway", before.gateways, after.gateways, &l);
  Compare("PeerAuthentication", before_security.peer_authentications,
          after_security.peer_authentications, &l);
  Compare("AuthorizationPolicy", before_security.authorization_policies,
          after_security.authorization_policies, &l);
  Compare("RequestAuthentication", before_security.request_authentications,
          after_security.request_authentications, &l);

  ChangeSummary s{l.added.size(), l.changed.size(), l.removed.size(), ""};
  if (s.added + s.changed + s.removed == 0) {
    s.text = "no object changed";
    return s;
  }
  size_t named = 0;
  std::vector<std::string> parts;
  for (auto [verb, list] :
       {std::pair<absl::string_view, const std::vector<std::string>*>{"added", &l.added},
        {"changed", &l.changed},
        {"removed", &l.removed}}) {
    if (list->empty()) continue;
    std::vector<std::string> shown;
    for (const std::string& o : *list) {
      if (named == cap) break;
      shown.push_back(o);
      ++named;
    }
    std::string part = absl::StrCat(verb, " ", list->size());
    if (!shown.empty()) {
      absl::StrAppend(&part, ": ", absl::StrJoin(shown, ", "));
      if (shown.size() < list->size()) {
        absl::StrAppend(&part, " and ", list->size() - shown.size(), " more");
      }
    }
    parts.push_back(std::move(part));
  }
  s.text = absl::StrJoin(parts, "; ");
  return s;
}

}  // namespace ambit::config
