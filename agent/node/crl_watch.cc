#include "agent/node/crl_watch.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/ca/crl_file.h"
#include "agent/common/log.h"

namespace ambit::node {
namespace {

constexpr const char* kComponent = "ca";  // CA material: the CRLs of the trust bundle

// The whole file, bounded; NotFound when it is absent.
absl::StatusOr<std::string> Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::string out;
  char buf[64 * 1024];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    out.append(buf, static_cast<size_t>(in.gcount()));
    if (out.size() > ca::kMaxCrlFileBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": larger than ", ca::kMaxCrlFileBytes, " bytes"));
    }
  }
  return out;
}

}  // namespace

bool CrlWatch::Poll(const std::vector<std::string>& roots) {
  absl::StatusOr<std::string> content = Read(path_);
  if (!content.ok()) {
    if (problem_.message() != content.status().message()) {
      AMBIT_LOG(kComponent, Error)
          << "--crl-file " << content.status().message() << "; "
          << (pems_.empty()
                  ? "no CRL in force"
                  : absl::StrCat("the last good ", pems_.size(), " CRL(s) stay in force"));
    }
    problem_ = content.status();
    read_once_ = false;  // read again in full once it is back
    return false;
  }
  if (read_once_ && *content == content_) return false;
  read_once_ = true;
  content_ = *std::move(content);
  absl::StatusOr<ca::CrlFileContent> parsed = ca::ParseCrlFile(content_, path_, roots);
  if (!parsed.ok()) {
    problem_ = parsed.status();
    AMBIT_LOG(kComponent, Error) << "--crl-file rejected: " << parsed.status().message() << "; "
                                 << (pems_.empty() ? "no CRL in force"
                                                   : absl::StrCat("the last good ", pems_.size(),
                                                                  " CRL(s) stay in force"));
    return false;
  }
  problem_ = absl::OkStatus();
  AMBIT_LOG(kComponent, Info) << "--crl-file " << path_ << ": " << parsed->pems.size()
                              << " CRL(s), " << parsed->revoked << " revoked certificate(s)"
                              << (parsed->issuers.empty()
                                      ? std::string()
                                      : absl::StrCat(", issuers: ",
                                                     absl::StrJoin(parsed->issuers, "; ")));
  if (parsed->pems == pems_) return false;
  pems_ = std::move(parsed->pems);
  return true;
}

}  // namespace ambit::node
