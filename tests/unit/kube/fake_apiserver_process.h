#pragma once

// tests/kube/fake_apiserver.py as a child process, for the client and source tests: started on
// a loopback port with a fresh state directory, driven through its /__fake/ control endpoint
// (with a KubeClient holding the control token), killed by PID at the end.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/kube/client.h"
#include "gtest/gtest.h"

extern char** environ;

namespace ambit::kube::testing {

class FakeApiServerProcess {
 public:
  FakeApiServerProcess() {
    char tmpl[] = "/tmp/ambit-kube-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    const std::string script = std::string(AMBIT_SOURCE_DIR) + "/tests/kube/fake_apiserver.py";
    const char* argv[] = {
        "/usr/bin/python3", script.c_str(),        "--listen", "127.0.0.1:0", "--state-dir",
        dir_.c_str(),       "--bookmark-interval", "1",        nullptr};
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, const_cast<char**>(argv), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    FILE* f = ::fdopen(out[0], "r");
    char line[256];
    while (f != nullptr && std::fgets(line, sizeof line, f) != nullptr) {
      if (std::sscanf(line, "listening %d", &port_) == 1) break;
    }
    // The pipe stays open (the server may print more); closed with f at the end.
    out_ = f;
  }
  ~FakeApiServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status;
      ::waitpid(pid_, &status, 0);
    }
    if (out_ != nullptr) std::fclose(out_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  bool ok() const { return pid_ > 0 && port_ > 0; }
  int port() const { return port_; }
  std::string url() const { return absl::StrCat("https://127.0.0.1:", port_); }
  const std::string& dir() const { return dir_; }
  std::string token_file() const { return dir_ + "/token"; }
  std::string ca_file() const { return dir_ + "/ca.crt"; }

  std::unique_ptr<KubeClient> Client(KubeClient::Options options = {}) const {
    auto config = KubeConfig::ForServer(url(), token_file(), ca_file());
    EXPECT_TRUE(config.ok()) << config.status();
    auto client = KubeClient::Create(*config, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // POST /__fake/<op> with a JSON body; the answer's body.
  std::string Control(const std::string& op, const std::string& json) {
    if (control_ == nullptr) {
      auto config = KubeConfig::ForServer(url(), dir_ + "/control-token", ca_file());
      control_ = std::move(*KubeClient::Create(*config));
    }
    auto r = control_->Request("POST", "/__fake/" + op, json);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->status, 200) << op << ": " << r->body;
    return r->body;
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  FILE* out_ = nullptr;
  std::unique_ptr<KubeClient> control_;
};

}  // namespace ambit::kube::testing
