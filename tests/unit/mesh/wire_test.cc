#include "agent/mesh/wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/message_differencer.h"

namespace ambit::mesh {
namespace {

namespace pb = ::ambit::dataplane::v1;

IpAddress Ip(const std::string& text) {
  auto ip = IpAddress::Parse(text);
  EXPECT_TRUE(ip.ok()) << text;
  return *ip;
}

identity::SpiffeId Id(const std::string& text) {
  auto id = identity::ParseSpiffeId(text);
  EXPECT_TRUE(id.ok()) << text;
  return *id;
}

// A workload of this node with every field set to something other than its default.
Workload Enrolled() {
  Workload w;
  w.namespace_name = "backend";
  w.name = "api";
  w.service_account = "api-sa";
  w.node = "node-a";
  w.workload_name = "api";
  w.canonical_service = "api-svc";
  w.canonical_revision = "v2";
  w.identity = Id("spiffe://cluster.local/ns/backend/sa/api-sa");
  w.ips = {Ip("198.18.0.5"), Ip("2001:2::5")};
  w.enrolled_here = true;
  w.in_mesh = true;
  w.labels = {{"app", "api"}, {"version", "v2"}};
  MtlsPolicy mtls;
  mtls.workload = {MtlsMode::kStrict, "backend/strict"};
  mtls.ports[8081] = {MtlsMode::kPermissive, "backend/open-8081"};
  mtls.ports[9090] = {MtlsMode::kDisable, "backend/off-9090"};
  w.mtls = mtls;
  w.waypoint = "backend/waypoint";
  w.waypoint_bypass_allowed = true;
  return w;
}

Workload Peer() {
  Workload w;
  w.namespace_name = "frontend";
  w.name = "web";
  w.service_account = "web";
  w.node = "node-b";
  w.identity = Id("spiffe://cluster.local/ns/frontend/sa/web");
  w.ips = {Ip("198.18.0.6")};
  w.in_mesh = true;
  return w;
}

// Two RequestAuthentications that together set every field: one by target references, one by
// selector (a policy has one or the other), each rule with either inline keys or a URI.
std::vector<authn::RequestAuthentication> RequestAuthentications() {
  authn::RequestAuthentication by_target;
  by_target.name = "jwt";
  by_target.namespace_name = "backend";
  by_target.target_refs = {{"gateway.networking.k8s.io", "Gateway", "waypoint"},
                           {"", "Service", "api"},
                           {"networking.istio.io", "ServiceEntry", "external"},
                           {"gateway.networking.k8s.io", "GatewayClass", "istio-waypoint"}};
  authn::JwtRule inline_keys;
  inline_keys.issuer = "https://issuer.example";
  inline_keys.audiences = {"api", "web"};
  inline_keys.jwks = R"({"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]})";
  inline_keys.from_headers = {{"x-jwt", "Bearer "}, {"x-token", ""}};
  inline_keys.from_params = {"token", "jwt"};
  inline_keys.from_cookies = {"session"};
  inline_keys.output_payload_to_header = "x-jwt-payload";
  inline_keys.forward_original_token = true;
  inline_keys.output_claim_to_headers = {{"x-sub", "sub"}, {"x-team", "groups.primary"}};
  // Not a whole millisecond: the wire keeps nanoseconds.
  inline_keys.timeout = absl::Milliseconds(2500) + absl::Nanoseconds(7);
  inline_keys.space_delimited_claims = {"roles", "perms"};
  authn::JwtRule by_uri;
  by_uri.issuer = "issuer-b";
  by_uri.jwks_uri = "https://issuer.example/jwks.json";
  by_uri.timeout = authn::kJwksFetchTimeoutLimit - absl::Nanoseconds(1);  // the longest
  by_target.jwt_rules = {inline_keys, by_uri};
  by_target.source_file = "authn.yaml";

  authn::RequestAuthentication by_selector;
  by_selector.name = "jwt";
  by_selector.namespace_name = "frontend";
  by_selector.selector = std::map<std::string, std::string>{{"app", "web"}, {"tier", "edge"}};
  authn::JwtRule shortest;
  shortest.issuer = "issuer-c";
  shortest.timeout = absl::Nanoseconds(1);
  by_selector.jwt_rules = {shortest};
  by_selector.source_file = "frontend/authn.yaml";
  return {by_target, by_selector};
}

// Two providers: one with every field set (a resolved HTTP one) and an unresolved gRPC one.
std::vector<authz::ExtAuthzProvider> ExtAuthzProviders() {
  authz::ExtAuthzProvider http;
  http.name = "sample-ext-authz-http";
  http.kind = authz::ExtAuthzProvider::Kind::kHttp;
  http.service = "backend/api.backend.svc.cluster.local";
  http.service_key = "backend/api";
  http.port = 8000;
  http.timeout = absl::Milliseconds(250) + absl::Nanoseconds(3);
  http.fail_open = true;
  http.status_on_error = 503;
  http.include_request_body = authz::ExtAuthzBodyOptions{4096, true, true};
  http.path_prefix = "/check";
  http.include_request_headers = {"x-ext-authz", "cookie"};
  http.include_additional_headers = {{"x-added", "yes, a value"}, {"x-other", ""}};
  http.headers_to_upstream_on_allow = {"x-ext-authz-upstream"};
  http.headers_to_downstream_on_deny = {"x-ext-authz-check-result", "content-type"};
  http.headers_to_downstream_on_allow = {"x-ext-authz-downstream"};
  authz::ExtAuthzProvider grpc;
  grpc.name = "sample-ext-authz-grpc";
  grpc.kind = authz::ExtAuthzProvider::Kind::kGrpc;
  grpc.service = "ext-authz-grpc.missing";
  grpc.unresolved =
      "service 'ext-authz-grpc.missing' names no Service (looked up missing/ext-authz-grpc)";
  grpc.port = 9000;
  return {http, grpc};
}

Snapshot Full() {
  Snapshot s;
  s.version = 42;
  s.trust_domain = "cluster.local";
  s.root_namespace = "istio-system";
  s.cluster_id = "east";
  s.reserved_ports = {15020, 15021};
  s.workloads = {Enrolled(), Peer()};
  Service svc;
  svc.namespace_name = "backend";
  svc.name = "api";
  svc.cluster_ips = {Ip("198.18.100.1"), Ip("2001:2::100:1")};
  svc.ports = {{80, 8080, Protocol::kTcp, AppProtocol::kHttp},
               {53, 5353, Protocol::kUdp, AppProtocol::kDetect},
               {7, 0, Protocol::kSctp, AppProtocol::kOpaque}};
  svc.endpoints = {"backend/api"};
  svc.waypoint = "backend/waypoint";
  s.services = {svc};
  s.waypoints = {Waypoint{"backend", "waypoint", {"frontend/web"}}};
  authz::Policy policy;
  policy.name = "deny-9000";
  policy.namespace_name = "backend";
  policy.action = authz::Action::kDeny;
  policy.rules = std::vector<authz::Rule>{authz::Rule{}};
  policy.rules->front().to.push_back(authz::Operation{});
  policy.rules->front().to.front().ports = {"9000"};
  policy.source_file = "deny.yaml";
  // Every source field, for the mapping's completeness (never compiled here).
  authz::Policy sources;
  sources.name = "every-source-field";
  sources.namespace_name = "backend";
  sources.rules = std::vector<authz::Rule>{authz::Rule{.from = {authz::Source{
                                                           .principals = {"a/ns/b/sa/c"},
                                                           .not_principals = {"d"},
                                                           .request_principals = {"iss/sub"},
                                                           .not_request_principals = {"x/y"},
                                                           .namespaces = {"ns"},
                                                           .not_namespaces = {"other"},
                                                           .service_accounts = {"ns/sa"},
                                                           .not_service_accounts = {"sa"},
                                                           .ip_blocks = {"198.18.0.0/16"},
                                                           .not_ip_blocks = {"198.18.1.1"},
                                                           .remote_ip_blocks = {"198.19.0.0/16"},
                                                           .not_remote_ip_blocks = {"2001:2::1"},
                                                           .trust_domains = {"*.example"},
                                                           .not_trust_domains = {"bad*"},
                                                       }}}};
  s.authorization_policies = {policy, sources};
  s.trust_domain_aliases = {"old.example", "older.example"};
  s.request_authentications = RequestAuthentications();
  s.ext_authz_providers = ExtAuthzProviders();
  return s;
}

// Every field the message type declares is set in `m`: a field added to the proto but not to the
// mapping leaves its default and fails here.
void ExpectEveryFieldSet(const google::protobuf::Message& m) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    bool set = f->is_repeated() ? r->FieldSize(m, f) > 0 : r->HasField(m, f);
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_BOOL && !f->is_repeated()) {
      set = r->GetBool(m, f);
    }
    EXPECT_TRUE(set) << d->full_name() << "." << f->name() << " is not mapped";
  }
}

// Every field the message type declares is set in one of `messages` at least (for fields that
// exclude each other, such as a selector and target references).
void ExpectEveryFieldSetInOne(const std::vector<const google::protobuf::Message*>& messages) {
  ASSERT_FALSE(messages.empty());
  const auto* d = messages.front()->GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    bool set = false;
    for (const auto* m : messages) {
      const auto* r = m->GetReflection();
      bool here = f->is_repeated() ? r->FieldSize(*m, f) > 0 : r->HasField(*m, f);
      if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_BOOL && !f->is_repeated()) {
        here = r->GetBool(*m, f);
      }
      set = set || here;
    }
    EXPECT_TRUE(set) << d->full_name() << "." << f->name() << " is not mapped";
  }
}

TEST(MeshWireTest, RoundTripKeepsEveryField) {
  const Snapshot in = Full();
  pb::Snapshot proto;
  ASSERT_TRUE(ToProto(in, &proto).ok());
  ExpectEveryFieldSet(proto);
  ExpectEveryFieldSet(proto.workloads(0));
  ExpectEveryFieldSet(proto.workloads(0).mtls());
  ExpectEveryFieldSet(proto.workloads(0).mtls().ports(0));
  ExpectEveryFieldSet(proto.services(0));
  ExpectEveryFieldSet(proto.services(0).ports(0));
  ExpectEveryFieldSet(proto.waypoints(0));
  ExpectEveryFieldSet(proto.authorization_policies(1).rules(0).from(0));
  ExpectEveryFieldSetInOne({&proto.request_authentications(0), &proto.request_authentications(1)});
  ExpectEveryFieldSetInOne({&proto.request_authentications(0).jwt_rules(0),
                            &proto.request_authentications(0).jwt_rules(1)});
  ExpectEveryFieldSet(proto.request_authentications(0).jwt_rules(0).from_headers(0));
  ExpectEveryFieldSet(proto.request_authentications(0).jwt_rules(0).output_claim_to_headers(0));
  ExpectEveryFieldSet(proto.request_authentications(0).target_refs(0));
  ExpectEveryFieldSetInOne({&proto.ext_authz_providers(0), &proto.ext_authz_providers(1)});
  ExpectEveryFieldSet(proto.ext_authz_providers(0).include_request_body());
  ExpectEveryFieldSet(proto.ext_authz_providers(0).include_additional_headers(0));
  EXPECT_EQ(proto.ext_authz_providers(0).kind(), pb::EXT_AUTHZ_KIND_HTTP);
  EXPECT_EQ(proto.ext_authz_providers(1).kind(), pb::EXT_AUTHZ_KIND_GRPC);
  EXPECT_EQ(proto.ext_authz_providers(0).timeout().nanos(), 250'000'003);
  EXPECT_EQ(proto.ext_authz_providers(1).timeout().seconds(), 600);  // Istio's default
  EXPECT_FALSE(proto.ext_authz_providers(1).has_include_request_body());

  // The wire form of each typed value.
  const auto& w = proto.workloads(0);
  EXPECT_EQ(w.spiffe_id(), "spiffe://cluster.local/ns/backend/sa/api-sa");
  EXPECT_EQ(w.ips(0), "198.18.0.5");
  EXPECT_EQ(w.ips(1), "2001:2::5");
  EXPECT_EQ(w.mtls().mode(), pb::MTLS_MODE_STRICT);
  ASSERT_EQ(w.mtls().ports_size(), 2);
  EXPECT_EQ(w.mtls().ports(0).port(), 8081u);
  EXPECT_EQ(w.mtls().ports(0).mode(), pb::MTLS_MODE_PERMISSIVE);
  EXPECT_EQ(w.mtls().ports(1).mode(), pb::MTLS_MODE_DISABLE);
  EXPECT_FALSE(proto.workloads(1).has_mtls());
  EXPECT_EQ(proto.services(0).ports(1).protocol(), pb::SERVICE_PROTOCOL_UDP);
  EXPECT_EQ(proto.services(0).ports(2).protocol(), pb::SERVICE_PROTOCOL_SCTP);
  EXPECT_EQ(proto.authorization_policies(0).action(), pb::AuthzPolicy::DENY);
  const auto& rule = proto.request_authentications(0).jwt_rules(0);
  EXPECT_EQ(rule.timeout().seconds(), 2);
  EXPECT_EQ(rule.timeout().nanos(), 500'000'007);
  EXPECT_EQ(proto.request_authentications(0).jwt_rules(1).timeout().seconds(), 4294967295);
  EXPECT_EQ(proto.request_authentications(0).jwt_rules(1).timeout().nanos(), 999'999'999);
  EXPECT_FALSE(proto.request_authentications(0).has_selector());
  EXPECT_TRUE(proto.request_authentications(1).has_selector());

  // Through bytes, as the sealed file carries it.
  pb::Snapshot parsed;
  ASSERT_TRUE(parsed.ParseFromString(proto.SerializeAsString()));
  auto out = FromProto(parsed);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, in);
  EXPECT_EQ(out->workloads[0].Key(), "backend/api");
  EXPECT_EQ(out->workloads[0].mtls->ForPort(8081).mode, MtlsMode::kPermissive);
  EXPECT_EQ(out->workloads[0].mtls->ForPort(8080).mode, MtlsMode::kStrict);
  EXPECT_EQ(out->workloads[0].mtls->ForPort(8080).policy, "backend/strict");
}

TEST(MeshWireTest, EveryActionRoundTrips) {
  for (auto action : {authz::Action::kAllow, authz::Action::kDeny, authz::Action::kAudit,
                      authz::Action::kCustom}) {
    Snapshot in = Full();
    in.authorization_policies[0].action = action;
    pb::Snapshot proto;
    ASSERT_TRUE(ToProto(in, &proto).ok());
    auto out = FromProto(proto);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->authorization_policies[0].action, action);
  }
}

// The error for `proto` after `mutate`: it must fail, and its message must contain each of
// `expected`.
void ExpectRejected(const std::function<void(pb::Snapshot*)>& mutate,
                    const std::vector<std::string>& expected) {
  pb::Snapshot proto;
  ASSERT_TRUE(ToProto(Full(), &proto).ok());
  mutate(&proto);
  // The message form and the streaming form of the same bytes refuse alike.
  for (const auto& out : {FromProto(proto), DecodeSnapshot(proto.SerializeAsString())}) {
    ASSERT_FALSE(out.ok()) << "accepted: " << proto.ShortDebugString();
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    for (const auto& text : expected) {
      EXPECT_NE(out.status().message().find(text), std::string::npos)
          << "'" << out.status().message() << "' lacks '" << text << "'";
    }
  }
}

// An alias widens whom the tunnel accepts: only plain trust domains, each once, pass.
TEST(MeshWireTest, TrustDomainAliasesAreChecked) {
  ExpectRejected([](pb::Snapshot* s) { s->set_trust_domain_aliases(1, "Old.example"); },
                 {"trust_domain_aliases[1]", "'O'"});
  ExpectRejected([](pb::Snapshot* s) { s->set_trust_domain_aliases(1, ""); },
                 {"trust_domain_aliases[1]"});
  ExpectRejected([](pb::Snapshot* s) { s->set_trust_domain_aliases(1, "old.example"); },
                 {"trust_domain_aliases[1]", "'old.example' is listed twice"});
  ExpectRejected([](pb::Snapshot* s) { s->add_trust_domain_aliases("cluster.local"); },
                 {"trust_domain_aliases[2]", "listed twice"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        for (int i = 0; i < kMaxTrustDomainAliases; ++i) {
          s->add_trust_domain_aliases(absl::StrCat("td", i, ".example"));
        }
      },
      {"trust_domain_aliases: 34 aliases; at most 32"});
}

// A mode one side does not know (a renamed or newer enum value) used to read as PERMISSIVE, so a
// STRICT workload took plaintext. Now it rejects the snapshot, naming workload and field.
TEST(MeshWireTest, UnknownOrUnspecifiedMtlsModeIsAnError) {
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(0)->mutable_mtls()->set_mode(static_cast<pb::MtlsMode>(7));
      },
      {"workload backend/api", "mtls.mode", "unknown mode 7"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(0)->mutable_mtls()->set_mode(pb::MTLS_MODE_UNSPECIFIED);
      },
      {"workload backend/api", "mtls.mode", "MTLS_MODE_UNSPECIFIED"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(0)->mutable_mtls()->mutable_ports(0)->set_mode(
            static_cast<pb::MtlsMode>(9));
      },
      {"workload backend/api", "mtls.ports[8081].mode", "unknown mode 9"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(0)->mutable_mtls()->mutable_ports(1)->set_mode(
            pb::MTLS_MODE_UNSPECIFIED);
      },
      {"workload backend/api", "mtls.ports[9090].mode"});
}

TEST(MeshWireTest, UnknownProtocolOrActionIsAnError) {
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_services(0)->mutable_ports(1)->set_protocol(pb::SERVICE_PROTOCOL_UNSPECIFIED);
      },
      {"service backend/api", "ports[1].protocol"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_services(0)->mutable_ports(0)->set_protocol(
            static_cast<pb::ServiceProtocol>(12));
      },
      {"service backend/api", "ports[0].protocol", "unknown protocol 12"});
  // What a waypoint makes of a port's bytes is never guessed from a value it does not know.
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_services(0)->mutable_ports(0)->set_app_protocol(pb::APP_PROTOCOL_UNSPECIFIED);
      },
      {"service backend/api", "ports[0].app_protocol"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_services(0)->mutable_ports(2)->set_app_protocol(static_cast<pb::AppProtocol>(9));
      },
      {"service backend/api", "ports[2].app_protocol", "unknown application protocol 9"});
  // A DENY whose action a reader does not know must not become ALLOW.
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_authorization_policies(0)->set_action(static_cast<pb::AuthzPolicy::Action>(17));
      },
      {"AuthorizationPolicy backend/deny-9000", "action", "17"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_authorization_policies(0)->set_action(pb::AuthzPolicy::ACTION_UNSPECIFIED);
      },
      {"AuthorizationPolicy backend/deny-9000", "ACTION_UNSPECIFIED"});
}

TEST(MeshWireTest, MissingOrInvalidIdentityIsAnError) {
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(1)->clear_spiffe_id(); },
                 {"workload frontend/web", "spiffe_id", "missing"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(1)->set_spiffe_id("spiffe://Cluster.local/ns/frontend/sa/web");
      },
      {"workload frontend/web", "spiffe_id", "invalid character"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(1)->set_spiffe_id("cluster.local/ns/frontend/sa/web");
      },
      {"workload frontend/web", "spiffe_id"});
  // The agent cannot send one either.
  Workload w = Peer();
  w.identity = {};
  pb::Workload out;
  absl::Status status = ToProto(w, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("workload frontend/web: identity"), std::string::npos) << status;
}

TEST(MeshWireTest, EnrolledWorkloadNeedsItsMtlsPolicy) {
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(0)->clear_mtls(); },
                 {"workload backend/api", "mtls", "missing for a workload enrolled here"});
  Workload w = Enrolled();
  w.mtls.reset();
  pb::Workload out;
  EXPECT_FALSE(ToProto(w, &out).ok());
  w = Enrolled();
  w.mtls->workload.mode = MtlsMode::kUnset;  // a mode that was never resolved
  absl::Status status = ToProto(w, &out);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("mtls.mode"), std::string::npos) << status;
  w = Enrolled();
  w.mtls->ports[8081].mode = MtlsMode::kUnset;
  status = ToProto(w, &out);
  EXPECT_NE(status.message().find("mtls.ports[8081].mode"), std::string::npos) << status;
}

TEST(MeshWireTest, AddressesPortsAndReferencesAreChecked) {
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(0)->set_ips(1, "bogus"); },
                 {"workload backend/api", "ips[1]", "'bogus' is not an IP address"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_services(0)->set_cluster_ips(0, "1.2.3"); },
                 {"service backend/api", "cluster_ips[0]"});
  ExpectRejected(
      [](pb::Snapshot* s) { s->mutable_workloads(1)->add_ips("2001:2::5"); },
      {"workload frontend/web", "2001:2::5 is also the address of workload backend/api"});
  ExpectRejected([](pb::Snapshot* s) { *s->add_workloads() = s->workloads(1); },
                 {"workload frontend/web"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_services(0)->add_endpoints("backend/gone"); },
                 {"service backend/api", "endpoints[1]", "'backend/gone' is not a workload"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_services(0)->mutable_ports(0)->set_port(0); },
                 {"service backend/api", "ports[0].port"});
  ExpectRejected(
      [](pb::Snapshot* s) { s->mutable_services(0)->mutable_ports(0)->set_target_port(70000); },
      {"service backend/api", "ports[0].target_port", "70000"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(0)->mutable_mtls()->mutable_ports(0)->set_port(65536);
      },
      {"workload backend/api", "mtls.ports[0].port"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        *s->mutable_workloads(0)->mutable_mtls()->add_ports() = s->workloads(0).mtls().ports(0);
      },
      {"workload backend/api", "mtls.ports[8081]", "listed twice"});
  ExpectRejected([](pb::Snapshot* s) { s->add_reserved_ports(0); }, {"reserved_ports[2]"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(1)->clear_name(); },
                 {"workload frontend/", "name", "missing"});
  // Keys are "namespace/name": a namespace holding '/' would make one key name two workloads.
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(1)->set_namespace_("front/end"); },
                 {"workload front/end/web", "namespace", "contains '/'"});
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_workloads(1)->set_namespace_("backend");
        s->mutable_workloads(1)->set_name("api");
      },
      {"workload backend/api", "namespace/name", "listed twice"});
}

// The streaming forms write an ordinary Snapshot message and read any: the bytes EncodeSnapshot
// writes parse to what ToProto builds, and DecodeSnapshot reads ToProto's bytes, in any field
// order, to the same model.
TEST(MeshWireTest, StreamingFormsMatchTheMessage) {
  const Snapshot in = Full();
  pb::Snapshot proto;
  ASSERT_TRUE(ToProto(in, &proto).ok());
  std::string encoded;
  ASSERT_TRUE(EncodeSnapshot(in, &encoded).ok());
  pb::Snapshot parsed;
  ASSERT_TRUE(parsed.ParseFromString(encoded));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, proto))
      << parsed.ShortDebugString() << "\n"
      << proto.ShortDebugString();

  auto decoded = DecodeSnapshot(proto.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, in);
  decoded = DecodeSnapshot(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, in);

  // Workloads first, the rest after, and a field this build does not know in between.
  pb::Snapshot workloads_only, head_only = proto;
  *workloads_only.mutable_workloads() = proto.workloads();
  head_only.clear_workloads();
  const std::string unknown_field = "\xc8\x3e\x07";  // field 1001, varint 7
  decoded = DecodeSnapshot(workloads_only.SerializeAsString() + unknown_field +
                           head_only.SerializeAsString());
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, in);

  // The empty snapshot is empty bytes.
  ASSERT_TRUE(EncodeSnapshot(Snapshot{}, &encoded).ok());
  EXPECT_TRUE(encoded.empty());
  decoded = DecodeSnapshot("");
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, Snapshot{});
}

// Bytes that are no Snapshot are DataLoss, whatever part of them is broken.
TEST(MeshWireTest, DecodeRefusesBytesThatAreNoSnapshot) {
  std::string good;
  ASSERT_TRUE(EncodeSnapshot(Full(), &good).ok());
  for (const std::string& bad : {
           good.substr(0, good.size() - 3),         // the last workload cut short
           std::string("\x1a\xff\xff\xff\x0f", 5),  // a workload longer than the bytes
           std::string("\x00", 1),                  // field number 0
           std::string("\x1a\x02\x0a\x80", 4),      // a workload whose own field is cut short
           std::string("\x12\x05"
                       "ab",
                       4),          // trust_domain cut short
           std::string("\x0f", 1),  // wire type 7
       }) {
    auto out = DecodeSnapshot(bad);
    ASSERT_FALSE(out.ok()) << absl::CEscape(bad);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kDataLoss) << out.status();
    EXPECT_NE(out.status().message().find("not a Snapshot message"), std::string::npos)
        << out.status();
  }
}

// A waypoint reference the data plane cannot resolve would leave it guessing where traffic goes
// and whom to accept: the whole snapshot is refused instead.
TEST(MeshWireTest, WaypointReferencesAreChecked) {
  ExpectRejected([](pb::Snapshot* s) { s->mutable_workloads(0)->set_waypoint("backend/gone"); },
                 {"workload backend/api", "waypoint", "'backend/gone' is not a waypoint"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_services(0)->set_waypoint("backend/gone"); },
                 {"service backend/api", "waypoint", "'backend/gone' is not a waypoint"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_waypoints(0)->add_instances("backend/gone"); },
                 {"waypoint backend/waypoint", "instances[1]", "'backend/gone' is not a workload"});
  ExpectRejected([](pb::Snapshot* s) { *s->add_waypoints() = s->waypoints(0); },
                 {"waypoint backend/waypoint", "listed twice"});
  ExpectRejected([](pb::Snapshot* s) { s->mutable_waypoints(0)->clear_name(); },
                 {"waypoint backend/", "name", "missing"});
  // Only the destination's own tunnel may be told to accept a bypass.
  ExpectRejected(
      [](pb::Snapshot* s) { s->mutable_workloads(1)->set_waypoint_bypass_allowed(true); },
      {"workload frontend/web", "waypoint_bypass_allowed", "not enrolled here"});

  // A waypoint without pods is valid: traffic bound to it is refused by the data plane.
  pb::Snapshot proto;
  ASSERT_TRUE(ToProto(Full(), &proto).ok());
  proto.mutable_waypoints(0)->clear_instances();
  auto out = FromProto(proto);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->waypoints[0].instances.empty());

  Workload peer = Peer();
  peer.waypoint_bypass_allowed = true;
  pb::Workload pw;
  EXPECT_FALSE(ToProto(peer, &pw).ok());
}

// A peer's PeerAuthentication is not used by this node: it is not kept.
TEST(MeshWireTest, PeerMtlsIsNotKept) {
  pb::Snapshot proto;
  ASSERT_TRUE(ToProto(Full(), &proto).ok());
  proto.mutable_workloads(1)->mutable_mtls()->set_mode(pb::MTLS_MODE_STRICT);
  auto out = FromProto(proto);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->workloads[1].mtls.has_value());
}

TEST(MeshModelTest, AppProtocolFollowsIstiosProtocolSelection) {
  // appProtocol wins over the port name; the name counts up to its first '-'.
  EXPECT_EQ(SelectAppProtocol("", "http-web"), AppProtocol::kHttp);
  EXPECT_EQ(SelectAppProtocol("", "grpc"), AppProtocol::kHttp);
  EXPECT_EQ(SelectAppProtocol("HTTP2", "db"), AppProtocol::kHttp);
  EXPECT_EQ(SelectAppProtocol("tcp", "http-web"), AppProtocol::kOpaque);
  EXPECT_EQ(SelectAppProtocol("", "mysql"), AppProtocol::kOpaque);
  EXPECT_EQ(SelectAppProtocol("", "tls-passthrough"), AppProtocol::kOpaque);
  EXPECT_EQ(SelectAppProtocol("", "web"), AppProtocol::kDetect);
  EXPECT_EQ(SelectAppProtocol("", ""), AppProtocol::kDetect);
  EXPECT_EQ(SelectAppProtocol("kubernetes.io/h2c", "x"), AppProtocol::kHttp);
}

// A selector written as `{}` selects every workload of the namespace; no selector at all is not
// the same policy on the wire (has_selector), though both apply namespace-wide today.
TEST(MeshWireTest, EmptySelectorAndDefaultsRoundTrip) {
  Snapshot in;
  in.request_authentications = RequestAuthentications();
  in.request_authentications[1].selector = std::map<std::string, std::string>{};
  authn::RequestAuthentication bare;  // no selector, no targets, no rules: istiod accepts it
  bare.name = "bare";
  bare.namespace_name = "backend";
  in.request_authentications.push_back(bare);
  std::string bytes;
  ASSERT_TRUE(EncodeSnapshot(in, &bytes).ok());
  auto out = DecodeSnapshot(bytes);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, in);
  ASSERT_TRUE(out->request_authentications[1].selector.has_value());
  EXPECT_TRUE(out->request_authentications[1].selector->empty());
  EXPECT_FALSE(out->request_authentications[2].selector.has_value());
}

// Each value the agent's config layer refuses refuses the whole snapshot when it arrives, with
// the policy and the field named: the waypoint must never authenticate by a rule it guessed at.
TEST(MeshWireTest, RequestAuthenticationRefusalsNamePolicyAndField) {
  auto ra = [](pb::Snapshot* s, int i = 0) { return s->mutable_request_authentications(i); };
  auto rule = [](pb::Snapshot* s, int j = 0) {
    return s->mutable_request_authentications(0)->mutable_jwt_rules(j);
  };
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->clear_name(); },
                 {"RequestAuthentication backend/", ": name: missing"});
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->clear_namespace_(); },
                 {"RequestAuthentication /jwt", ": namespace: missing"});
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->set_namespace_("back/end"); },
                 {"RequestAuthentication back/end/jwt", "namespace", "contains '/'"});
  ExpectRejected([&](pb::Snapshot* s) { *s->add_request_authentications() = *ra(s); },
                 {"RequestAuthentication backend/jwt", "namespace/name", "listed twice"});
  // Read as "no selector", the labels would be dropped and the policy widened.
  ExpectRejected([&](pb::Snapshot* s) { ra(s, 1)->set_has_selector(false); },
                 {"RequestAuthentication frontend/jwt", "selector", "has_selector is not set"});
  ExpectRejected([&](pb::Snapshot* s) { *ra(s, 1)->add_target_refs() = ra(s)->target_refs(0); },
                 {"RequestAuthentication frontend/jwt", "target_refs", "together with a selector"});
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->mutable_target_refs(2)->set_kind("Pod"); },
                 {"RequestAuthentication backend/jwt", "target_refs[2]: unsupported target"});
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->mutable_target_refs(1)->clear_name(); },
                 {"RequestAuthentication backend/jwt", "target_refs[1].name: is required"});
  ExpectRejected([&](pb::Snapshot* s) { ra(s)->mutable_target_refs(3)->set_name("other"); },
                 {"RequestAuthentication backend/jwt", "target_refs[3].name",
                  "only GatewayClass 'istio-waypoint'"});
  ExpectRejected([&](pb::Snapshot* s) { rule(s, 1)->clear_issuer(); },
                 {"RequestAuthentication backend/jwt", "jwt_rules[1].issuer: missing"});
  ExpectRejected([&](pb::Snapshot* s) { rule(s, 1)->set_jwks(rule(s, 0)->jwks()); },
                 {"RequestAuthentication backend/jwt", "jwt_rules[1]: jwks and jwks_uri"});
  ExpectRejected([&](pb::Snapshot* s) { rule(s)->mutable_from_headers(1)->clear_name(); },
                 {"RequestAuthentication backend/jwt", "jwt_rules[0].from_headers[1].name"});
  ExpectRejected(
      [&](pb::Snapshot* s) { rule(s)->mutable_output_claim_to_headers(1)->clear_claim(); },
      {"RequestAuthentication backend/jwt", "jwt_rules[0].output_claim_to_headers[1].claim"});
  ExpectRejected(
      [&](pb::Snapshot* s) { rule(s)->mutable_output_claim_to_headers(0)->clear_header(); },
      {"RequestAuthentication backend/jwt", "jwt_rules[0].output_claim_to_headers[0].header"});
}

TEST(MeshWireTest, JwksFetchTimeoutIsSetPositiveAndBounded) {
  auto timeout = [](pb::Snapshot* s) {
    return s->mutable_request_authentications(0)->mutable_jwt_rules(0)->mutable_timeout();
  };
  const std::string policy = "RequestAuthentication backend/jwt";
  ExpectRejected(
      [](pb::Snapshot* s) {
        s->mutable_request_authentications(0)->mutable_jwt_rules(0)->clear_timeout();
      },
      {policy, "jwt_rules[0].timeout: missing"});
  ExpectRejected([&](pb::Snapshot* s) { timeout(s)->set_seconds(-1); },
                 {policy, "jwt_rules[0].timeout: negative"});
  ExpectRejected(
      [&](pb::Snapshot* s) {
        timeout(s)->set_seconds(0);
        timeout(s)->set_nanos(-5);
      },
      {policy, "jwt_rules[0].timeout: negative"});
  ExpectRejected([&](pb::Snapshot* s) { timeout(s)->set_nanos(1'000'000'000); },
                 {policy, "jwt_rules[0].timeout", "not below one second"});
  ExpectRejected(
      [&](pb::Snapshot* s) {
        timeout(s)->set_seconds(0);
        timeout(s)->set_nanos(0);
      },
      {policy, "jwt_rules[0].timeout", "not longer than 0s"});
  for (int64_t seconds : {int64_t{1} << 32, std::numeric_limits<int64_t>::max()}) {
    ExpectRejected([&](pb::Snapshot* s) { timeout(s)->set_seconds(seconds); },
                   {policy, "jwt_rules[0].timeout", "not shorter than 4294967296s"});
  }

  // The agent cannot send one either: each has no wire form or one the data plane refuses.
  for (absl::Duration bad : {absl::ZeroDuration(), absl::Seconds(-1), authn::kJwksFetchTimeoutLimit,
                             absl::InfiniteDuration(), absl::Nanoseconds(1) / 4}) {
    authn::RequestAuthentication ra = RequestAuthentications()[0];
    ra.jwt_rules[1].timeout = bad;
    pb::RequestAuthentication out;
    absl::Status status = ToProto(ra, &out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << absl::FormatDuration(bad);
    EXPECT_NE(status.message().find("RequestAuthentication backend/jwt: jwt_rules[1].timeout"),
              std::string::npos)
        << status;
    Snapshot snapshot;
    snapshot.request_authentications = {ra};
    std::string bytes;
    EXPECT_FALSE(EncodeSnapshot(snapshot, &bytes).ok()) << absl::FormatDuration(bad);
  }
}

// A provider the agent could not have sent refuses the whole snapshot, naming provider and field:
// the waypoint must never ask an authorizer (or skip asking one) by a definition it guessed at.
TEST(MeshWireTest, ExtAuthzProviderRefusalsNameProviderAndField) {
  auto p = [](pb::Snapshot* s, int i = 0) { return s->mutable_ext_authz_providers(i); };
  const std::string http = "ext_authz provider sample-ext-authz-http";
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_kind(pb::EXT_AUTHZ_KIND_UNSPECIFIED); },
                 {http, "kind: EXT_AUTHZ_KIND_UNSPECIFIED"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_kind(static_cast<pb::ExtAuthzKind>(9)); },
                 {http, "kind: unknown kind 9"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->clear_name(); },
                 {"ext_authz provider ''", "name: missing"});
  ExpectRejected([&](pb::Snapshot* s) { p(s, 1)->set_name(p(s)->name()); },
                 {http, "name: listed twice"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_port(0); }, {http, "port: 0 is not a port"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_port(65536); }, {http, "port: 65536"});
  for (uint32_t status : {0u, 99u, 600u, 4294967295u}) {
    ExpectRejected([&](pb::Snapshot* s) { p(s)->set_status_on_error(status); },
                   {http, "status_on_error", "100..599"});
  }
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_unresolved("also this"); },
                 {http, "service_key: set together with unresolved"});
  ExpectRejected([&](pb::Snapshot* s) { p(s, 1)->clear_unresolved(); },
                 {"ext_authz provider sample-ext-authz-grpc", "service_key: missing"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_service_key("backend/nope"); },
                 {http, "service_key: 'backend/nope' is not a service of the snapshot"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_service_key("api"); },
                 {http, "service_key", "not namespace/name"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->clear_timeout(); }, {http, "timeout: missing"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->mutable_timeout()->set_seconds(-1); },
                 {http, "timeout"});
  ExpectRejected(
      [&](pb::Snapshot* s) {
        p(s)->mutable_timeout()->set_seconds(0);
        p(s)->mutable_timeout()->set_nanos(0);
      },
      {http, "timeout", "longer than 0s"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->mutable_timeout()->set_seconds(int64_t{1} << 32); },
                 {http, "timeout", "shorter than 2^32 s"});
  ExpectRejected(
      [&](pb::Snapshot* s) {
        p(s)->mutable_include_request_body()->set_max_request_bytes(kMaxExtAuthzRequestBytes + 1);
      },
      {http, "include_request_body.max_request_bytes", "8388609 is over 8388608"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_include_request_headers(1, "Cookie"); },
                 {http, "include_request_headers[1]", "'Cookie' is not a lower-case header name"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->add_headers_to_upstream_on_allow(""); },
                 {http, "headers_to_upstream_on_allow[1]", "is not a lower-case header name"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->set_headers_to_downstream_on_deny(0, "a b"); },
                 {http, "headers_to_downstream_on_deny[0]"});
  ExpectRejected([&](pb::Snapshot* s) { p(s)->add_headers_to_downstream_on_allow("x:y"); },
                 {http, "headers_to_downstream_on_allow[1]"});
  ExpectRejected(
      [&](pb::Snapshot* s) { p(s)->mutable_include_additional_headers(0)->set_name("X-Added"); },
      {http, "include_additional_headers[0].name"});
  for (const char* bad : {"a\rb", "a\nb", "a\0b"}) {
    ExpectRejected(
        [&](pb::Snapshot* s) {
          p(s)->mutable_include_additional_headers(1)->set_value(std::string(bad, 3));
        },
        {http, "include_additional_headers[1].value: holds CR, LF or NUL"});
    ExpectRejected([&](pb::Snapshot* s) { p(s)->set_path_prefix(std::string(bad, 3)); },
                   {http, "path_prefix: holds CR, LF or NUL"});
  }

  // The agent cannot send one either.
  authz::ExtAuthzProvider bad = ExtAuthzProviders()[0];
  bad.status_on_error = 42;
  pb::ExtAuthzProvider out;
  EXPECT_FALSE(ToProto(bad, &out).ok());
  Snapshot snapshot = Full();
  snapshot.ext_authz_providers[0].service_key = "backend/gone";
  pb::Snapshot proto;
  absl::Status status = ToProto(snapshot, &proto);
  EXPECT_NE(status.message().find("'backend/gone' is not a service of the snapshot"),
            std::string::npos)
      << status;
  std::string bytes;
  EXPECT_FALSE(EncodeSnapshot(snapshot, &bytes).ok());
  snapshot = Full();
  snapshot.ext_authz_providers[1].name = snapshot.ext_authz_providers[0].name;
  EXPECT_FALSE(EncodeSnapshot(snapshot, &bytes).ok());
}

TEST(MeshWireTest, ExtAuthzProvidersStreamAndRoundTrip) {
  const Snapshot in = Full();
  std::string bytes;
  ASSERT_TRUE(EncodeSnapshot(in, &bytes).ok());
  auto out = DecodeSnapshot(bytes);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->ext_authz_providers.size(), 2u);
  EXPECT_EQ(out->ext_authz_providers, in.ext_authz_providers);
  EXPECT_EQ(out->ext_authz_providers[0].timeout, absl::Milliseconds(250) + absl::Nanoseconds(3));
  EXPECT_EQ(out->ext_authz_providers[1].timeout, absl::Seconds(600));
  EXPECT_FALSE(out->ext_authz_providers[1].include_request_body.has_value());
  // The bound itself is accepted.
  Snapshot max = in;
  max.ext_authz_providers[0].include_request_body->max_request_bytes = kMaxExtAuthzRequestBytes;
  ASSERT_TRUE(EncodeSnapshot(max, &bytes).ok());
  EXPECT_TRUE(DecodeSnapshot(bytes).ok());
}

}  // namespace
}  // namespace ambit::mesh
