#include "agent/kube/watch.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::kube {
namespace {

using ::testing::HasSubstr;

const Resource& ResourceNamed(const std::string& name) {
  for (const Resource& r : WatchedResources()) {
    if (r.name == name) return r;
  }
  ADD_FAILURE() << "no resource " << name;
  return WatchedResources().front();
}

TEST(DecodeWatchEventTest, DecodesEveryType) {
  struct Row {
    const char* type;
    EventType expected;
  } rows[] = {{"ADDED", EventType::kAdded},
              {"MODIFIED", EventType::kModified},
              {"DELETED", EventType::kDeleted},
              {"BOOKMARK", EventType::kBookmark}};
  for (const Row& row : rows) {
    auto event = DecodeWatchEvent(
        std::string(R"({"type":")") + row.type +
        R"(","object":{"kind":"Pod","metadata":{"name":"a","resourceVersion":"17"}}})");
    ASSERT_TRUE(event.ok()) << row.type << ": " << event.status();
    EXPECT_EQ(event->type, row.expected) << row.type;
    EXPECT_EQ(event->resource_version, "17") << row.type;
    EXPECT_EQ(event->object["metadata"]["name"], "a");
  }
}

TEST(DecodeWatchEventTest, ErrorEventCarriesTheStatus) {
  auto event = DecodeWatchEvent(
      R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure",)"
      R"j("message":"too old resource version: 5 (10)","reason":"Expired","code":410}})j");
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->type, EventType::kError);
  EXPECT_EQ(event->code, 410);
  EXPECT_EQ(event->reason, "Expired");
  EXPECT_TRUE(IsExpired(event->code, event->reason));
}

TEST(DecodeWatchEventTest, RejectsMalformedEvents) {
  const char* rows[] = {
      "",
      "not json",
      "[1,2]",
      R"({"type":"ADDED"})",
      R"({"type":"ADDED","object":"x"})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a"}}})",  // no resourceVersion
      R"({"type":"ADDED","object":{}})",
      R"({"type":"SOMETHING","object":{"metadata":{"resourceVersion":"1"}}})",
      R"({"type":7,"object":{}})",
      R"({"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"1"})",  // cut
  };
  for (const char* row : rows) {
    EXPECT_FALSE(DecodeWatchEvent(row).ok()) << row;
  }
}

TEST(DecodeWatchEventTest, RejectsDeepNestingWithoutRecursing) {
  std::string deep = R"({"type":"ADDED","object":{"metadata":{"resourceVersion":"1"},"x":)";
  deep += std::string(100000, '[');
  deep += std::string(100000, ']');
  deep += "}}";
  auto event = DecodeWatchEvent(deep);
  ASSERT_FALSE(event.ok());
  EXPECT_THAT(event.status().message(), HasSubstr("nests deeper"));
  // Brackets inside strings do not count.
  EXPECT_EQ(JsonDepth(R"({"a":"[[[[{{{{\"]]]"})"), 1u);
}

TEST(IsExpiredTest, GoneAndExpiredOnly) {
  EXPECT_TRUE(IsExpired(410, ""));
  EXPECT_TRUE(IsExpired(0, "Expired"));
  EXPECT_TRUE(IsExpired(0, "Gone"));
  EXPECT_FALSE(IsExpired(500, "InternalError"));
  EXPECT_FALSE(IsExpired(429, "TooManyRequests"));
}

TEST(ParseStatusTest, ReadsCodeReasonMessage) {
  ApiStatus s = ParseStatus(R"({"kind":"Status","code":429,"reason":"TooManyRequests",)"
                            R"("message":"slow down"})");
  EXPECT_EQ(s.code, 429);
  EXPECT_EQ(s.reason, "TooManyRequests");
  EXPECT_EQ(s.message, "slow down");
  EXPECT_EQ(ParseStatus("<html>").code, 0);
}

TEST(ParseRetryAfterTest, SecondsCappedAndNothingElse) {
  EXPECT_EQ(ParseRetryAfter("3"), absl::Seconds(3));
  EXPECT_EQ(ParseRetryAfter(" 0 "), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("999999"), kMaxRetryAfter);
  EXPECT_EQ(ParseRetryAfter(""), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("-1"), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT"), std::nullopt);
}

TEST(BackoffTest, DoublesWithJitterUpToTheCap) {
  Backoff b(absl::Milliseconds(100), absl::Seconds(1), /*seed=*/42);
  absl::Duration ceiling = absl::Milliseconds(100);
  for (int i = 0; i < 10; ++i) {
    absl::Duration d = b.Next();
    EXPECT_GE(d, ceiling / 2) << i;
    EXPECT_LE(d, ceiling) << i;
    ceiling = std::min(ceiling * 2, absl::Seconds(1));
  }
  b.Reset();
  EXPECT_LE(b.Next(), absl::Milliseconds(100));
}

TEST(BackoffTest, NeverShorterThanRetryAfter) {
  Backoff b(absl::Milliseconds(100), absl::Seconds(1), /*seed=*/7);
  EXPECT_GE(b.Next(absl::Seconds(3)), absl::Seconds(3));
  // and a short Retry-After does not shorten the back-off
  for (int i = 0; i < 5; ++i) b.Next();
  EXPECT_GE(b.Next(absl::Milliseconds(1)), absl::Milliseconds(500));
}

nlohmann::json Policy(const std::string& name, const std::string& action) {
  return nlohmann::json::parse(R"({"apiVersion":"security.istio.io/v1",)"
                               R"("metadata":{"name":")" +
                               name +
                               R"(","namespace":"prod","resourceVersion":"3"},)"
                               R"("spec":{"action":")" +
                               action + R"(","rules":[{}]}})");
}

TEST(ObjectStoreTest, ListItemsWithoutKindAreConverted) {
  ObjectStore store(ResourceNamed("pods"));
  nlohmann::json pod = nlohmann::json::parse(
      R"({"metadata":{"name":"web","namespace":"prod","uid":"u1","resourceVersion":"9",)"
      R"("managedFields":[{"manager":"kubelet"}]},)"
      R"("spec":{"nodeName":"node-a","serviceAccountName":"web"},)"
      R"("status":{"podIPs":[{"ip":"198.18.0.5"}]}})");
  store.Upsert(pod);
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  store.Collect(&objects, &errors);
  EXPECT_TRUE(errors.empty()) << errors.front().ToString();
  ASSERT_EQ(objects.count("Pod prod/web"), 1u);
  const auto& p = std::get<state::Pod>(objects.at("Pod prod/web"));
  EXPECT_EQ(p.service_account, "web");
  EXPECT_EQ(p.node_name, "node-a");
  ASSERT_EQ(p.ips.size(), 1u);
  EXPECT_EQ(p.source_file, kSourceName);
  // A pod is kept packed.
  EXPECT_TRUE(std::holds_alternative<state::PodPack>(store.Find("prod/web")->good));
}

TEST(ObjectStoreTest, InvalidUpdateKeepsTheLastGoodVersionWithAnErrorNamingIt) {
  ObjectStore store(ResourceNamed("authorizationpolicies"));
  store.Upsert(Policy("deny-all", "DENY"));
  store.Upsert(Policy("deny-all", "EXPLODE"));
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  store.Collect(&objects, &errors);
  ASSERT_EQ(objects.count("AuthorizationPolicy prod/deny-all"), 1u);
  EXPECT_EQ(std::get<authz::Policy>(objects.at("AuthorizationPolicy prod/deny-all")).action,
            authz::Action::kDeny);
  ASSERT_GE(errors.size(), 2u);
  EXPECT_THAT(errors[0].ToString(),
              HasSubstr("apiserver: AuthorizationPolicy prod/deny-all: field spec.action"));
  EXPECT_THAT(errors.back().ToString(), HasSubstr("last good version stays in force"));
  // Fixed again: the new version, no errors.
  store.Upsert(Policy("deny-all", "ALLOW"));
  objects.clear();
  errors.clear();
  store.Collect(&objects, &errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(std::get<authz::Policy>(objects.at("AuthorizationPolicy prod/deny-all")).action,
            authz::Action::kAllow);
}

TEST(ObjectStoreTest, ServerWrittenFieldsAreAccepted) {
  // What a real API server adds to an Istio object: status, generation, timestamps, managed
  // fields, kubectl's last-applied annotation.
  ObjectStore store(ResourceNamed("authorizationpolicies"));
  nlohmann::json p = Policy("allow", "ALLOW");
  p["metadata"]["generation"] = 3;
  p["metadata"]["uid"] = "0d6c";
  p["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z";
  p["metadata"]["managedFields"] = nlohmann::json::parse(
      R"([{"manager":"kubectl","operation":"Update","fieldsType":"FieldsV1","fieldsV1":{}}])");
  p["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}";
  p["status"] = nlohmann::json::parse(R"({"conditions":[],"observedGeneration":"3"})");
  store.Upsert(p);
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  store.Collect(&objects, &errors);
  EXPECT_EQ(objects.count("AuthorizationPolicy prod/allow"), 1u);
  for (const auto& e : errors) EXPECT_TRUE(e.warning) << e.ToString();
}

TEST(ObjectStoreTest, InvalidNewObjectIsLeftOut) {
  ObjectStore store(ResourceNamed("authorizationpolicies"));
  store.Upsert(Policy("bad", "EXPLODE"));
  std::map<std::string, config::ConfigObject> objects;
  std::vector<config::ConfigError> errors;
  store.Collect(&objects, &errors);
  EXPECT_TRUE(objects.empty());
  ASSERT_FALSE(errors.empty());
  EXPECT_FALSE(errors[0].warning);
}

TEST(ObjectStoreTest, DeleteRemovesAndReplaceSwapsEverything) {
  ObjectStore store(ResourceNamed("authorizationpolicies"));
  store.Upsert(Policy("a", "DENY"));
  store.Upsert(Policy("b", "DENY"));
  store.Remove(Policy("a", "DENY"));
  EXPECT_EQ(store.Find("prod/a"), nullptr);
  ASSERT_NE(store.Find("prod/b"), nullptr);
  ObjectStore::Entries fresh;
  fresh.emplace("prod/c", store.Convert(Policy("c", "ALLOW"), nullptr));
  store.Replace(std::move(fresh));
  EXPECT_EQ(store.Find("prod/b"), nullptr);
  EXPECT_NE(store.Find("prod/c"), nullptr);
}

TEST(ObjectStoreTest, ClusterScopedKeyIsTheName) {
  auto key = ObjectStore::KeyOf(nlohmann::json::parse(R"({"metadata":{"name":"prod"}})"));
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(*key, "prod");
  EXPECT_FALSE(ObjectStore::KeyOf(nlohmann::json::parse(R"({"metadata":{}})")).ok());
  EXPECT_FALSE(ObjectStore::KeyOf(nlohmann::json::parse(R"([])")).ok());
}

}  // namespace
}  // namespace ambit::kube
