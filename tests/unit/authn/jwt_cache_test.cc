#include "agent/authn/jwt_cache.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ambit::authn {
namespace {

constexpr int64_t kNow = 1800000000;

std::shared_ptr<const Jwt> Token(const std::string& bytes, uint64_t exp = kNow + 3600) {
  auto jwt = std::make_shared<Jwt>();
  jwt->token = bytes;
  jwt->exp = exp;
  return jwt;
}

std::shared_ptr<const Jwks> Keys() { return std::make_shared<const Jwks>(); }

TEST(VerifiedJwtCacheTest, HitOnlyForTheExactTokenAndKeySet) {
  VerifiedJwtCache cache;
  auto keys = Keys();
  cache.Insert(Token("a.b.c"), keys, "signature verified", kNow);
  const VerifiedJwtCache::Entry* e = cache.Find("a.b.c", keys.get(), kNow);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->detail, "signature verified");
  EXPECT_EQ(e->jwt->token, "a.b.c");
  // One byte more or less is another token.
  EXPECT_EQ(cache.Find("a.b.cd", keys.get(), kNow), nullptr);
  EXPECT_EQ(cache.Find("a.b.", keys.get(), kNow), nullptr);
  // An equal but different key set (a new configuration, a JWKS refresh) is not the one it
  // verified under.
  auto same_text = Keys();
  EXPECT_EQ(cache.Find("a.b.c", same_text.get(), kNow), nullptr);
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 3u);
  // The parse alone does not depend on keys.
  EXPECT_NE(cache.FindParsed("a.b.c", kNow), nullptr);
}

TEST(VerifiedJwtCacheTest, ANewKeySetReplacesTheEntry) {
  VerifiedJwtCache cache;
  auto old_keys = Keys();
  auto new_keys = Keys();
  cache.Insert(Token("t"), old_keys, "old", kNow);
  cache.Insert(Token("t"), new_keys, "new", kNow);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Find("t", old_keys.get(), kNow), nullptr);
  ASSERT_NE(cache.Find("t", new_keys.get(), kNow), nullptr);
  EXPECT_EQ(cache.Find("t", new_keys.get(), kNow)->detail, "new");
}

TEST(VerifiedJwtCacheTest, EntryHoldsItsKeySetSoAnAddressIsNeverReused) {
  VerifiedJwtCache cache;
  auto keys = Keys();
  const Jwks* address = keys.get();
  cache.Insert(Token("t"), keys, "", kNow);
  std::weak_ptr<const Jwks> weak = keys;
  keys.reset();
  // The configuration dropped it, the entry keeps it alive: no newer key set can be allocated
  // at that address while the entry could match it.
  EXPECT_FALSE(weak.expired());
  EXPECT_NE(cache.Find("t", address, kNow), nullptr);
}

TEST(VerifiedJwtCacheTest, EvictedAtExpWithTheClockSkew) {
  VerifiedJwtCache cache;
  auto keys = Keys();
  cache.Insert(Token("t", kNow + 100), keys, "", kNow);
  EXPECT_NE(cache.Find("t", keys.get(), kNow + 100 + kClockSkewSeconds), nullptr);
  EXPECT_EQ(cache.Find("t", keys.get(), kNow + 101 + kClockSkewSeconds), nullptr);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.FindParsed("t", kNow + 101 + kClockSkewSeconds), nullptr);
  // Already expired: not kept at all.
  cache.Insert(Token("old", kNow - 1000), keys, "", kNow);
  EXPECT_EQ(cache.size(), 0u);
  // No exp: kept (the authenticator checks nbf and the rest on each use); LRU bounds it.
  cache.Insert(Token("forever", 0), keys, "", kNow);
  EXPECT_NE(cache.Find("forever", keys.get(), kNow + 1000000), nullptr);
}

TEST(VerifiedJwtCacheTest, BoundedLeastRecentlyUsedGoesFirst) {
  VerifiedJwtCache cache(3);
  auto keys = Keys();
  for (const char* t : {"t1", "t2", "t3"}) cache.Insert(Token(t), keys, "", kNow);
  ASSERT_NE(cache.Find("t1", keys.get(), kNow), nullptr);  // t2 is now the least recent
  cache.Insert(Token("t4"), keys, "", kNow);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_EQ(cache.Find("t2", keys.get(), kNow), nullptr);
  EXPECT_NE(cache.Find("t1", keys.get(), kNow), nullptr);
  EXPECT_NE(cache.Find("t3", keys.get(), kNow), nullptr);
  EXPECT_NE(cache.Find("t4", keys.get(), kNow), nullptr);
  // Many distinct tokens (a client minting one per request) never grow it past its bound.
  for (int i = 0; i < 1000; ++i) cache.Insert(Token(absl::StrCat("x", i)), keys, "", kNow);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_NE(cache.Find("x999", keys.get(), kNow), nullptr);
}

TEST(VerifiedJwtCacheTest, NothingWithoutAKeySetOrToken) {
  VerifiedJwtCache cache;
  cache.Insert(Token("t"), nullptr, "", kNow);
  cache.Insert(nullptr, Keys(), "", kNow);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Find("t", nullptr, kNow), nullptr);
}

}  // namespace
}  // namespace ambit::authn
