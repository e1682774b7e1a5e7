#include "agent/issuance/ca_roots.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "agent/common/log.h"
#include "agent/issuance/signer.h"

namespace ambit::issuance {
namespace {

constexpr const char* kComponent = "ca";
// Istio's root bundle holds a few roots during a rotation; a file far larger than that is a
// mistake (a wrong path), never something to hold in memory and hand to every data plane.
constexpr size_t kMaxRootsBytes = 1 << 20;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};

class RootCertFile final : public RootCertSource {
 public:
  explicit RootCertFile(std::string path)
      : path_(std::move(path)), holder_(absl::StrCat("file ", path_)) {}

  absl::StatusOr<std::string> Roots() override {
    (void)Refresh();  // a failure keeps the last good roots
    return holder_.Current();
  }
  std::string Description() const override { return holder_.description(); }

  // Re-reads the file when stat says it changed. Public for the first read at start.
  absl::Status Refresh() {
    absl::MutexLock lock(&mu_);
    struct stat st;
    if (stat(path_.c_str(), &st) != 0) {
      const absl::Status why = absl::ErrnoToStatus(errno, absl::StrCat("stat ", path_));
      seen_ = {};  // read again once it is back, whatever its stat then
      holder_.Failed(why);
      return why;
    }
    const Stamp now{st.st_dev,          st.st_ino,         st.st_size,        st.st_mtim.tv_sec,
                    st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec};
    if (now == seen_) return absl::OkStatus();
    seen_ = now;
    if (static_cast<size_t>(st.st_size) > kMaxRootsBytes) {
      const absl::Status why = absl::InvalidArgumentError(
          absl::StrCat(path_, " is ", st.st_size, " bytes; CA roots are at most ", kMaxRootsBytes));
      holder_.Failed(why);
      return why;
    }
    std::ifstream in(path_);
    if (!in) {
      const absl::Status why = absl::NotFoundError(absl::StrCat("cannot read CA roots ", path_));
      seen_ = {};
      holder_.Failed(why);
      return why;
    }
    std::stringstream text;
    text << in.rdbuf();
    return holder_.Offer(text.str(), path_).status();
  }

 private:
  using Stamp = std::tuple<dev_t, ino_t, off_t, time_t, long, time_t, long>;
  const std::string path_;
  RootCertHolder holder_;
  absl::Mutex mu_;  // one re-read at a time
  Stamp seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::string> ValidateRoots(const std::string& pem, const std::string& where) {
  const std::vector<std::string> certs = SplitPemCertificates(pem);
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": no PEM certificate found"));
  }
  std::string out;
  for (size_t i = 0; i < certs.size(); ++i) {
    std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(certs[i].data(), certs[i].size()));
    std::unique_ptr<X509, X509Free> x509(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!x509) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": certificate ", i + 1, " of ", certs.size(), " does not parse"));
    }
    out += certs[i];
  }
  return out;
}

absl::StatusOr<bool> RootCertHolder::Offer(const std::string& pem, const std::string& where) {
  auto roots = ValidateRoots(pem, where);
  absl::MutexLock lock(&mu_);
  if (!roots.ok()) {
    LogOnce(roots.status());
    return roots.status();
  }
  last_error_.clear();
  if (*roots == roots_) return false;
  const size_t before = SplitPemCertificates(roots_).size();
  roots_ = std::move(*roots);
  AMBIT_LOG(kComponent, Info) << "external CA roots from " << description_ << ": "
                              << SplitPemCertificates(roots_).size() << " root(s)"
                              << (before == 0 ? std::string()
                                              : absl::StrCat(" (were ", before, ")"));
  return true;
}

void RootCertHolder::Failed(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  LogOnce(why);
}

void RootCertHolder::LogOnce(const absl::Status& why) {
  std::string text(why.message());
  if (text == last_error_) return;
  last_error_ = text;
  AMBIT_LOG(kComponent, Warning) << "external CA roots from " << description_ << ": " << text
                                 << (roots_.empty() ? "; no roots yet, nothing is sent to the CA"
                                                    : "; the last good roots stay in force");
}

absl::StatusOr<std::string> RootCertHolder::Current() const {
  absl::MutexLock lock(&mu_);
  if (roots_.empty()) {
    return absl::UnavailableError(
        absl::StrCat("no roots for the external CA from ", description_,
                     last_error_.empty() ? std::string() : absl::StrCat(" (", last_error_, ")"),
                     "; nothing is sent to the CA without them"));
  }
  return roots_;
}

absl::StatusOr<std::shared_ptr<RootCertSource>> MakeRootCertFile(const std::string& path) {
  auto file = std::make_shared<RootCertFile>(path);
  if (absl::Status first = file->Refresh(); !first.ok()) {
    return absl::Status(first.code(), absl::StrCat(first.message(), " (--ca-root-cert)"));
  }
  return file;
}

}  // namespace ambit::issuance
