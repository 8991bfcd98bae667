// Number formatting for the error messages of the core (internal; not installed).
#pragma once

#include <sstream>
#include <string>

namespace fluororeg {
namespace internal {

// A number as the default stream formatting writes it (6 significant digits), for messages
// that name the offending value.
inline std::string Fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

}  // namespace internal
}  // namespace fluororeg
