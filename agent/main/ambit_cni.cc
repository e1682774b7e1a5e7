// ambit-cni: the chained CNI plug-in that hands each new pod to ambitd over ZDS and waits until
// it is captured (README "CNI"). Run by a container runtime with CNI_COMMAND set and the network
// configuration on stdin; run by the DaemonSet's init container with --install / --uninstall.
// Links Protobuf, nlohmann-json and abseil only (docs/ARCHITECTURE.md#processes).

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/cni/cni.h"
#include "agent/cni/install.h"
#include "agent/cni/plugin.h"
#include "agent/cni/zds_client.h"
#include "agent/common/daemon_flags.h"

ABSL_FLAG(bool, install, false,
          "copy this binary into --cni-bin-dir as ambit-cni and chain it last in the primary "
          "network configuration of --cni-conf-dir, then exit");
ABSL_FLAG(bool, uninstall, false,
          "remove ambit-cni from every network configuration of --cni-conf-dir and its binary "
          "from --cni-bin-dir, then exit");
ABSL_FLAG(std::string, cni_bin_dir, "/opt/cni/bin", "the node's CNI plug-in directory");
ABSL_FLAG(std::string, cni_conf_dir, "/etc/cni/net.d", "the node's CNI configuration directory");
ABSL_FLAG(std::string, zds_socket, std::string(ambit::cni::kDefaultZdsSocket),
          "--install: the zdsSocket the plug-in connects to (ambitd's --zds-listen, as the "
          "node sees it)");
ABSL_FLAG(absl::Duration, timeout, ambit::cni::kDefaultTimeout,
          "--install: the plug-in's timeout (how long ADD waits for ambitd's ack)");
ABSL_FLAG(std::vector<std::string>, exclude_namespaces, std::vector<std::string>{"kube-system"},
          "--install: namespaces whose pods the plug-in passes through (comma-separated)");

namespace {

std::string ReadStdin() {
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, n);
    // One byte over the limit is enough for the parser to refuse it.
    if (text.size() > ambit::cni::kMaxConfigBytes) break;
  }
  return text;
}

int RunInstall(bool install) {
  ambit::cni::InstallOptions options;
  options.bin_dir = absl::GetFlag(FLAGS_cni_bin_dir);
  options.conf_dir = absl::GetFlag(FLAGS_cni_conf_dir);
  absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout <= absl::ZeroDuration() || timeout > ambit::cni::kMaxTimeout) {
    fprintf(stderr, "ambit-cni: --timeout %s out of range (0 < timeout <= 5m)\n",
            absl::FormatDuration(timeout).c_str());
    return 2;
  }
  const std::string socket = absl::GetFlag(FLAGS_zds_socket);
  if (socket.empty() || socket[0] != '/') {
    fprintf(stderr, "ambit-cni: --zds-socket must be an absolute path\n");
    return 2;
  }
  options.entry["zdsSocket"] = socket;
  options.entry["timeout"] = absl::ToDoubleSeconds(timeout);
  options.entry["excludeNamespaces"] = absl::GetFlag(FLAGS_exclude_namespaces);
  if (!install) {
    absl::Status s = ambit::cni::Uninstall(options);
    if (!s.ok()) {
      fprintf(stderr, "ambit-cni --uninstall: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    fprintf(stderr, "ambit-cni: removed from %s and %s\n", options.conf_dir.c_str(),
            options.bin_dir.c_str());
    return 0;
  }
  absl::StatusOr<ambit::cni::InstallReport> report = ambit::cni::Install(options);
  if (!report.ok()) {
    fprintf(stderr, "ambit-cni --install: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  fprintf(stderr, "ambit-cni: installed in %s; %s %s\n", options.bin_dir.c_str(),
          report->conf_file.c_str(),
          report->converted      ? "(converted to a conflist) chains it last"
          : report->conf_changed ? "chains it last"
                                 : "already chained it last");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    ambit::ParseDaemonFlags(
        argc, argv, "ambit-cni",
        "the chained CNI plug-in of ambit (run by the container runtime), or "
        "ambit-cni --install | --uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR]");
    if (absl::GetFlag(FLAGS_install) && absl::GetFlag(FLAGS_uninstall)) {
      fprintf(stderr, "ambit-cni: --install and --uninstall exclude each other\n");
      return 2;
    }
    if (absl::GetFlag(FLAGS_install) || absl::GetFlag(FLAGS_uninstall)) {
      return RunInstall(absl::GetFlag(FLAGS_install));
    }
    fprintf(stderr, "ambit-cni: flags only go with --install or --uninstall\n");
    return 2;
  }
  std::string input = ReadStdin();
  ambit::cni::ZdsHandOff handoff;
  ambit::cni::Outcome outcome = ambit::cni::RunCommand(
      [](const char* name) { return getenv(name); }, input, handoff, absl::Now());
  if (!outcome.log.empty()) fprintf(stderr, "%s\n", outcome.log.c_str());
  if (!outcome.stdout_text.empty()) {
    fwrite(outcome.stdout_text.data(), 1, outcome.stdout_text.size(), stdout);
    fputc('\n', stdout);
  }
  fflush(stdout);
  return outcome.exit_code;
}
