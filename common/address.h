// HOST:PORT addresses as the flags give them ([V6]:PORT for an IPv6 literal).
#ifndef ZLPR_COMMON_ADDRESS_H_
#define ZLPR_COMMON_ADDRESS_H_

#include <optional>
#include <string>
#include <utility>

namespace zlpr {

// (host without brackets, port) of "HOST:PORT" or "[V6]:PORT"; nullopt without a colon.
inline std::optional<std::pair<std::string, std::string>> SplitHostPort(
    const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::pair{std::move(host), address.substr(colon + 1)};
}

}  // namespace zlpr

#endif  // ZLPR_COMMON_ADDRESS_H_
