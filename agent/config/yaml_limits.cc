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

  explicit ExpansionCounter(size_t max_events) : events_left_(max_events) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    Event(mark);
    sizes_.clear();
    open_.clear();
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    Event(mark);
    Leaf(anchor);
  }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                const std::string&) override {
    Event(mark);
    Leaf(anchor);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    Event(mark);
    auto it = sizes_.find(anchor);
    size_t size = it == sizes_.end() ? 1 : it->second;
    expanded_ = std::min(kMaxAliasExpansion + 1, expanded_ + size);
    if (expanded_ > kMaxAliasExpansion) {
      result_ = {true, false, mark.line + 1, mark.column + 1};
      throw Exceeded{};
    }
    Add(size);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Event(mark);
    open_.push_back({anchor, 1});
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Event(mark);
    open_.push_back({anchor, 1});
  }
  void OnMapEnd() override { Close(); }

  const AliasExpansion& result() const { return result_; }

 private:
  struct Open {
    YAML::anchor_t anchor;
    size_t size;
  };
  void Event(const YAML::Mark& mark) {
    if (events_left_-- > 0) return;
    result_ = {false, true, mark.line + 1, mark.column + 1};
    throw Exceeded{};
  }
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

  size_t events_left_;
  std::unordered_map<YAML::anchor_t, size_t> sizes_;
  std::vector<Open> open_;
  size_t expanded_ = 0;
  AliasExpansion result_;
};

}  // namespace

AliasExpansion CheckAliasExpansion(std::string_view text) {
  std::istringstream in{std::string(text)};
  ExpansionCounter counter(4 * text.size() + 64);
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
