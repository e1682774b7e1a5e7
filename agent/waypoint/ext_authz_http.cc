// Placeholder until the Http ext_authz client lands: every check fails (the filter then applies
// failOpen / statusOnError).

#include <memory>
#include <utility>

#include "agent/waypoint/ext_authz_client.h"

namespace ambit::waypoint {
namespace {

class UnimplementedHttpClient final : public AuthorizerClient {
 public:
  UnimplementedHttpClient(authz::ExtAuthzProvider provider, EventLoop* loop)
      : provider_(std::move(provider)), loop_(loop) {}
  std::unique_ptr<AsyncCheck> Check(const AuthzCheckRequest&,
                                    std::function<void(AuthzCheckResponse)> done) override {
    auto handle = std::make_unique<Handle>();
    loop_->Defer([alive = std::weak_ptr<bool>(handle->alive), done = std::move(done)] {
      if (!alive.lock()) return;
      AuthzCheckResponse r;
      r.detail = "the http ext_authz client is not built yet";
      done(std::move(r));
    });
    return handle;
  }
  const authz::ExtAuthzProvider& provider() const override { return provider_; }

 private:
  struct Handle final : AsyncCheck {
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  };
  authz::ExtAuthzProvider provider_;
  EventLoop* loop_;
};

}  // namespace

std::unique_ptr<AuthorizerClient> NewHttpAuthorizerClient(authz::ExtAuthzProvider provider,
                                                          UpstreamConnector*, EventLoop* loop,
                                                          const Clock*) {
  return std::make_unique<UnimplementedHttpClient>(std::move(provider), loop);
}

}  // namespace ambit::waypoint
