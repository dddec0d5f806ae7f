"""Builds zlpr._native (src/zlpr/_native.cc: unary calls on gRPC C++) into the wheel.

It needs a C++17 compiler, pkg-config and gRPC C++'s development files (Debian: g++,
pkg-config, libgrpc++-dev, python3-dev). ZLPR_NATIVE chooses what happens without them:
  auto (the default)  build it when possible, else a pure-Python wheel (grpcio transport only)
  1                   build it or fail
  0                   never build it
The compiler is $CXX (default c++).
"""
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = os.path.join("src", "zlpr", "_native.cc")


def _pkg_config(*args):
    return shlex.split(subprocess.run(["pkg-config", *args, "grpc++"], check=True,
                                      capture_output=True, text=True).stdout)


def _compiler():
    return shlex.split(os.environ.get("CXX", "c++"))  # "ccache g++" is two words


def compile_native(root: str, out_dir: str, strict: bool) -> str:
    """Compiles the extension into out_dir; returns its path. `strict`: warnings are errors
    (ZLPR_NATIVE=1, as `make test` builds it; not for users' newer compilers and headers)."""
    import pybind11  # a build requirement (pyproject.toml)

    out = os.path.join(out_dir, "_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [*_compiler(), "-std=c++17", "-O2", "-g0", "-shared", "-fPIC",
           "-fvisibility=hidden", "-Wall", "-Wextra", *(["-Werror"] if strict else []),
           "-I" + sysconfig.get_paths()["include"], "-I" + pybind11.get_include(),
           *_pkg_config("--cflags"), os.path.join(root, SOURCE), "-o", out,
           *_pkg_config("--libs")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}\n{result.stderr}")
    return out


class NativeTransportHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        mode = os.environ.get("ZLPR_NATIVE", "auto")
        if self.target_name != "wheel" or mode == "0":
            return
        editable = version == "editable"
        # An editable install imports from src/: the module is built there (git ignores it).
        out_dir = (os.path.join(self.root, "src", "zlpr") if editable
                   else tempfile.mkdtemp(prefix="zlpr-native-"))
        try:
            missing = [tool for tool in ("pkg-config", _compiler()[0])
                       if shutil.which(tool) is None]
            if missing:
                raise RuntimeError(f"not found: {', '.join(missing)}")
            path = compile_native(self.root, out_dir, strict=mode == "1")
        except (RuntimeError, ImportError, subprocess.CalledProcessError) as e:
            if mode == "1":
                raise
            self.app.display_warning(
                f"zlpr: the native transport was not built ({e}); zlpr.Client will use grpcio")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if not editable:
            build_data["force_include"][path] = "zlpr/" + os.path.basename(path)
