#include "agent/kube/api_source.h"

#include <poll.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/kube/fake_apiserver_process.h"

namespace ambit::kube {
namespace {

using testing::FakeApiServerProcess;
using ::testing::HasSubstr;

constexpr char kPolicy[] = R"({"object": {"apiVersion": "security.istio.io/v1",
  "kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "prod"},
  "spec": {"action": "%s", "rules": [{}]}}})";

std::string PolicyJson(const std::string& action) {
  std::string s = kPolicy;
  s.replace(s.find("%s"), 2, action);
  return s;
}

class KubeApiSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.ok());
    config_dir_ = server_.dir() + "/config";
    std::filesystem::create_directories(config_dir_);
    std::ofstream(config_dir_ + "/mesh.yaml") << "trustDomain: example.org\n";
    server_.Control("apply", R"({"object": {"apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "web", "namespace": "prod"},
      "spec": {"nodeName": "n1", "serviceAccountName": "web"},
      "status": {"podIP": "198.18.0.5"}}})");
  }

  std::unique_ptr<KubeApiSource> MakeSource(std::vector<Resource> resources = WatchedResources()) {
    KubeApiSource::Options options;
    options.config_dir = config_dir_;
    options.page_size = 2;  // several pages even here
    options.backoff_initial = absl::Milliseconds(50);
    options.backoff_max = absl::Milliseconds(500);
    options.resources = std::move(resources);
    auto source = KubeApiSource::Create(server_.Client(), options);
    EXPECT_TRUE(source.ok()) << source.status();
    return source.ok() ? std::move(*source) : nullptr;
  }

  // Polls until a result satisfying `want` arrives.
  config::LoadResult WaitFor(KubeApiSource& source,
                             const std::function<bool(const config::LoadResult&)>& want) {
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    std::optional<config::LoadResult> last;
    while (absl::Now() < deadline) {
      pollfd p{source.fd(), POLLIN, 0};
      ::poll(&p, 1, 200);
      if (auto r = source.Poll()) {
        if (want(*r)) return *r;
        last = std::move(r);
      }
    }
    ADD_FAILURE() << "no matching result; pending: " << absl::StrJoin(source.Pending(), "; ");
    return last.value_or(config::LoadResult());
  }

  FakeApiServerProcess server_;
  std::string config_dir_;
};

TEST_F(KubeApiSourceTest, SyncsAndMergesWithTheDirectory) {
  auto source = MakeSource();
  ASSERT_NE(source, nullptr);
  config::LoadResult r =
      WaitFor(*source, [](const config::LoadResult& r) { return r.state.pods.count("prod/web"); });
  EXPECT_TRUE(source->Pending().empty());
  EXPECT_EQ(r.state.mesh.trust_domain, "example.org");  // from mesh.yaml
  EXPECT_EQ(r.state.pods.at("prod/web").source_file, "apiserver");
  EXPECT_TRUE(r.state.namespaces.count("kube-system"));  // listed over several pages
  for (const config::SourceResourceStats& s : source->Stats()) {
    EXPECT_TRUE(s.synced) << s.resource;
    EXPECT_EQ(s.lists, 1u) << s.resource;
  }
}

TEST_F(KubeApiSourceTest, EventsAndTheLastGoodRule) {
  auto source = MakeSource();
  server_.Control("apply", PolicyJson("DENY"));
  WaitFor(*source, [](const config::LoadResult& r) {
    return r.security.authorization_policies.count("prod/p") > 0;
  });
  server_.Control("apply", PolicyJson("EXPLODE"));
  config::LoadResult r =
      WaitFor(*source, [](const config::LoadResult& r) { return r.HasErrors(); });
  ASSERT_TRUE(r.security.authorization_policies.count("prod/p"));
  EXPECT_EQ(r.security.authorization_policies.at("prod/p").action, authz::Action::kDeny);
  std::vector<std::string> errors;
  for (const auto& e : r.errors) errors.push_back(e.ToString());
  EXPECT_THAT(absl::StrJoin(errors, "\n"),
              HasSubstr("apiserver: AuthorizationPolicy prod/p: field spec.action"));
  server_.Control("delete", R"({"kind": "AuthorizationPolicy", "namespace": "prod", "name": "p"})");
  WaitFor(*source, [](const config::LoadResult& r) {
    return r.security.authorization_policies.empty() && !r.HasErrors();
  });
}

TEST_F(KubeApiSourceTest, RelistsAfterCompactionAndKeepsSyncing) {
  auto source = MakeSource();
  WaitFor(*source, [](const config::LoadResult& r) { return r.state.pods.count("prod/web"); });
  // The watches come back while the server holds every request for a second; meanwhile the
  // history they would resume from is compacted away.
  server_.Control("set_delay", R"({"seconds": 1})");
  server_.Control("drop_watches", "{}");
  server_.Control("apply", PolicyJson("ALLOW"));
  server_.Control("compact", "{}");
  server_.Control("set_delay", R"({"seconds": 0})");
  WaitFor(*source, [](const config::LoadResult& r) {
    return r.security.authorization_policies.count("prod/p") > 0;
  });
  uint64_t lists = 0;
  for (const auto& s : source->Stats()) lists += s.lists;
  EXPECT_GT(lists, WatchedResources().size());
}

TEST_F(KubeApiSourceTest, PendingNamesWhatIsMissingAndWhy) {
  server_.Control("fail_next", R"({"n": 100, "status": 503})");
  auto source = MakeSource();
  absl::SleepFor(absl::Milliseconds(500));
  std::vector<std::string> pending = source->Pending();
  ASSERT_EQ(pending.size(), WatchedResources().size());
  EXPECT_THAT(pending[0], HasSubstr("waiting for the first list of pods"));
  EXPECT_THAT(pending[0], HasSubstr("HTTP 503"));
  EXPECT_FALSE(source->Poll().has_value());  // nothing partial
}

TEST_F(KubeApiSourceTest, AnUnservedCustomResourceCountsAsNone) {
  std::vector<Resource> resources = WatchedResources();
  resources.push_back({"widgets", "/apis/example.com/v1/widgets", "Widget", "example.com/v1",
                       /*optional=*/true});
  auto source = MakeSource(resources);
  config::LoadResult r =
      WaitFor(*source, [](const config::LoadResult& r) { return r.state.pods.count("prod/web"); });
  std::vector<std::string> errors;
  for (const auto& e : r.errors) errors.push_back(e.ToString());
  EXPECT_THAT(absl::StrJoin(errors, "\n"),
              HasSubstr("does not serve /apis/example.com/v1/widgets"));
  EXPECT_FALSE(r.HasErrors());  // a warning
}

}  // namespace
}  // namespace ambit::kube
