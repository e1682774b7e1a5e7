#pragma once

// Limits on what a YAML text may cost to read, applied before yaml-cpp builds its tree.
//
// yaml-cpp shares an aliased node instead of copying it, but everything that walks the tree (the
// object converters, policy compilation) visits each alias as a full copy: a few kilobytes of
// nested aliases ("billion laughs") expand to billions of nodes, and the agent would spend hours
// and gigabytes on one config file. Kubernetes' YAML decoder refuses such documents ("excessive
// aliasing"); so does ours. Thread-safe: no shared state.

#include <cstddef>
#include <string_view>

namespace ambit::config {

// Nodes that aliases may add to a file, counted as full copies: far beyond any hand-written use
// of anchors, far below what costs noticeable time.
inline constexpr size_t kMaxAliasExpansion = 100000;

struct AliasExpansion {
  bool excessive = false;
  // yaml-cpp 0.7 loops for ever on some malformed texts, producing empty documents without
  // consuming input; no text yields more than a few parser events per byte.
  bool runaway = false;
  int line = 0;  // 1-based position of the alias (or document) that crossed the limit
  int column = 0;
};

// Counts the nodes the aliases of `text` expand to, stopping at kMaxAliasExpansion, and the
// parser's events, stopping at a few per byte (`runaway`). Text that is not YAML is neither:
// the YAML loader reports it.
AliasExpansion CheckAliasExpansion(std::string_view text);

}  // namespace ambit::config
