// The data-plane processes' shared main: ambit-tunnel and ambit-waypoint take the same flags and
// run the same shell (agent/tunnel/control.h); ambit-waypoint adds its handler for its pods'
// listeners (docs/ARCHITECTURE.md#processes).
#include "agent/main/dataplane_main.h"

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/common/allocator.h"
#include "agent/common/capabilities.h"
#include "agent/common/daemon_flags.h"
#include "agent/common/log.h"
#include "agent/common/probe_source.h"
#include "agent/common/socket_mark.h"
#include "agent/tunnel/control.h"
#include "agent/tunnel/flow_stats.h"

ABSL_FLAG(std::string, control_socket, "", "unix socket ambitd connects to (required)");
ABSL_FLAG(int, workers, 2, "worker threads");
ABSL_FLAG(uint32_t, socket_mark, ambit::kDefaultSocketMark,
          "SO_MARK of every socket the data plane opens");
ABSL_FLAG(std::string, kubelet_probe_source, "",
          "comma-separated addresses (one per family) from which plaintext to a pod, arriving from "
          "outside the pod's network namespace, is a kubelet probe; empty: none (ambitd passes "
          "its own)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");
ABSL_FLAG(absl::Duration, idle_timeout, absl::Seconds(30),
          "how long a pooled HBONE connection with no stream stays open");
ABSL_FLAG(uint32_t, failed_stream_burst, 200,
          "HBONE CONNECTs per client connection that may fail or be reset before the answer, "
          "before the rate limit applies");
ABSL_FLAG(double, failed_stream_rate, 100,
          "HBONE CONNECTs per second and client connection that may fail or be reset before the "
          "answer (beyond: GOAWAY ENHANCE_YOUR_CALM)");
ABSL_FLAG(std::string, access_log_format, "text",
          "one line per connection when it closes: text (key=value), json, ztunnel (ztunnel's "
          "keys, key=value), ztunnel-json, or off");
ABSL_FLAG(uint64_t, max_config_bytes, uint64_t{1} << 30,
          "largest configuration snapshot accepted; a larger one is refused and the data plane "
          "refuses new connections until a smaller one arrives");

namespace ambit {
namespace {

// Everything a data-plane process does with privilege happens on its workers, for as long as it
// runs: opening sockets inside pods (setns) and marking them (SO_MARK on every socket,
// IP_TRANSPARENT on delivery sockets). Its BPF map use (look-ups and deletes on maps ambitd
// passed it) needs no capability. Measured (tests/e2e/test_caps.py): without CAP_NET_ADMIN
// every connection fails at "SO_MARK on upstream socket: Operation not permitted", without
// CAP_SYS_ADMIN at "setns into pod network namespace". (On Linux 5.17+ CAP_NET_RAW would do for
// SO_MARK and IP_TRANSPARENT; 5.15 and 5.16, which ambit supports, want CAP_NET_ADMIN.)
const std::vector<caps::Need>& DataPlaneNeeds() {
  static const auto* needs = new std::vector<caps::Need>{
      {CAP_SYS_ADMIN, "enter pod network namespaces (setns) to open sockets there"},
      {CAP_NET_ADMIN, "SO_MARK on its sockets and IP_TRANSPARENT on delivery sockets"},
  };
  return *needs;
}

}  // namespace

int DataPlaneMain(int argc, char** argv, const char* name, const char* usage,
                  const std::function<absl::Status(tunnel::TunnelOptions&)>& customize) {
  ambit::FixAllocatorThresholds();
  ambit::ParseDaemonFlags(argc, argv, name, usage);
  ambit::log::Level level;
  if (!ambit::log::ParseLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << name << ": --log-level must be debug, info, warn or error\n";
    return 2;
  }
  ambit::log::SetLevel("", level);
  std::string access_log = absl::GetFlag(FLAGS_access_log_format);
  auto access_log_format = ambit::tunnel::ParseAccessLogFormat(access_log);
  if (!access_log_format && access_log != "off") {
    std::cerr << name << ": --access-log-format must be text, json, ztunnel, ztunnel-json or off\n";
    return 2;
  }
  if (access_log == "off") ambit::log::SetLevel("access", ambit::log::Level::kWarning);
  ambit::tunnel::TunnelOptions options;
  options.control_socket = absl::GetFlag(FLAGS_control_socket);
  options.workers = std::max(1, absl::GetFlag(FLAGS_workers));
  options.socket_mark = absl::GetFlag(FLAGS_socket_mark);
  if (absl::Status mark_ok = ambit::CheckSocketMark(options.socket_mark); !mark_ok.ok()) {
    std::cerr << name << ": " << mark_ok.message() << "\n";
    return 2;
  }
  auto probe_sources = ambit::ParseKubeletProbeSources(absl::GetFlag(FLAGS_kubelet_probe_source));
  if (!probe_sources.ok()) {
    std::cerr << name << ": --kubelet-probe-source: " << probe_sources.status().message() << "\n";
    return 2;
  }
  options.kubelet_probe_sources = *std::move(probe_sources);
  options.access_log_format = access_log_format.value_or(ambit::tunnel::AccessLogFormat::kText);
  options.idle_timeout = absl::GetFlag(FLAGS_idle_timeout);
  options.max_snapshot_bytes = absl::GetFlag(FLAGS_max_config_bytes);
  options.failed_stream_burst = absl::GetFlag(FLAGS_failed_stream_burst);
  options.failed_stream_rate = absl::GetFlag(FLAGS_failed_stream_rate);
  if (options.failed_stream_burst < 1 || !(options.failed_stream_rate >= 0)) {
    std::cerr << name
              << ": --failed-stream-burst must be at least 1 and "
                 "--failed-stream-rate at least 0\n";
    return 2;
  }
  if (options.control_socket.empty()) {
    std::cerr << name << ": --control-socket is required\n";
    return 2;
  }
  // Before any thread starts (the workers inherit the reduced sets): nothing the process does
  // later needs more, and a process parsing untrusted TLS and HTTP should hold no more.
  auto granted = caps::Current();
  absl::Status caps_ok = granted.ok() ? caps::CheckNeeds(name, granted->effective, DataPlaneNeeds())
                                      : granted.status();
  if (caps_ok.ok()) caps_ok = caps::DropAllExcept(caps::MaskOf(DataPlaneNeeds()));
  if (!caps_ok.ok()) {
    AMBIT_LOG("tunnel", Error) << "not starting: " << caps_ok.message();
    return 1;
  }
#ifdef NDEBUG
  // Debian builds abseil without NDEBUG, which leaves Mutex deadlock detection on: every Lock
  // then also takes one process-wide lock to update the lock-order graph, so workers that never
  // share a mutex still contend. A debug build of ambit keeps it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  if (customize) {
    if (absl::Status s = customize(options); !s.ok()) {
      std::cerr << name << ": " << s.message() << "\n";
      return 2;
    }
  }
  auto tunnel = ambit::tunnel::Tunnel::Create(options);
  if (!tunnel.ok()) {
    AMBIT_LOG("tunnel", Error) << "not starting: " << tunnel.status().message();
    return 1;
  }
  auto status = (*tunnel)->Run();
  if (!status.ok()) {
    AMBIT_LOG("tunnel", Error) << status.message();
    return 1;
  }
  return 0;
}

}  // namespace ambit
