#include "agent/config/yaml_limits.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/parser.h"

namespace ambit::config {
namespace {

// Sizes every anchored node as it ends (expanded size: aliases inside it count in full) and adds
// an anchor's size at each alias. Sizes saturate at the limit, so counting stays cheap too.
class ExpansionCounter final : public YAML::EventHandler {
 public:
  struct Exceeded {};

  void OnDocumentStart(const YAML::Mark&) override {
    sizes_.clear();
    open_.clear();
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t anchor) override { Leaf(anchor); }
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                const std::string&) override {
    Leaf(anchor);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto it = sizes_.find(anchor);
    size_t size = it == sizes_.end() ? 1 : it->second;
    expanded_ = std::min(kMaxAliasExpansion + 1, expanded_ + size);
    if (expanded_ > kMaxAliasExpansion) {
      result_ = {true, mark.line + 1, mark.column + 1};
      throw Exceeded{};
    }
    Add(size);
  }
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open_.push_back({anchor, 1});
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open_.push_back({anchor, 1});
  }
  void OnMapEnd() override { Close(); }

  const AliasExpansion& result() const { return result_; }

 private:
  struct Open {
    YAML::anchor_t anchor;
    size_t size;
  };
  void Add(size_t n) {
    if (!open_.empty()) open_.back().size = std::min(kMaxAliasExpansion + 1, open_.back().size + n);
  }
  void Leaf(YAML::anchor_t anchor) {
    if (anchor != YAML::NullAnchor) sizes_[anchor] = 1;
    Add(1);
  }
  void Close() {
    if (open_.empty()) return;
    Open done = open_.back();
    open_.pop_back();
    if (done.anchor != YAML::NullAnchor) sizes_[done.anchor] = done.size;
    Add(done.size);
  }

  std::unordered_map<YAML::anchor_t, size_t> sizes_;
  std::vector<Open> open_;
  size_t expanded_ = 0;
  AliasExpansion result_;
};

}  // namespace

AliasExpansion CheckAliasExpansion(std::string_view text) {
  if (text.find('*') == std::string_view::npos) return {};  // no alias at all
  std::istringstream in{std::string(text)};
  ExpansionCounter counter;
  try {
    YAML::Parser parser(in);
    while (parser.HandleNextDocument(counter)) {
    }
  } catch (const ExpansionCounter::Exceeded&) {
  } catch (const YAML::Exception&) {
    // Not YAML: the loader reports where.
  }
  return counter.result();
}

}  // namespace ambit::config
