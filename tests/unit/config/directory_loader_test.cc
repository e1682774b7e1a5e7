#include "agent/config/directory_loader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "agent/common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/common/temp_dir.h"

namespace ambit::config {
namespace {

using ::ambit::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

std::string Pod(const std::string& name, const std::string& ip, const std::string& ns = "default") {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: " + ns +
         "\nstatus:\n  podIP: \"" + ip + "\"\n";
}

std::vector<std::string> PodKeys(const LoadResult& r) {
  std::vector<std::string> out;
  for (const auto& [key, pod] : r.state.pods) out.push_back(key);
  return out;
}

std::vector<ConfigError> Errors(const LoadResult& r) {
  std::vector<ConfigError> out;
  for (const ConfigError& e : r.errors) {
    if (!e.warning) out.push_back(e);
  }
  return out;
}

std::string Describe(const LoadResult& r) {
  std::string out;
  for (const ConfigError& e : r.errors) out += e.ToString() + "\n";
  return out;
}

TEST(DirectoryLoaderTest, ConfigFileNames) {
  EXPECT_TRUE(IsConfigFileName("pods.yaml"));
  EXPECT_TRUE(IsConfigFileName("10-pods.yml"));
  EXPECT_FALSE(IsConfigFileName(".pods.yaml"));
  EXPECT_FALSE(IsConfigFileName(".#pods.yaml"));
  EXPECT_FALSE(IsConfigFileName("pods.yaml~"));
  EXPECT_FALSE(IsConfigFileName(".pods.yaml.swp"));
  EXPECT_FALSE(IsConfigFileName("pods.yaml.swp"));
  EXPECT_FALSE(IsConfigFileName("pods.json"));
  EXPECT_FALSE(IsConfigFileName("..data"));
  EXPECT_FALSE(IsConfigFileName(""));
}

TEST(DirectoryLoaderTest, ReadsConfigFilesAndSkipsTheRest) {
  TempDir dir;
  dir.Write("b.yaml", Pod("b", "198.18.0.2"));
  dir.Write("a.yml", Pod("a", "198.18.0.1"));
  dir.Write(".#a.yml", Pod("lock", "198.18.0.3"));
  dir.Write("a.yml~", Pod("backup", "198.18.0.4"));
  dir.Write(".a.yml.swp", "binary junk: [");
  dir.Write("notes.txt", "not yaml: [");
  ASSERT_EQ(::mkdir(dir.PathOf("sub.yaml").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("missing", dir.PathOf("dangling.yaml").c_str()), 0);

  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_FALSE(r.HasErrors());
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a", "default/b"));
  EXPECT_EQ(r.state.pods.at("default/a").source_file, "a.yml");
  EXPECT_EQ(r.state.mesh, state::MeshConfig());
}

TEST(DirectoryLoaderTest, ExternalObjectsMergeAfterTheFiles) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("a", "198.18.0.1"));
  DirectoryLoader loader(dir.path());
  auto pod = [](const std::string& name, const std::string& ip) {
    state::Pod p;
    p.name = name;
    p.ips = {*IpAddress::Parse(ip)};
    p.source_file = "apiserver";
    p.creation_time = absl::FromUnixSeconds(1);  // older than anything a file holds
    return p;
  };
  ExternalObjects extra;
  extra.name = "apiserver";
  extra.objects.emplace("Pod default/a", pod("a", "198.18.0.9"));  // also in pods.yaml
  extra.objects.emplace("Pod default/b", pod("b", "198.18.0.2"));
  extra.errors.push_back({"apiserver", "AuthorizationPolicy x/y", "spec.action", "bad"});
  LoadResult r = loader.Load(&extra);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a", "default/b"));
  EXPECT_EQ(r.state.pods.at("default/a").source_file, "pods.yaml");  // the file's wins
  EXPECT_EQ(r.state.pods.at("default/b").source_file, "apiserver");
  std::string errors = Describe(r);
  EXPECT_THAT(errors, HasSubstr("apiserver: AuthorizationPolicy x/y: field spec.action: bad"));
  EXPECT_THAT(errors, HasSubstr("apiserver: Pod default/a: is also defined in pods.yaml"));
  // Address conflicts are settled over both sources together.
  ExternalObjects clash;
  clash.name = "apiserver";
  clash.objects.emplace("Pod default/c", pod("c", "198.18.0.1"));
  r = loader.Load(&clash);
  EXPECT_TRUE(r.state.ip_conflicts.count("default/a")) << Describe(r);
}

TEST(DirectoryLoaderTest, FollowsSymlinksLikeAConfigMapMount) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.PathOf("..2024_01_01").c_str(), 0755), 0);
  dir.Write("..2024_01_01/pods.yaml", Pod("web", "198.18.0.1"));
  ASSERT_EQ(::symlink("..2024_01_01", dir.PathOf("..data").c_str()), 0);
  ASSERT_EQ(::symlink("..data/pods.yaml", dir.PathOf("pods.yaml").c_str()), 0);
  LoadResult r = DirectoryLoader(dir.path()).Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/web"));
}

TEST(DirectoryLoaderTest, BadObjectIsReportedAndTheRestApplies) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1") + "---\n" + Pod("db", "x"));
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1)) << Describe(r);
  EXPECT_TRUE(r.HasErrors());
  EXPECT_EQ(r.errors[0].file, "pods.yaml");
  EXPECT_EQ(r.errors[0].object, "Pod default/db");
  EXPECT_EQ(r.errors[0].field, "status.podIP");
  EXPECT_THAT(PodKeys(r), ElementsAre("default/web"));
}

TEST(DirectoryLoaderTest, UnparseableFileKeepsItsLastGoodPods) {
  TempDir dir;
  dir.Write("a.yaml", Pod("a", "198.18.0.1") + "---\n" + Pod("a2", "198.18.0.2"));
  dir.Write("b.yaml", Pod("b", "198.18.0.3"));
  DirectoryLoader loader(dir.path());
  ASSERT_THAT(PodKeys(loader.Load()), ElementsAre("default/a", "default/a2", "default/b"));

  dir.Write("a.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
  dir.Write("b.yaml", Pod("b", "198.18.0.4"));
  LoadResult r = loader.Load();
  ASSERT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_EQ(r.errors[0].file, "a.yaml");
  EXPECT_THAT(r.errors[0].message, HasSubstr("not valid YAML"));
  EXPECT_THAT(Describe(r), HasSubstr("last good objects stay in force"));
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a", "default/a2", "default/b"));
  EXPECT_EQ(r.state.pods.at("default/b").ips[0].ToString(), "198.18.0.4");  // b still updates

  // Still broken on the next load: still the last good version.
  EXPECT_THAT(PodKeys(loader.Load()), ElementsAre("default/a", "default/a2", "default/b"));

  // Fixed: the new content applies.
  dir.Write("a.yaml", Pod("a3", "198.18.0.5"));
  r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a3", "default/b"));
}

TEST(DirectoryLoaderTest, FirstLoadOfAnUnparseableFileHasNothingToKeep) {
  TempDir dir;
  dir.Write("a.yaml", "key: [unclosed\n");
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1)) << Describe(r);
  EXPECT_GT(r.errors[0].line, 0);
  EXPECT_THAT(r.state.pods, IsEmpty());
}

TEST(DirectoryLoaderTest, ObjectThatBecomesInvalidKeepsItsLastGoodVersion) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1") + "---\n" + Pod("db", "198.18.0.2"));
  DirectoryLoader loader(dir.path());
  ASSERT_THAT(PodKeys(loader.Load()), ElementsAre("default/db", "default/web"));

  dir.Write("pods.yaml", Pod("web", "not-an-ip") + "---\n" + Pod("db", "198.18.0.3"));
  LoadResult r = loader.Load();
  ASSERT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_EQ(r.errors[0].object, "Pod default/web");
  EXPECT_EQ(r.errors[0].field, "status.podIP");
  EXPECT_THAT(Describe(r), HasSubstr("Pod default/web: is invalid; its last good version"));
  EXPECT_THAT(PodKeys(r), ElementsAre("default/db", "default/web"));
  EXPECT_EQ(r.state.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
  EXPECT_EQ(r.state.pods.at("default/db").ips[0].ToString(), "198.18.0.3");

  // Removed from the file while invalid: gone.
  dir.Write("pods.yaml", Pod("db", "198.18.0.3"));
  EXPECT_THAT(PodKeys(loader.Load()), ElementsAre("default/db"));
}

TEST(DirectoryLoaderTest, NewInvalidObjectIsDropped) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1"));
  DirectoryLoader loader(dir.path());
  loader.Load();
  dir.Write("pods.yaml", Pod("web", "198.18.0.1") + "---\n" + Pod("new", "bad"));
  LoadResult r = loader.Load();
  EXPECT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/web"));
}

TEST(DirectoryLoaderTest, DeletedFileRemovesItsObjects) {
  TempDir dir;
  dir.Write("a.yaml", Pod("a", "198.18.0.1"));
  dir.Write("b.yaml", Pod("b", "198.18.0.2"));
  DirectoryLoader loader(dir.path());
  ASSERT_THAT(PodKeys(loader.Load()), ElementsAre("default/a", "default/b"));
  dir.Remove("a.yaml");
  LoadResult r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/b"));

  // A deleted file's memory is gone too: broken content under the same name keeps nothing.
  dir.Write("a.yaml", "{{{");
  EXPECT_THAT(PodKeys(loader.Load()), ElementsAre("default/b"));
}

TEST(DirectoryLoaderTest, DuplicateObjectsFirstFileWins) {
  TempDir dir;
  dir.Write("20-more.yaml", Pod("web", "198.18.0.2") + "---\n" + Pod("other", "198.18.0.3"));
  dir.Write("10-pods.yaml", Pod("web", "198.18.0.1"));
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1)) << Describe(r);
  EXPECT_EQ(r.errors[0].file, "20-more.yaml");
  EXPECT_EQ(r.errors[0].object, "Pod default/web");
  EXPECT_FALSE(r.errors[0].warning);
  EXPECT_EQ(r.errors[0].ToString(),
            "20-more.yaml: Pod default/web: is also defined in 10-pods.yaml; the one in "
            "10-pods.yaml is used");
  EXPECT_THAT(PodKeys(r), ElementsAre("default/other", "default/web"));
  EXPECT_EQ(r.state.pods.at("default/web").source_file, "10-pods.yaml");
  EXPECT_EQ(r.state.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
}

TEST(DirectoryLoaderTest, DuplicateWithinOneFileFirstWins) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1") + "---\n" + Pod("web", "198.18.0.2"));
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1)) << Describe(r);
  EXPECT_THAT(r.errors[0].message, HasSubstr("defined twice in this file"));
  EXPECT_EQ(r.state.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
}

TEST(DirectoryLoaderTest, SameNameInOtherNamespaceOrKindIsNoDuplicate) {
  TempDir dir;
  dir.Write("a.yaml", Pod("web", "198.18.0.1") + "---\n" + Pod("web", "198.18.0.2", "prod") +
                          "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n" +
                          "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n");
  LoadResult r = DirectoryLoader(dir.path()).Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/web", "prod/web"));
  EXPECT_THAT(r.state.services, SizeIs(1));
  EXPECT_THAT(r.state.namespaces, SizeIs(1));
}

TEST(DirectoryLoaderTest, MeshYamlDefaultsAndOverrides) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1"));
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  EXPECT_EQ(r.state.mesh.trust_domain, "cluster.local");
  EXPECT_EQ(r.state.mesh.root_namespace, "istio-system");

  dir.Write("mesh.yaml", "trustDomain: example.org\nextensionProviders: []\n");
  r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_EQ(r.state.mesh.trust_domain, "example.org");
  EXPECT_EQ(r.state.mesh.root_namespace, "istio-system");

  // An invalid mesh keeps the last good one.
  dir.Write("mesh.yaml", "trustDomain: \"not valid\"\n");
  r = loader.Load();
  EXPECT_TRUE(r.HasErrors());
  EXPECT_EQ(r.state.mesh.trust_domain, "example.org");

  // Deleted: back to the defaults.
  dir.Remove("mesh.yaml");
  r = loader.Load();
  EXPECT_THAT(r.errors, IsEmpty()) << Describe(r);
  EXPECT_EQ(r.state.mesh, state::MeshConfig());
}

TEST(DirectoryLoaderTest, MeshInTwoPlacesIsADuplicate) {
  TempDir dir;
  dir.Write("mesh.yaml", "trustDomain: first.example\n");
  dir.Write("zz-istio.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n"
            "data:\n  mesh: 'trustDomain: second.example'\n");
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1)) << Describe(r);
  EXPECT_EQ(r.errors[0].file, "zz-istio.yaml");
  EXPECT_THAT(r.errors[0].message, HasSubstr("mesh.yaml"));
  EXPECT_EQ(r.state.mesh.trust_domain, "first.example");
}

TEST(DirectoryLoaderTest, UnknownKindsAreWarningsOnly) {
  TempDir dir;
  dir.Write("policy.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: default, namespace: istio-system}\nspec: {host: '*.local'}\n");
  LoadResult r = DirectoryLoader(dir.path()).Load();
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_TRUE(r.errors[0].warning);
  EXPECT_FALSE(r.HasErrors());
}

TEST(DirectoryLoaderTest, MissingDirectoryIsAnErrorNotACrash) {
  TempDir dir;
  LoadResult r = DirectoryLoader(dir.PathOf("nope")).Load();
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_EQ(r.errors[0].file, dir.PathOf("nope"));
  EXPECT_THAT(r.errors[0].message, HasSubstr("cannot read the config directory"));
  EXPECT_THAT(r.state.pods, IsEmpty());

  dir.Write("not-a-dir", "x");
  r = DirectoryLoader(dir.PathOf("not-a-dir")).Load();
  EXPECT_TRUE(r.HasErrors());
}

TEST(DirectoryLoaderTest, DirectoryThatDisappearsKeepsTheLastConfiguration) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.PathOf("conf").c_str(), 0755), 0);
  dir.Write("conf/pods.yaml", Pod("web", "198.18.0.1"));
  DirectoryLoader loader(dir.PathOf("conf"));
  ASSERT_THAT(PodKeys(loader.Load()), ElementsAre("default/web"));
  dir.Remove("conf/pods.yaml");
  ASSERT_EQ(::rmdir(dir.PathOf("conf").c_str()), 0);
  LoadResult r = loader.Load();
  ASSERT_THAT(r.errors, SizeIs(1));
  EXPECT_THAT(r.errors[0].message, HasSubstr("stays in force"));
  EXPECT_THAT(PodKeys(r), ElementsAre("default/web"));
}

TEST(DirectoryLoaderTest, UnchangedFilesKeepTheirObjectsAndErrorsAcrossLoads) {
  TempDir dir;
  dir.Write("10-pods.yaml", Pod("web", "198.18.0.1"));
  dir.Write("20-more.yaml", Pod("web", "198.18.0.2") + "---\n" + Pod("bad", "not-an-ip"));
  DirectoryLoader loader(dir.path());
  LoadResult first = loader.Load();
  ASSERT_THAT(Errors(first), SizeIs(2)) << Describe(first);
  // Only 30-new.yaml is new: the others' objects and errors come back exactly once each.
  dir.Write("30-new.yaml", Pod("api", "198.18.0.3"));
  LoadResult second = loader.Load();
  EXPECT_EQ(Describe(second), Describe(first)) << Describe(second);
  EXPECT_THAT(PodKeys(second), ElementsAre("default/api", "default/web"));
  EXPECT_EQ(second.state.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
}

TEST(DirectoryLoaderTest, FileRewrittenInPlaceWithTheSameSizeIsReadAgain) {
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1"));
  DirectoryLoader loader(dir.path());
  ASSERT_EQ(loader.Load().state.pods.at("default/web").ips[0].ToString(), "198.18.0.1");
  dir.Write("pods.yaml", Pod("web", "198.18.0.9"));
  EXPECT_EQ(loader.Load().state.pods.at("default/web").ips[0].ToString(), "198.18.0.9");
  dir.WriteAtomically("pods.yaml", Pod("web", "198.18.0.7"));
  EXPECT_EQ(loader.Load().state.pods.at("default/web").ips[0].ToString(), "198.18.0.7");
}

TEST(DirectoryLoaderTest, ResultStampsTellChangedLoadsApartWithoutACopy) {
  // Sources hand their owner only a load whose stamp differs from the last one delivered, so
  // equal stamps must mean equal results and every real change must change the stamp.
  TempDir dir;
  dir.Write("pods.yaml", Pod("web", "198.18.0.1"));
  DirectoryLoader loader(dir.path());
  LoadResult first = loader.Load();
  const auto stamp = loader.StampOf(first);
  LoadResult again = loader.Load();
  EXPECT_EQ(loader.StampOf(again), stamp);
  EXPECT_EQ(again, first);
  // Rewritten with the same objects (a new inode, read again): same objects, same stamp.
  dir.WriteAtomically("pods.yaml", Pod("web", "198.18.0.1"));
  EXPECT_EQ(loader.StampOf(loader.Load()), stamp);
  // Each kind of change moves it: an object changed, a file added, a file removed, an error.
  dir.Write("pods.yaml", Pod("web", "198.18.0.2"));
  const auto changed = loader.StampOf(loader.Load());
  EXPECT_NE(changed, stamp);
  dir.Write("more.yaml", Pod("api", "198.18.0.3"));
  const auto added = loader.StampOf(loader.Load());
  EXPECT_NE(added, changed);
  dir.Remove("more.yaml");
  const auto removed = loader.StampOf(loader.Load());
  EXPECT_NE(removed, added);
  dir.Write("bad.yaml", Pod("bad", "not-an-ip"));
  EXPECT_NE(loader.StampOf(loader.Load()), removed);
  // Objects from outside the directory count too.
  ExternalObjects extra;
  extra.name = "apiserver";
  state::Pod p;
  p.name = "ext";
  p.ips = {*IpAddress::Parse("198.18.0.4")};
  extra.objects.emplace("Pod default/ext", p);
  ExternalObjects same = extra;
  const auto with_extra = loader.StampOf(loader.Load(&extra));
  EXPECT_EQ(loader.StampOf(loader.Load(&same)), with_extra);
  EXPECT_NE(loader.StampOf(loader.Load()), with_extra);
}

TEST(DirectoryLoaderTest, PodsKeepOnlyTheAnnotationsAmbitReads) {
  TempDir dir;
  dir.Write("pods.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n"
            "    ambit.dev/netns: /var/run/netns/web\n"
            "    ambit.dev/allow-waypoint-bypass: \"true\"\n"
            "    kubectl.kubernetes.io/restartedAt: \"2026-12-07T10:00:00Z\"\n"
            "    prometheus.io/scrape: \"true\"\nstatus:\n  podIP: 198.18.0.1\n");
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  const state::Pod& pod = r.state.pods.at("default/web");
  EXPECT_EQ(pod.netns_path, "/var/run/netns/web");
  EXPECT_THAT(pod.annotations, ElementsAre(std::pair<const std::string, std::string>(
                                   "ambit.dev/allow-waypoint-bypass", "true")));
}

TEST(DirectoryLoaderTest, TotalSizeCapSkipsLaterFilesAndKeepsTheirLastGoodObjects) {
  TempDir dir;
  const std::string a = Pod("a", "198.18.0.1"), b = Pod("b", "198.18.0.2");
  dir.Write("10-a.yaml", a);
  dir.Write("20-b.yaml", b);
  DirectoryLoader loader(dir.path(), &RealClock::Get(), a.size() + b.size() + 10);
  LoadResult r = loader.Load();
  ASSERT_THAT(Errors(r), IsEmpty()) << Describe(r);
  // 20-b.yaml grows past the total: it is not read, and its last good pod stays.
  dir.Write("20-b.yaml", b + "---\n" + Pod("c", "198.18.0.3"));
  r = loader.Load();
  ASSERT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_EQ(r.errors[0].file, "20-b.yaml");
  EXPECT_THAT(r.errors[0].message, HasSubstr("may hold at most"));
  EXPECT_THAT(r.errors[0].message, HasSubstr("its last good objects stay in force"));
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a", "default/b"));
  // A new file past the total brings nothing.
  TempDir fresh;
  fresh.Write("10-a.yaml", a);
  fresh.Write("20-b.yaml", b);
  r = DirectoryLoader(fresh.path(), &RealClock::Get(), a.size() + 1).Load();
  ASSERT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_THAT(PodKeys(r), ElementsAre("default/a"));
}

std::string PodCreatedAt(const std::string& name, const std::string& ip, const std::string& ip6,
                         const std::string& created) {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  creationTimestamp: \"" +
         created + "\"\nstatus:\n  podIPs:\n  - ip: \"" + ip + "\"\n  - ip: \"" + ip6 + "\"\n";
}

// A second pod with another pod's address used to take it over silently (connections to it then
// expected the newcomer's identity). The pod seen first keeps it, whatever the names.
TEST(DirectoryLoaderTest, DuplicatePodIpStaysWithThePodSeenFirst) {
  TempDir dir;
  FakeClock clock;
  DirectoryLoader loader(dir.path(), &clock);
  dir.Write("pods.yaml", Pod("web", "198.18.0.5"));
  LoadResult first = loader.Load();
  ASSERT_THAT(Errors(first), IsEmpty()) << Describe(first);

  clock.Advance(absl::Seconds(3));
  // Sorts first by file and by name: neither may decide.
  dir.Write("00-late.yaml", Pod("aaa-late", "198.18.0.5"));
  LoadResult r = loader.Load();
  const std::vector<ConfigError> errors = Errors(r);
  ASSERT_THAT(errors, SizeIs(1)) << Describe(r);
  const ConfigError& e = errors[0];
  EXPECT_EQ(e.file, "00-late.yaml");
  EXPECT_EQ(e.object, "Pod default/aaa-late");
  EXPECT_EQ(e.field, "status.podIPs");
  EXPECT_THAT(e.message, HasSubstr("198.18.0.5"));
  EXPECT_THAT(e.message, HasSubstr("Pod default/web (pods.yaml)"));
  EXPECT_THAT(e.message, HasSubstr("first seen by this agent"));
  EXPECT_THAT(PodKeys(r), ElementsAre("default/aaa-late", "default/web"));  // still listed
  ASSERT_TRUE(r.state.HasIpConflict("default/aaa-late"));
  EXPECT_EQ(r.state.ip_conflicts.at("default/aaa-late").holder, "default/web");
  EXPECT_EQ(r.state.ip_conflicts.at("default/aaa-late").Summary(),
            "IP 198.18.0.5 held by default/web");
  EXPECT_EQ(r.state.FindPodByIp(IpAddress::Parse("198.18.0.5").value())->name, "web");

  // Reloads keep the decision; removing the holder hands the address over.
  clock.Advance(absl::Seconds(3));
  EXPECT_EQ(loader.Load(), r);
  dir.Remove("pods.yaml");
  LoadResult after = loader.Load();
  EXPECT_THAT(Errors(after), IsEmpty()) << Describe(after);
  EXPECT_EQ(after.state.FindPodByIp(IpAddress::Parse("198.18.0.5").value())->name, "aaa-late");
}

TEST(DirectoryLoaderTest, DuplicatePodIpGoesToTheEarlierCreationTimestamp) {
  TempDir dir;
  FakeClock clock(absl::FromUnixSeconds(1800000000));
  DirectoryLoader loader(dir.path(), &clock);
  dir.Write("a.yaml", PodCreatedAt("new", "198.18.0.5", "2001:2::1", "2027-01-01T00:00:00Z"));
  dir.Write("b.yaml", PodCreatedAt("old", "198.18.0.5", "2001:2::2", "2026-01-01T00:00:00Z"));
  LoadResult r = loader.Load();
  ASSERT_THAT(Errors(r), SizeIs(1)) << Describe(r);
  EXPECT_EQ(Errors(r)[0].file, "a.yaml");
  EXPECT_EQ(Errors(r)[0].object, "Pod default/new");
  EXPECT_THAT(Errors(r)[0].message, HasSubstr("Pod default/old (b.yaml)"));
  EXPECT_THAT(Errors(r)[0].message, HasSubstr("created 2026-01-01T00:00:00.000Z"));
  // The loser gets none of its addresses, not even the one nobody else claims.
  EXPECT_EQ(r.state.FindPodByIp(IpAddress::Parse("2001:2::1").value()), nullptr);
  EXPECT_EQ(r.state.FindPodByIp(IpAddress::Parse("198.18.0.5").value())->name, "old");
  EXPECT_EQ(r.state.FindPodByIp(IpAddress::Parse("2001:2::2").value())->name, "old");
}

}  // namespace
}  // namespace ambit::config

namespace ambit::config {
namespace {

// A use-waypoint label that cannot be served as written is a warning with the object and label;
// the Gateway and labels themselves still load.
TEST(DirectoryLoaderWaypointTest, UnresolvableWaypointLabelsAreWarnings) {
  TempDir dir;
  dir.Write("a.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {istio.io/use-waypoint: typo}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: prod}
spec: {gatewayClassName: istio-waypoint}
)");
  DirectoryLoader loader(dir.path());
  LoadResult r = loader.Load();
  ASSERT_THAT(r.state.gateways, SizeIs(1));
  std::vector<std::string> warnings;
  for (const ConfigError& e : r.errors) {
    EXPECT_TRUE(e.warning) << e.ToString();
    warnings.push_back(e.ToString());
  }
  EXPECT_THAT(
      warnings,
      ElementsAre(HasSubstr("a.yaml: warning: Pod prod/api: field "
                            "metadata.labels[istio.io/use-waypoint]: Gateway prod/typo is "
                            "not defined"),
                  HasSubstr("a.yaml: warning: Gateway prod/waypoint: no pod of namespace prod")));
}

}  // namespace
}  // namespace ambit::config
