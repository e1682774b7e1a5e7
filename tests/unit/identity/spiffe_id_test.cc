#include "agent/identity/spiffe_id.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::identity {
namespace {

// Rows follow SPIFFE-ID.md section 2 (scheme, trust domain, path) and 2.3 (lengths).
struct ValidCase {
  std::string id;
  std::string trust_domain;
  std::string path;
};

std::vector<ValidCase> ValidCases() {
  return {
      {"spiffe://example.org", "example.org", ""},
      {"spiffe://example.org/foo", "example.org", "/foo"},
      {"spiffe://example.org/foo/bar", "example.org", "/foo/bar"},
      {"spiffe://cluster.local/ns/default/sa/web", "cluster.local", "/ns/default/sa/web"},
      {"spiffe://staging.example.com/payments/web-fe", "staging.example.com", "/payments/web-fe"},
      {"spiffe://k8s-west.example.com/ns/staging/sa/default", "k8s-west.example.com",
       "/ns/staging/sa/default"},
      {"spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453", "example.com",
       "/9eebccd2-12bf-40a6-b262-65fe0487d453"},
      // Every allowed trust domain character; dotted-quad IPv4 is not excluded by the spec.
      {"spiffe://abcdefghijklmnopqrstuvwxyz0123456789.-_",
       "abcdefghijklmnopqrstuvwxyz0123456789.-_", ""},
      {"spiffe://trust_domain_name.example.com", "trust_domain_name.example.com", ""},
      {"spiffe://198.19.1.1/svc", "198.19.1.1", "/svc"},
      // Paths are case-sensitive and allow upper case; only "." and ".." are relative segments.
      {"spiffe://example.org/ABCxyz/0123456789/.-_", "example.org", "/ABCxyz/0123456789/.-_"},
      {"spiffe://example.org/.../.a/a./..b", "example.org", "/.../.a/a./..b"},
      {"spiffe://a/b", "a", "/b"},
  };
}

TEST(ParseSpiffeIdTest, AcceptsValidIds) {
  for (const ValidCase& c : ValidCases()) {
    SCOPED_TRACE(c.id);
    auto id = ParseSpiffeId(c.id);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(id->trust_domain, c.trust_domain);
    EXPECT_EQ(id->path, c.path);
    EXPECT_EQ(id->ToString(), c.id);
  }
}

TEST(ParseSpiffeIdTest, AcceptsMaximumLengths) {
  std::string td(kMaxTrustDomainLength, 'a');
  auto id = ParseSpiffeId("spiffe://" + td);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->trust_domain, td);

  std::string prefix = "spiffe://example.org/";
  std::string longest = prefix + std::string(kMaxSpiffeIdLength - prefix.size(), 'p');
  ASSERT_EQ(longest.size(), 2048u);
  auto long_id = ParseSpiffeId(longest);
  ASSERT_TRUE(long_id.ok()) << long_id.status();
  EXPECT_EQ(long_id->ToString(), longest);
}

struct InvalidCase {
  std::string id;
  std::string reason;
};

const char kForm[] = "a SPIFFE ID has the form spiffe://<trust-domain>[/<path>]";
const char kTdChars[] = ": only lowercase letters, digits, '.', '-' and '_' are allowed";
const char kPathChars[] = ": only letters, digits, '.', '-' and '_' are allowed";

std::vector<InvalidCase> InvalidCases() {
  using std::string;
  return {
      {"", string("SPIFFE ID is empty: ") + kForm},
      // Scheme.
      {"SPIFFE://example.org", "scheme 'SPIFFE' must be written in lowercase: 'spiffe'"},
      {"Spiffe://example.org/foo", "scheme 'Spiffe' must be written in lowercase: 'spiffe'"},
      {"https://example.org/foo", "scheme must be 'spiffe', not 'https'"},
      {"spiffe+tls://example.org", "scheme must be 'spiffe', not 'spiffe+tls'"},
      {"example.org/foo", "missing scheme: a SPIFFE ID starts with 'spiffe://'"},
      {"//example.org/foo", "missing scheme: a SPIFFE ID starts with 'spiffe://'"},
      {"://example.org", "missing scheme: a SPIFFE ID starts with 'spiffe://'"},
      {"1spiffe://example.org", "missing scheme: a SPIFFE ID starts with 'spiffe://'"},
      {"spiffe:example.org", string("missing '//' after 'spiffe:': ") + kForm},
      {"spiffe:/example.org/foo", string("missing '//' after 'spiffe:': ") + kForm},
      // Trust domain.
      {"spiffe://", string("trust domain is empty: ") + kForm},
      {"spiffe:///foo", string("trust domain is empty: ") + kForm},
      {"spiffe://Example.org",
       string("trust domain contains invalid character 'E' at position 9") + kTdChars},
      {"spiffe://example.Org/foo",
       string("trust domain contains invalid character 'O' at position 17") + kTdChars},
      {"spiffe://exa mple.org",
       string("trust domain contains invalid character ' ' at position 12") + kTdChars},
      {"spiffe://example!.org",
       string("trust domain contains invalid character '!' at position 16") + kTdChars},
      {"spiffe://ex\tample.org",
       string("trust domain contains invalid character '\\x09' at position 11") + kTdChars},
      {"spiffe://ex\xc3\xa4mple.org",
       string("trust domain contains invalid character '\\xC3' at position 11") + kTdChars},
      {"spiffe://example.org:8080/foo",
       "trust domain must not contain a port (':' at position 20)"},
      {"spiffe://example.org:", "trust domain must not contain a port (':' at position 20)"},
      {"spiffe://user@example.org/foo",
       "trust domain must not contain user info ('@' at position 13)"},
      {"spiffe://user:pass@example.org",
       "trust domain must not contain user info ('@' at position 18)"},
      {"spiffe://[::1]/foo",
       "trust domain must not be an IPv6 address literal ('[' at position 9)"},
      {"spiffe://exa%41mple.org",
       "trust domain must not contain percent-encoded characters ('%' at position 12)"},
      {"spiffe://" + string(256, 'a'), "trust domain is 256 bytes long; at most 255 are allowed"},
      // Query and fragment.
      {"spiffe://example.org/foo?x=1", "SPIFFE ID must not have a query ('?' at position 24)"},
      {"spiffe://example.org?x=1", "SPIFFE ID must not have a query ('?' at position 20)"},
      {"spiffe://example.org/foo#frag", "SPIFFE ID must not have a fragment ('#' at position 24)"},
      {"spiffe://example.org#", "SPIFFE ID must not have a fragment ('#' at position 20)"},
      {"spiffe://example.org/a#b?c", "SPIFFE ID must not have a fragment ('#' at position 22)"},
      // Path.
      {"spiffe://example.org/foo%20bar",
       "path must not contain percent-encoded characters ('%' at position 24)"},
      {"spiffe://example.org/%2e%2e",
       "path must not contain percent-encoded characters ('%' at position 21)"},
      {"spiffe://example.org//foo", "path contains an empty segment ('//' at position 20)"},
      {"spiffe://example.org/foo//bar", "path contains an empty segment ('//' at position 24)"},
      {"spiffe://example.org/", "path must not end with '/' (position 20)"},
      {"spiffe://example.org/foo/", "path must not end with '/' (position 24)"},
      {"spiffe://example.org/foo//", "path contains an empty segment ('//' at position 24)"},
      {"spiffe://example.org/.",
       "path contains a relative segment '.' at position 21: '.' and '..' are not allowed"},
      {"spiffe://example.org/./foo",
       "path contains a relative segment '.' at position 21: '.' and '..' are not allowed"},
      {"spiffe://example.org/foo/..",
       "path contains a relative segment '..' at position 25: '.' and '..' are not allowed"},
      {"spiffe://example.org/foo/../bar",
       "path contains a relative segment '..' at position 25: '.' and '..' are not allowed"},
      {"spiffe://example.org/foo bar",
       string("path contains invalid character ' ' at position 24") + kPathChars},
      {"spiffe://example.org/foo$bar",
       string("path contains invalid character '$' at position 24") + kPathChars},
      {"spiffe://example.org/a:b",
       string("path contains invalid character ':' at position 22") + kPathChars},
      {"spiffe://example.org/a@b",
       string("path contains invalid character '@' at position 22") + kPathChars},
      {"spiffe://example.org/a+b",
       string("path contains invalid character '+' at position 22") + kPathChars},
      {"spiffe://example.org/caf\xc3\xa9",
       string("path contains invalid character '\\xC3' at position 24") + kPathChars},
      {"spiffe://example.org/a\\b",
       string("path contains invalid character '\\' at position 22") + kPathChars},
      // Total length (section 2.3).
      {"spiffe://example.org/" + string(2028, 'a'),
       "SPIFFE ID is 2049 bytes long; at most 2048 are allowed"},
  };
}

TEST(ParseSpiffeIdTest, RejectsInvalidIdsWithReason) {
  for (const InvalidCase& c : InvalidCases()) {
    SCOPED_TRACE(c.id.size() > 80 ? c.id.substr(0, 80) + "..." : c.id);
    auto id = ParseSpiffeId(c.id);
    ASSERT_FALSE(id.ok()) << id->ToString();
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(id.status().message(), c.reason);
  }
}

TEST(ParseSpiffeIdTest, ReportsEmbeddedNulByte) {
  std::string text("spiffe://example.org/a\0b", 24);
  auto id = ParseSpiffeId(text);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().message(),
            std::string("path contains invalid character '\\x00' at position 22") + kPathChars);
}

TEST(ValidateTrustDomainTest, AppliesTrustDomainRules) {
  EXPECT_TRUE(ValidateTrustDomain("cluster.local").ok());
  EXPECT_TRUE(ValidateTrustDomain(kDefaultTrustDomain).ok());
  EXPECT_EQ(ValidateTrustDomain("Cluster.local").message(),
            std::string("trust domain contains invalid character 'C' at position 0") + kTdChars);
  EXPECT_EQ(ValidateTrustDomain("").message(), std::string("trust domain is empty: ") + kForm);
  EXPECT_EQ(ValidateTrustDomain("td:443").message(),
            "trust domain must not contain a port (':' at position 2)");
  EXPECT_EQ(ValidateTrustDomain("a/b").message(),
            std::string("trust domain contains invalid character '/' at position 1") + kTdChars);
  EXPECT_EQ(ValidateTrustDomain(std::string(256, 'x')).message(),
            "trust domain is 256 bytes long; at most 255 are allowed");
}

struct IstioCase {
  std::string id;
  std::optional<IstioIdentity> expected;
};

TEST(AsIstioIdentityTest, ExtractsNamespaceAndServiceAccount) {
  std::vector<IstioCase> cases = {
      {"spiffe://cluster.local/ns/default/sa/web",
       IstioIdentity{"cluster.local", "default", "web"}},
      {"spiffe://example.org/ns/prod-1/sa/bookinfo-ratings",
       IstioIdentity{"example.org", "prod-1", "bookinfo-ratings"}},
      // The values are ordinary segments: "ns" and "sa" may appear as values too.
      {"spiffe://cluster.local/ns/sa/sa/ns", IstioIdentity{"cluster.local", "sa", "ns"}},
      {"spiffe://cluster.local", std::nullopt},
      {"spiffe://cluster.local/ns/default", std::nullopt},
      {"spiffe://cluster.local/ns/default/sa", std::nullopt},
      {"spiffe://cluster.local/ns/default/sa/web/extra", std::nullopt},
      {"spiffe://cluster.local/sa/web/ns/default", std::nullopt},
      {"spiffe://cluster.local/NS/default/SA/web", std::nullopt},
      {"spiffe://cluster.local/namespace/default/sa/web", std::nullopt},
      {"spiffe://cluster.local/x/ns/default/sa/web", std::nullopt},
  };
  for (const IstioCase& c : cases) {
    SCOPED_TRACE(c.id);
    auto id = ParseSpiffeId(c.id);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(AsIstioIdentity(*id), c.expected);
  }
}

TEST(AsIstioIdentityTest, RejectsEmptyValuesInHandBuiltIds) {
  EXPECT_EQ(AsIstioIdentity(SpiffeId{"cluster.local", "/ns//sa/web"}), std::nullopt);
  EXPECT_EQ(AsIstioIdentity(SpiffeId{"cluster.local", "/ns/default/sa/"}), std::nullopt);
  EXPECT_EQ(AsIstioIdentity(SpiffeId{"cluster.local", "ns/default/sa/web"}), std::nullopt);
}

TEST(IstioSpiffeIdTest, BuildsParsableIstioForm) {
  std::string text = IstioSpiffeId(kDefaultTrustDomain, "default", "web");
  EXPECT_EQ(text, "spiffe://cluster.local/ns/default/sa/web");
  auto id = ParseSpiffeId(text);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(AsIstioIdentity(*id), (IstioIdentity{"cluster.local", "default", "web"}));
}

}  // namespace
}  // namespace ambit::identity
