#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Propagates a non-OK absl::Status to the caller.
#define AMBIT_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status ambit_status_ = (expr);         \
    if (!ambit_status_.ok()) return ambit_status_; \
  } while (0)

#define AMBIT_STATUS_CONCAT_INNER_(a, b) a##b
#define AMBIT_STATUS_CONCAT_(a, b) AMBIT_STATUS_CONCAT_INNER_(a, b)

// `AMBIT_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from an OK StatusOr, or returns its status.
#define AMBIT_ASSIGN_OR_RETURN(lhs, expr) \
  AMBIT_ASSIGN_OR_RETURN_IMPL_(AMBIT_STATUS_CONCAT_(ambit_statusor_, __LINE__), lhs, expr)

#define AMBIT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)  \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
