#pragma once

// `ambit-cni --install` / `--uninstall`, run on each node by an init container of the ambit
// DaemonSet: the binary into the CNI bin dir, and ambit-cni as the last plug-in of the primary
// network configuration (the file the runtime uses: the lexically first *.conf, *.conflist or
// *.json of the CNI conf dir). Every write is a rename of a complete file in the same directory,
// so a runtime reading concurrently sees the old file or the new one, never half of one.
// Thread-compatible.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace ambit::cni {

inline constexpr absl::string_view kPluginType = "ambit-cni";
// Set in ambit-cni's entry when --install turned a single-plug-in *.conf into a conflist: the
// file name it had, so --uninstall can put it back as it was.
inline constexpr absl::string_view kConvertedFromKey = "ambitConvertedFrom";

struct InstallOptions {
  std::string bin_dir = "/opt/cni/bin";
  std::string conf_dir = "/etc/cni/net.d";
  std::string self = "/proc/self/exe";  // the binary copied into bin_dir
  // ambit-cni's entry (its type is set to ambit-cni); its other keys are the plug-in's config.
  nlohmann::ordered_json entry = nlohmann::ordered_json::object();
};

// What --install did, for its log line.
struct InstallReport {
  std::string conf_file;  // the file now holding the entry
  bool conf_changed = false;
  bool converted = false;  // a *.conf became a *.conflist
};

absl::StatusOr<InstallReport> Install(const InstallOptions& options);

// Removes ambit-cni's entry from every network configuration in conf_dir (a converted *.conf
// goes back to its name and shape), then the binary. Nothing to remove is success.
absl::Status Uninstall(const InstallOptions& options);

// The edits, on text (pure). Each fails, naming `file`, on bytes that are not a network
// configuration it can read; the caller then leaves the file untouched.
// A conflist with the entry last (any earlier ambit-cni entry removed).
absl::StatusOr<std::string> ConflistWithPlugin(absl::string_view text, absl::string_view file,
                                               const nlohmann::ordered_json& entry);
// A conflist from a single-plug-in configuration, with the entry last (converted_from set).
absl::StatusOr<std::string> ConfToConflist(absl::string_view text, absl::string_view file,
                                           const nlohmann::ordered_json& entry);
// The configuration without ambit-cni, and the file it belongs in: the same, or the *.conf it
// was converted from. nullopt when it holds no ambit-cni entry.
struct Removed {
  std::string text;
  std::string file;
};
absl::StatusOr<std::optional<Removed>> WithoutPlugin(absl::string_view text,
                                                     absl::string_view file);

}  // namespace ambit::cni
