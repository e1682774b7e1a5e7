#include "agent/state/workload_meta.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace ambit::state {
namespace {

using Labels = std::map<std::string, std::string>;

struct OwnerCase {
  const char* what;
  std::string pod, generate_name;
  std::vector<OwnerReference> owners;
  Labels labels;
  std::string want;
};

TEST(WorkloadNameTest, OwnerAsIstioDerivesIt) {
  const OwnerReference rs{"ReplicaSet", "web-5d4f8b7c9", true};
  const std::vector<OwnerCase> cases = {
      {"no generateName: the pod's own name",
       "web-0",
       "",
       {rs},
       {{"pod-template-hash", "5d4f8b7c9"}},
       "web-0"},
      {"Deployment: the ReplicaSet without its hash",
       "web-5d4f8b7c9-x2x7q",
       "web-5d4f8b7c9-",
       {rs},
       {{"pod-template-hash", "5d4f8b7c9"}},
       "web"},
      {"ReplicaSet without the hash label: the ReplicaSet",
       "web-5d4f8b7c9-x2x7q",
       "web-5d4f8b7c9-",
       {rs},
       {},
       "web-5d4f8b7c9"},
      {"hash label that is not the ReplicaSet's suffix",
       "web-5d4f8b7c9-x2x7q",
       "web-5d4f8b7c9-",
       {rs},
       {{"pod-template-hash", "abc"}},
       "web-5d4f8b7c9"},
      {"Argo Rollout",
       "shop-7c9d-abcde",
       "shop-7c9d-",
       {{"ReplicaSet", "shop-7c9d", true}},
       {{"rollouts-pod-template-hash", "7c9d"}},
       "shop"},
      {"StatefulSet: itself", "db-", "db-", {{"StatefulSet", "db", true}}, {}, "db"},
      {"DaemonSet: itself", "agent-x1y2z", "agent-", {{"DaemonSet", "agent", true}}, {}, "agent"},
      {"Job of a CronJob (8 digits)",
       "report-28391040-abcde",
       "report-28391040-",
       {{"Job", "report-28391040", true}},
       {},
       "report"},
      {"Job of a CronJob (10 digits)",
       "r-1234567890-abcde",
       "r-1234567890-",
       {{"Job", "r-1234567890", true}},
       {},
       "r"},
      {"Job with 7 digits: itself",
       "batch-1234567-abcde",
       "batch-1234567-",
       {{"Job", "batch-1234567", true}},
       {},
       "batch-1234567"},
      {"Job with 11 digits: itself",
       "b-12345678901-x",
       "b-12345678901-",
       {{"Job", "b-12345678901", true}},
       {},
       "b-12345678901"},
      {"Job named only digits: itself",
       "12345678-x",
       "12345678-",
       {{"Job", "12345678", true}},
       {},
       "12345678"},
      {"DeploymentConfig",
       "legacy-1-abcde",
       "legacy-1-",
       {{"ReplicationController", "legacy-1", true}},
       {{"deploymentconfig", "legacy"}},
       "legacy"},
      {"ReplicationController alone: itself",
       "rc-abcde",
       "rc-",
       {{"ReplicationController", "rc", true}},
       {},
       "rc"},
      {"no controller among the owners: the pod",
       "web-abcde",
       "web-",
       {{"ReplicaSet", "web-5d4f8b7c9", false}},
       {{"pod-template-hash", "5d4f8b7c9"}},
       "web-abcde"},
      {"the first controller counts",
       "x-abcde",
       "x-",
       {{"ConfigMap", "cm", false}, {"StatefulSet", "first", true}, {"DaemonSet", "second", true}},
       {},
       "first"},
      {"no owners: the pod", "solo-abcde", "solo-", {}, {}, "solo-abcde"},
  };
  for (const OwnerCase& c : cases) {
    EXPECT_EQ(WorkloadName(c.pod, c.generate_name, c.owners, c.labels), c.want) << c.what;
  }
}

TEST(CanonicalTest, ServiceFromLabelsInIstiosOrderElseTheWorkload) {
  EXPECT_EQ(
      CanonicalService(
          {{"service.istio.io/canonical-name", "a"}, {"app.kubernetes.io/name", "b"}, {"app", "c"}},
          "w"),
      "a");
  EXPECT_EQ(CanonicalService({{"app.kubernetes.io/name", "b"}, {"app", "c"}}, "w"), "b");
  EXPECT_EQ(CanonicalService({{"app", "c"}}, "w"), "c");
  EXPECT_EQ(CanonicalService({{"version", "v1"}}, "w"), "w");
}

TEST(CanonicalTest, RevisionFromLabelsInIstiosOrderElseLatest) {
  EXPECT_EQ(CanonicalRevision({{"service.istio.io/canonical-revision", "r1"},
                               {"app.kubernetes.io/version", "r2"},
                               {"version", "r3"}}),
            "r1");
  EXPECT_EQ(CanonicalRevision({{"app.kubernetes.io/version", "r2"}, {"version", "r3"}}), "r2");
  EXPECT_EQ(CanonicalRevision({{"version", "r3"}}), "r3");
  EXPECT_EQ(CanonicalRevision({{"app", "x"}}), "latest");
}

}  // namespace
}  // namespace ambit::state
