#pragma once

#include <errno.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bpf/libbpf.h"

namespace ambit::bpf {

// Maps a bpftool skeleton type to its generated functions. Specialise with
// AMBIT_BPF_SKELETON(ambit_redirect) next to the include of the skeleton header.
template <typename T>
struct SkeletonOps;

#define AMBIT_BPF_SKELETON(T)                      \
  namespace ambit::bpf {                           \
  template <>                                      \
  struct SkeletonOps<T> {                          \
    static constexpr const char* kName = #T;       \
    static T* Open() { return T##__open(); }       \
    static int Load(T* s) { return T##__load(s); } \
    static void Destroy(T* s) { T##__destroy(s); } \
  };                                               \
  }

// RAII owner of one opened (and maybe loaded) bpftool skeleton. Move-only.
template <typename T>
class Skeleton {
 public:
  static absl::StatusOr<Skeleton> Open() {
    T* raw = SkeletonOps<T>::Open();
    if (raw == nullptr) {
      return absl::ErrnoToStatus(errno, absl::StrCat("open BPF object ", SkeletonOps<T>::kName));
    }
    return Skeleton(raw);
  }
  absl::Status Load() {
    if (SkeletonOps<T>::Load(skel_.get()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("load BPF object ", SkeletonOps<T>::kName,
                                                     " (the verifier log above says why)"));
    }
    return absl::OkStatus();
  }
  T* operator->() const { return skel_.get(); }
  T* get() const { return skel_.get(); }

 private:
  struct Deleter {
    void operator()(T* s) const { SkeletonOps<T>::Destroy(s); }
  };
  explicit Skeleton(T* raw) : skel_(raw) {}
  std::unique_ptr<T, Deleter> skel_;
};

struct LinkDeleter {
  void operator()(bpf_link* l) const { bpf_link__destroy(l); }
};
// Closing our handle of a pinned link leaves it attached; an unpinned link detaches.
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

}  // namespace ambit::bpf
