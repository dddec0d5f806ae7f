// zlpr-cli: health, info, loss and predict against a zlpr server, JSON out. The whole program
// is RunCli so that tests can drive it in-process.
//
// Flags are absl flags (defined in cli.cc, listed by --help), read through absl's flag registry:
// an unknown flag or a value that does not parse is a usage error. RunCli sets the flags it is
// given and leaves them set (a caller that runs it more than once in a process, as the tests
// do, restores them itself with an absl::FlagSaver).
#ifndef ZLPR_CLI_CLI_H_
#define ZLPR_CLI_CLI_H_

#include <ostream>
#include <string>
#include <vector>

namespace zlpr::cli {

// Runs `zlpr-cli args...` (args without the program name). Writes the JSON result to `out` and
// errors to `err`. Exit codes: 0 success, 1 the server answered with an error (or NOT_SERVING),
// 2 bad usage (unknown command or flag, bad flag value) or a bad input file.
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace zlpr::cli

#endif  // ZLPR_CLI_CLI_H_
