#include "agent/ca/openssl_util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "agent/common/unique_fd.h"

namespace ambit::ca::internal {
namespace {

// Passed wherever OpenSSL would otherwise prompt on the terminal for a passphrase.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

absl::StatusOr<BioPtr> MemoryBio(absl::string_view data) {
  if (data.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError("input too large");
  }
  BioPtr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (bio == nullptr) return OpenSslError(absl::StatusCode::kInternal, "BIO_new_mem_buf");
  return bio;
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

bool IsEndOfPemInput(unsigned long err) {
  return ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
}

}  // namespace

absl::Status OpenSslError(absl::StatusCode code, absl::string_view what) {
  std::string message(what);
  const char* sep = ": ";
  unsigned long err;
  while ((err = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&message, sep, buf);
    sep = "; ";
  }
  return absl::Status(code, message);
}

absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(absl::string_view pem,
                                                       absl::string_view source, bool allow_empty) {
  auto bio = MemoryBio(pem);
  if (!bio.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": too large"));
  ERR_clear_error();
  std::vector<X509Ptr> certs;
  while (true) {
    X509Ptr cert(PEM_read_bio_X509(bio->get(), nullptr, NoPassphrase, nullptr));
    if (cert == nullptr) {
      if (IsEndOfPemInput(ERR_peek_last_error())) {
        ERR_clear_error();
        break;
      }
      return OpenSslError(absl::StatusCode::kInvalidArgument,
                          absl::StrCat(source, ": certificate ", certs.size() + 1,
                                       " is not a valid PEM X.509 certificate"));
    }
    certs.push_back(std::move(cert));
  }
  if (certs.empty() && !allow_empty) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no PEM certificate (-----BEGIN CERTIFICATE-----) found"));
  }
  return certs;
}

absl::StatusOr<EvpPkeyPtr> ParsePrivateKey(absl::string_view pem, absl::string_view source) {
  auto bio = MemoryBio(pem);
  if (!bio.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": too large"));
  ERR_clear_error();
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio->get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    // Never echo the key's bytes: only say what kind of problem it is.
    if (pem.find("ENCRYPTED") != absl::string_view::npos) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": the private key is encrypted; provide it unencrypted"));
    }
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(source, ": not a valid PEM private key"));
  }
  return key;
}

absl::StatusOr<X509ReqPtr> ParseCsr(absl::string_view pem) {
  auto bio = MemoryBio(pem);
  if (!bio.ok()) return absl::InvalidArgumentError("CSR too large");
  ERR_clear_error();
  X509ReqPtr csr(PEM_read_bio_X509_REQ(bio->get(), nullptr, NoPassphrase, nullptr));
  if (csr == nullptr) {
    return OpenSslError(
        absl::StatusCode::kInvalidArgument,
        "CSR is not a valid PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)");
  }
  return csr;
}

std::string CsrToPem(const X509_REQ* csr) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509_REQ(bio.get(), csr) != 1) {
    ERR_clear_error();
    return std::string();
  }
  return BioContents(bio.get());
}

std::string CertificateToPem(const X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert) != 1) {
    ERR_clear_error();
    return std::string();
  }
  return BioContents(bio.get());
}

absl::StatusOr<std::string> PrivateKeyToPem(const EVP_PKEY* key) {
  // Secure memory BIO: its buffer is wiped when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "encode private key");
  }
  return BioContents(bio.get());
}

absl::StatusOr<EvpPkeyPtr> GenerateP256Key() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (key == nullptr) return OpenSslError(absl::StatusCode::kInternal, "generate P-256 key");
  return key;
}

absl::StatusOr<absl::Time> Asn1TimeToTime(const ASN1_TIME* time) {
  struct tm tm = {};
  if (time == nullptr || ASN1_TIME_to_tm(time, &tm) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "invalid certificate time");
  }
  return absl::FromTimeT(timegm(&tm));
}

absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": not a regular file"));
  }
  std::string data;
  char buf[16384];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > max_bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": larger than ", max_bytes, " bytes; is this the right file?"));
    }
  }
  return data;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp-XXXXXX";
  // mkostemp creates the file 0600, so a key is never readable by others, not even briefly.
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return absl::ErrnoToStatus(errno, absl::StrCat("create a temporary file for ", path));
  absl::Cleanup remove_tmp = [&tmp] { ::unlink(tmp.c_str()); };
  if (::fchmod(fd.get(), mode) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("chmod ", tmp));
  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", tmp));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) < 0) return absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp));
  fd.Reset();  // Written and synced: a close error could lose nothing.
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
  }
  std::move(remove_tmp).Cancel();
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd || ::fsync(dir_fd.get()) < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("fsync directory ", dir));
  }
  return absl::OkStatus();
}

}  // namespace ambit::ca::internal
