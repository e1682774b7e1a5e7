#pragma once

// The external CA's roots (docs/ARCHITECTURE.md#ca-api): what ambitd verifies the CA's TLS with
// and hands the data plane as the trust bundle. They change while ambitd runs (istiod rotating
// its root puts both roots into the istio-ca-root-cert ConfigMap, later only the new one), so a
// source is asked again before each use. Fail closed: without roots nothing is sent to the CA
// and the data plane has no trust bundle.

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace ambit::issuance {

// Thread-safe: asked by the signing threads and the control thread.
class RootCertSource {
 public:
  virtual ~RootCertSource() = default;
  // The newest valid roots (PEM certificates, one after another). UNAVAILABLE, saying why, while
  // none was ever valid. A source that turns bad later (an unreadable file, a ConfigMap without
  // the key) keeps its last good roots: a rotation must never leave the node trusting nothing.
  virtual absl::StatusOr<std::string> Roots() = 0;
  // "file /x/root-cert.pem", "ConfigMap istio-system/istio-ca-root-cert", for operators.
  virtual std::string Description() const = 0;
};

// `pem` checked: at least one certificate, each of which parses. Returns the certificates
// re-joined (nothing but them), or INVALID_ARGUMENT naming `where` and the certificate.
absl::StatusOr<std::string> ValidateRoots(const std::string& pem, const std::string& where);

// The last good roots of a source, and why there are none yet. Thread-safe.
class RootCertHolder {
 public:
  explicit RootCertHolder(std::string description) : description_(std::move(description)) {}
  // Takes `pem` if valid: true when it differs from the roots held (logged, with the count of
  // roots before and after). Invalid: the roots held stay, the error is returned (and logged once
  // per distinct error).
  absl::StatusOr<bool> Offer(const std::string& pem, const std::string& where);
  // A failure to read the source: logged once per distinct error; the roots held stay.
  void Failed(const absl::Status& why);
  absl::StatusOr<std::string> Current() const;
  const std::string& description() const { return description_; }

 private:
  void LogOnce(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string description_;
  mutable absl::Mutex mu_;
  std::string roots_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

// Roots from a PEM file, re-read whenever the file's identity, size or modification time changed
// (a mounted ConfigMap is swapped under the process by renaming a symlink; so is a file an
// operator replaces). NOT_FOUND / INVALID_ARGUMENT naming the file when it holds no valid roots
// at start: ambitd does not start without roots.
absl::StatusOr<std::shared_ptr<RootCertSource>> MakeRootCertFile(const std::string& path);

}  // namespace ambit::issuance
