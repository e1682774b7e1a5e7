#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/waypoint/ext_authz_grpc_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ambit::waypoint::grpc_internal {
namespace {

namespace authv3 = envoy::service::auth::v3;
namespace corev3 = envoy::config::core::v3;
using ::testing::ElementsAre;
using ::testing::FieldsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using Outcome = AuthzCheckResponse::Outcome;
using Op = HeaderEdit::Op;

AuthzCheckRequest SampleRequest() {
  AuthzCheckRequest r;
  r.method = "POST";
  r.path = "/api/items?id=7";
  r.host = "productpage.foo.svc.cluster.local";
  r.protocol = "HTTP/2";
  r.headers = {
      {"content-type", "text/plain"}, {"X-Multi", "a"}, {"x-multi", "b"}, {"content-length", "5"}};
  r.source = *SocketAddress::Parse("198.18.0.10:40000");
  r.destination = *SocketAddress::Parse("[2001:2::20]:8080");
  r.source_principal = "spiffe://cluster.local/ns/foo/sa/sleep";
  r.destination_principal = "spiffe://cluster.local/ns/foo/sa/waypoint";
  r.request_id = "req-1";
  r.time = absl::FromUnixNanos(1800000000123456789);
  return r;
}

TEST(GrpcCheckRequestTest, CarriesEnvoysAttributes) {
  authz::ExtAuthzProvider p;
  authv3::CheckRequest c = BuildCheckRequest(SampleRequest(), p);
  const auto& a = c.attributes();
  EXPECT_EQ(a.source().address().socket_address().address(), "198.18.0.10");
  EXPECT_EQ(a.source().address().socket_address().port_value(), 40000u);
  EXPECT_EQ(a.source().principal(), "spiffe://cluster.local/ns/foo/sa/sleep");
  EXPECT_EQ(a.destination().address().socket_address().address(), "2001:2::20");
  EXPECT_EQ(a.destination().address().socket_address().port_value(), 8080u);
  EXPECT_EQ(a.destination().principal(), "spiffe://cluster.local/ns/foo/sa/waypoint");
  EXPECT_TRUE(a.context_extensions().empty());
  EXPECT_EQ(a.request().time().seconds(), 1800000000);
  EXPECT_EQ(a.request().time().nanos(), 123456789);
  const auto& h = a.request().http();
  EXPECT_EQ(h.id(), "req-1");
  EXPECT_EQ(h.method(), "POST");
  EXPECT_EQ(h.path(), "/api/items?id=7");
  EXPECT_EQ(h.host(), "productpage.foo.svc.cluster.local");
  EXPECT_EQ(h.scheme(), "http");
  EXPECT_EQ(h.protocol(), "HTTP/2");
  EXPECT_EQ(h.size(), 5);
  EXPECT_EQ(h.headers().at("x-multi"), "a,b");
  EXPECT_EQ(h.headers().at(":method"), "POST");
  EXPECT_EQ(h.headers().at(":path"), "/api/items?id=7");
  EXPECT_EQ(h.headers().at(":authority"), "productpage.foo.svc.cluster.local");
  EXPECT_EQ(h.headers().count("x-envoy-auth-partial-body"), 0u);  // no body asked
  EXPECT_TRUE(h.body().empty());
  EXPECT_TRUE(h.raw_body().empty());
}

TEST(GrpcCheckRequestTest, SizeIsMinusOneWithoutContentLength) {
  AuthzCheckRequest r = SampleRequest();
  r.headers = {{"content-length", "nope"}};
  EXPECT_EQ(BuildCheckRequest(r, {}).attributes().request().http().size(), -1);
  r.headers.clear();
  EXPECT_EQ(BuildCheckRequest(r, {}).attributes().request().http().size(), -1);
}

TEST(GrpcCheckRequestTest, BodyAsStringOrBytes) {
  AuthzCheckRequest r = SampleRequest();
  r.body = std::string("he\0lo", 5);
  r.body_truncated = true;
  authz::ExtAuthzProvider p;
  p.include_request_body = authz::ExtAuthzBodyOptions{100, true, false};
  auto h = BuildCheckRequest(r, p).attributes().request().http();
  EXPECT_EQ(h.body(), std::string("he\0lo", 5));
  EXPECT_TRUE(h.raw_body().empty());
  EXPECT_EQ(h.headers().at("x-envoy-auth-partial-body"), "true");
  p.include_request_body->pack_as_bytes = true;
  h = BuildCheckRequest(r, p).attributes().request().http();
  EXPECT_EQ(h.raw_body(), std::string("he\0lo", 5));
  EXPECT_TRUE(h.body().empty());
}

TEST(GrpcFramingTest, LengthPrefixedUncompressed) {
  EXPECT_EQ(FrameMessage("abc"), std::string("\0\0\0\0\x03"
                                             "abc",
                                             8));
  EXPECT_EQ(FrameMessage(std::string(300, 'x')).substr(0, 5), std::string("\0\0\0\x01\x2c", 5));
}

TEST(GrpcFramingTest, TimeoutHeaderFitsEightDigits) {
  EXPECT_EQ(GrpcTimeoutHeader(absl::Milliseconds(200)), "200000u");
  EXPECT_EQ(GrpcTimeoutHeader(absl::Seconds(600)), "600000m");
  EXPECT_EQ(GrpcTimeoutHeader(absl::Nanoseconds(1500)), "1500n");
  EXPECT_EQ(GrpcTimeoutHeader(absl::Hours(24 * 365)), "31536000S");
  EXPECT_EQ(GrpcTimeoutHeader(absl::Hours(24 * 3650)), "5256000M");
  EXPECT_EQ(GrpcTimeoutHeader(absl::ZeroDuration()), "0n");
  // Rounded up: the server never gives up first.
  EXPECT_EQ(GrpcTimeoutHeader(absl::Seconds(100) + absl::Nanoseconds(1)), "100001m");
}

TEST(GrpcFramingTest, DecodesGrpcMessage) {
  EXPECT_EQ(DecodeGrpcMessage("no%20way%2"), "no way%2");
  EXPECT_EQ(DecodeGrpcMessage("%zz%41"), "%zzA");
}

GrpcAnswer Ok(const authv3::CheckResponse& r) {
  GrpcAnswer a;
  a.http_status = 200;
  a.content_type = "application/grpc";
  a.grpc_status = "0";
  a.data = FrameMessage(r.SerializeAsString());
  return a;
}

corev3::HeaderValueOption Header(const std::string& k, const std::string& v) {
  corev3::HeaderValueOption o;
  o.mutable_header()->set_key(k);
  o.mutable_header()->set_value(v);
  return o;
}

TEST(GrpcAnswerTest, AllowMapsHeaderOptionsAsEnvoyDocuments) {
  authv3::CheckResponse r;
  auto* ok = r.mutable_ok_response();
  *ok->add_headers() = Header("X-Unset", "1");  // append unset: false in a CheckResponse
  auto append_true = Header("x-append", "2");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  append_true.mutable_append()->set_value(true);
  auto append_false = Header("x-replace", "3");
  append_false.mutable_append()->set_value(false);
  // append wins over append_action when both are set.
  append_false.set_append_action(corev3::HeaderValueOption::ADD_IF_ABSENT);
#pragma GCC diagnostic pop
  *ok->add_headers() = append_true;
  *ok->add_headers() = append_false;
  auto overwrite = Header("x-ow", "4");
  overwrite.set_append_action(corev3::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD);
  *ok->add_headers() = overwrite;
  auto if_absent_present = Header("x-present", "5");
  if_absent_present.set_append_action(corev3::HeaderValueOption::ADD_IF_ABSENT);
  *ok->add_headers() = if_absent_present;
  auto if_absent_absent = Header("x-absent", "6");
  if_absent_absent.set_append_action(corev3::HeaderValueOption::ADD_IF_ABSENT);
  *ok->add_headers() = if_absent_absent;
  auto if_exists_absent = Header("x-absent2", "7");
  if_exists_absent.set_append_action(corev3::HeaderValueOption::OVERWRITE_IF_EXISTS);
  *ok->add_headers() = if_exists_absent;
  auto if_exists_present = Header("x-present", "8");
  if_exists_present.set_append_action(corev3::HeaderValueOption::OVERWRITE_IF_EXISTS);
  *ok->add_headers() = if_exists_present;
  ok->add_headers_to_remove("Authorization");
  ok->add_headers_to_remove(":path");  // never removable
  ok->add_headers_to_remove("host");
  *ok->add_response_headers_to_add() = Header("x-down", "9");

  const HeaderList request = {{"x-present", "old"}};
  AuthzCheckResponse m = MapAnswer(Ok(r), &request);
  ASSERT_EQ(m.outcome, Outcome::kAllow) << m.detail;
  EXPECT_EQ(m.detail, "gRPC OK");
  EXPECT_THAT(
      m.upstream_edits,
      ElementsAre(FieldsAre(Op::kSet, "x-unset", "1"), FieldsAre(Op::kAppend, "x-append", "2"),
                  FieldsAre(Op::kSet, "x-replace", "3"), FieldsAre(Op::kSet, "x-ow", "4"),
                  FieldsAre(Op::kSet, "x-absent", "6"), FieldsAre(Op::kSet, "x-present", "8"),
                  FieldsAre(Op::kRemove, "authorization", "")));
  EXPECT_THAT(m.downstream_edits, ElementsAre(FieldsAre(Op::kSet, "x-down", "9")));
}

TEST(GrpcAnswerTest, AllowWithoutOkResponseHasNoEdits) {
  authv3::CheckResponse r;
  r.mutable_status()->set_code(0);
  AuthzCheckResponse m = MapAnswer(Ok(r));
  EXPECT_EQ(m.outcome, Outcome::kAllow);
  EXPECT_THAT(m.upstream_edits, IsEmpty());
}

TEST(GrpcAnswerTest, DenyDefaultsTo403) {
  authv3::CheckResponse r;
  r.mutable_status()->set_code(7);
  AuthzCheckResponse m = MapAnswer(Ok(r));
  EXPECT_EQ(m.outcome, Outcome::kDeny);
  EXPECT_EQ(m.status, 403);
  EXPECT_EQ(m.detail, "gRPC PERMISSION_DENIED (7)");
  r.mutable_denied_response()->mutable_status()->set_code(envoy::type::v3::Empty);
  EXPECT_EQ(MapAnswer(Ok(r)).status, 403);
  // A number no response can carry falls back too.
  r.mutable_denied_response()->mutable_status()->set_code(
      static_cast<envoy::type::v3::StatusCode>(42));
  EXPECT_EQ(MapAnswer(Ok(r)).status, 403);
}

TEST(GrpcAnswerTest, DenyCarriesStatusHeadersAndBody) {
  authv3::CheckResponse r;
  r.mutable_status()->set_code(16);
  auto* d = r.mutable_denied_response();
  d->mutable_status()->set_code(static_cast<envoy::type::v3::StatusCode>(418));
  *d->add_headers() = Header("X-Teapot", "yes");
  d->set_body("short and stout");
  AuthzCheckResponse m = MapAnswer(Ok(r));
  EXPECT_EQ(m.outcome, Outcome::kDeny);
  EXPECT_EQ(m.status, 418);
  EXPECT_THAT(m.deny_headers, ElementsAre(Pair("x-teapot", "yes")));
  EXPECT_EQ(m.deny_body, "short and stout");
  EXPECT_EQ(m.detail, "gRPC UNAUTHENTICATED (16)");
}

TEST(GrpcAnswerTest, ErrorResponseIsAnError) {
  authv3::CheckResponse r;
  r.mutable_status()->set_code(13);
  r.mutable_error_response()->set_body("boom");
  AuthzCheckResponse m = MapAnswer(Ok(r));
  EXPECT_EQ(m.outcome, Outcome::kError);
  EXPECT_THAT(m.detail, HasSubstr("error_response"));
}

TEST(GrpcAnswerTest, InvalidHeadersFromTheAuthorizerAreAMalformedAnswer) {
  for (auto [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"x-ok", "a\r\nx-injected: 1"},
                                                        {"bad name", "v"},
                                                        {"", "v"},
                                                        {"x-nul", std::string("a\0b", 3)},
                                                        {std::string("x-\0nul", 6), "v"}}) {
    authv3::CheckResponse r;
    *r.mutable_ok_response()->add_headers() = Header(key, value);
    AuthzCheckResponse m = MapAnswer(Ok(r));
    EXPECT_EQ(m.outcome, Outcome::kError) << key;
    EXPECT_THAT(m.detail, HasSubstr("malformed answer")) << key;
    authv3::CheckResponse d;
    d.mutable_status()->set_code(7);
    *d.mutable_denied_response()->add_headers() = Header(key, value);
    EXPECT_EQ(MapAnswer(Ok(d)).outcome, Outcome::kError) << key;
  }
}

struct BadAnswer {
  const char* name;
  GrpcAnswer answer;
  const char* detail;
};

TEST(GrpcAnswerTest, RpcFailuresAreErrors) {
  authv3::CheckResponse allow;
  allow.mutable_status()->set_code(0);
  const std::string msg = allow.SerializeAsString();
  auto with = [&](auto edit) {
    GrpcAnswer a = Ok(allow);
    edit(a);
    return a;
  };
  const std::vector<BadAnswer> table = {
      {"no head", GrpcAnswer{}, "no response head"},
      {"http 503", with([](GrpcAnswer& a) { a.http_status = 503; }), "answered HTTP 503"},
      {"no grpc-status", with([](GrpcAnswer& a) { a.grpc_status.reset(); }), "no grpc-status"},
      {"bad grpc-status", with([](GrpcAnswer& a) { a.grpc_status = "x"; }), "grpc-status \"x\""},
      {"unavailable", with([](GrpcAnswer& a) {
         a.grpc_status = "14";
         a.grpc_message = "down%20for%20maintenance";
         a.data.clear();
       }),
       "gRPC UNAVAILABLE (14): down for maintenance"},
      {"content-type", with([](GrpcAnswer& a) { a.content_type = "text/html"; }),
       "content-type \"text/html\""},
      {"no message", with([](GrpcAnswer& a) { a.data.clear(); }), "no complete message"},
      {"compressed", with([](GrpcAnswer& a) { a.data[0] = 1; }), "compressed"},
      {"truncated", with([](GrpcAnswer& a) { a.data = FrameMessage("abcdef").substr(0, 8); }),
       "truncated"},
      {"two messages", with([&](GrpcAnswer& a) { a.data += FrameMessage(msg); }),
       "more than one message"},
      {"announced too large",
       with([](GrpcAnswer& a) { a.data = std::string("\0\x7f\xff\xff\xff", 5); }), "larger than"},
      {"arrived too large", with([](GrpcAnswer& a) { a.data_too_large = true; }), "larger than"},
      {"garbage", with([](GrpcAnswer& a) { a.data = FrameMessage("\xff\xff\xff"); }),
       "not a CheckResponse"},
  };
  for (const BadAnswer& t : table) {
    AuthzCheckResponse m = MapAnswer(t.answer);
    EXPECT_EQ(m.outcome, Outcome::kError) << t.name;
    EXPECT_THAT(m.detail, HasSubstr(t.detail)) << t.name;
  }
}

TEST(GrpcAnswerTest, TrailersOnlyDenyWithoutAMessageIsAnError) {
  // A non-OK grpc-status is an RPC failure, not the authorizer's deny (that one comes as a
  // CheckResponse with a non-OK status inside).
  GrpcAnswer a;
  a.http_status = 200;
  a.content_type = "application/grpc";
  a.grpc_status = "7";
  AuthzCheckResponse m = MapAnswer(a);
  EXPECT_EQ(m.outcome, Outcome::kError);
  EXPECT_EQ(m.detail, "gRPC PERMISSION_DENIED (7)");
}

}  // namespace
}  // namespace ambit::waypoint::grpc_internal
