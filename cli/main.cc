// zlpr-cli: see cli.h and `zlpr-cli --help`.
#include <iostream>

#include "cli/cli.h"

int main(int argc, char** argv) {
  return zlpr::cli::RunCli(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}
