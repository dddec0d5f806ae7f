// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status, which Abseil 20220623 lacks.
#ifndef ZLPR_COMMON_STATUS_MACROS_H_
#define ZLPR_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define ZLPR_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status zlpr_status_ = (expr);        \
    if (!zlpr_status_.ok()) return zlpr_status_; \
  } while (0)

#define ZLPR_STATUS_CONCAT_INNER_(a, b) a##b
#define ZLPR_STATUS_CONCAT_(a, b) ZLPR_STATUS_CONCAT_INNER_(a, b)

// `ZLPR_ASSIGN_OR_RETURN(auto x, MakeX());` declares `x` from an absl::StatusOr, or returns
// its error status.
// NOLINTBEGIN(bugprone-macro-parentheses): `lhs` is a declaration and `statusor` a name, which
// parentheses would break.
#define ZLPR_ASSIGN_OR_RETURN(lhs, expr) \
  ZLPR_ASSIGN_OR_RETURN_IMPL_(ZLPR_STATUS_CONCAT_(zlpr_statusor_, __LINE__), lhs, expr)
#define ZLPR_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                \
  if (!statusor.ok()) return statusor.status();          \
  lhs = std::move(statusor).value()
// NOLINTEND(bugprone-macro-parentheses)

#endif  // ZLPR_COMMON_STATUS_MACROS_H_
