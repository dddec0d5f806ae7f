#!/usr/bin/env python3
"""The documentation, executed: every shell and Python block of README.md, python/README.md,
docs/*.md and the command lines of the examples' docstrings, run in order as a reader would
type them, in a scratch directory that sees the repository (and the build) through links.

Blocks:
- ```sh (or bash, shell) runs in `bash -euo pipefail`; ```python (or py) runs in a Python
  session that lasts for the file (later blocks see what earlier ones defined), on `python3` as
  the reader's PATH finds it: once a block has made `.venv` (README's first minutes), that
  virtualenv's, as if it had been activated. Other languages (cmake, cpp, yaml, ...) are not
  run; a fence without a language is an error (say what it is).
- An HTML comment on the line before a fence changes that block:
    <!-- docs-test: skip (why it cannot run here) -->   not run; the reason is required
    <!-- docs-test: python=tritonclient -->             that interpreter (--python NAME=PATH)
    <!-- docs-test: timeout=600 -->                     seconds (default 300)
- In the examples' module docstrings, lines indented by two spaces that start with
  `examples/` are shell commands, run in order.

The docs name the server's default ports (gRPC 50051, metrics 9464, HTTP 8000), and the README
starts a server there in the background (docs/OIP.md a second one, with shared memory, on
50061): those ports must be free. Everything a block starts is
stopped at the end (each block runs in a process group of its own). The first failing block
stops the run: its file and line, its command and its output are printed, exit status 1.

  tests/docs/run_docs.py --build build --python tritonclient=build-oipvenv/bin/python
"""
import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTS = (50051, 9464, 8000, 50061)  # 50061: docs/OIP.md's server with shared memory
SHELL = {"sh", "bash", "shell"}
PYTHON = {"python", "py"}
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    path: str      # relative to the root
    line: int      # of the block's first line of code
    kind: str      # "sh" or "python"
    code: str
    skip: Optional[str] = None
    python: Optional[str] = None
    timeout: float = 300.0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class DocError(Exception):
    pass


def parse_directive(text: str, where: str, block: Block) -> None:
    if text.startswith("skip"):
        reason = text[len("skip"):].strip().strip("()").strip()
        if not reason:
            raise DocError(f"{where}: docs-test: skip needs its reason, e.g. skip (needs Docker)")
        block.skip = reason
        return
    for token in text.split():
        key, _, value = token.partition("=")
        if key == "python" and value:
            block.python = value
        elif key == "timeout" and value:
            block.timeout = float(value)
        else:
            raise DocError(f"{where}: unknown docs-test directive {token!r}")


def markdown_blocks(root: str, rel: str) -> List[Block]:
    lines = open(os.path.join(root, rel), encoding="utf-8").read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        start = i
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*" + fence + r"\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        lang = info.split()[0].lower() if info else ""
        where = f"{rel}:{start + 1}"
        if not lang:
            raise DocError(f"{where}: a code block without a language: say what it is "
                           "(```sh, ```python, ```text, ...)")
        kind = "sh" if lang in SHELL else "python" if lang in PYTHON else None
        prev = start - 1
        directive = DIRECTIVE.match(lines[prev].strip()) if prev >= 0 else None
        if kind is None:
            if directive:
                raise DocError(f"{where}: a docs-test directive on a {lang} block, which is "
                               "never run")
            continue
        block = Block(rel, start + 2, kind, "\n".join(body) + "\n")
        if directive:
            parse_directive(directive.group(1), where, block)
        blocks.append(block)
    return blocks


def docstring_blocks(root: str, rel: str) -> List[Block]:
    import ast
    source = open(os.path.join(root, rel), encoding="utf-8").read()
    doc = ast.get_docstring(ast.parse(source), clean=False) or ""
    first = source.split("\n").index(next(l for l in source.split("\n") if '"""' in l))
    blocks = []
    for n, line in enumerate(doc.split("\n")):
        if line.startswith("  examples/"):
            blocks.append(Block(rel, first + n + 1, "sh", line.strip() + "\n"))
    return blocks


def collect(root: str) -> List[Block]:
    files = ["README.md", "python/README.md"]
    docs = os.path.join(root, "docs")
    if os.path.isdir(docs):
        files += sorted(os.path.join("docs", f) for f in os.listdir(docs) if f.endswith(".md"))
    blocks = []
    for rel in files:
        if os.path.exists(os.path.join(root, rel)):
            blocks += markdown_blocks(root, rel)
    examples = os.path.join(root, "examples")
    if os.path.isdir(examples):
        for f in sorted(os.listdir(examples)):
            if f.endswith(".py"):
                blocks += docstring_blocks(root, os.path.join("examples", f))
    return blocks


# A Python session for one file: blocks arrive as JSON lines on stdin; each one's output goes
# to the file named with it; the answer (ok, or the traceback) is a JSON line on the descriptor
# its argument names.
KERNEL = r"""
import json, os, sys, traceback
answers = os.fdopen(int(sys.argv[1]), "w")
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    r = json.loads(request)
    out = os.open(r["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out, 1); os.dup2(out, 2); os.close(out)
    try:
        exec(compile(r["code"], r["name"], "exec"), namespace)
        answer = {"ok": True}
    except BaseException:
        answer = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.flush(); sys.stderr.flush()
    answers.write(json.dumps(answer) + "\n"); answers.flush()
"""


@dataclass
class Runner:
    work: str
    interpreters: Dict[str, str]
    groups: List[int] = field(default_factory=list)
    kernels: Dict[tuple, subprocess.Popen] = field(default_factory=dict)
    count: int = 0

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ZLPR_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        venv = os.path.join(self.work, ".venv")
        env["PATH"] = os.pathsep.join([os.path.join(venv, "bin"),
                                       os.path.join(self.work, ".docs-test", "bin"),
                                       env.get("PATH", "")])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if os.path.isdir(venv):
            env["VIRTUAL_ENV"] = venv
        return env

    def log(self) -> str:
        self.count += 1
        return os.path.join(self.work, ".docs-test", f"block-{self.count:03d}.log")

    def run_shell(self, b: Block) -> None:
        log = self.log()
        with open(log, "w") as out:
            p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", b.code], cwd=self.work,
                                 env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(p.pid)
        try:
            rc = p.wait(timeout=b.timeout)
        except subprocess.TimeoutExpired:
            self.fail(b, log, f"still running after {b.timeout:.0f} s")
        if rc != 0:
            self.fail(b, log, f"exit status {rc}")

    def interpreter(self, b: Block) -> str:
        if b.python is None:
            found = shutil.which("python3", path=self.env()["PATH"])
            if found is None:
                raise DocError(f"{b.where}: no python3 on PATH")
            return found
        if b.python not in self.interpreters:
            raise DocError(f"{b.where}: python={b.python}: give its interpreter with "
                           f"--python {b.python}=PATH")
        path = self.interpreters[b.python]
        if not os.path.exists(path):
            raise DocError(f"{b.where}: python={b.python}: {path} does not exist (make test-oip "
                           "creates the tritonclient one)")
        return path

    def run_python(self, b: Block) -> None:
        exe = self.interpreter(b)
        key = (b.path, exe)
        kernel = self.kernels.get(key)
        if kernel is None or kernel.poll() is not None:
            read, write = os.pipe()
            kernel = subprocess.Popen([exe, "-c", KERNEL, str(write)], cwd=self.work,
                                      env=self.env(), stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      pass_fds=(write,), start_new_session=True, text=True)
            os.close(write)
            kernel.answers = os.fdopen(read)
            self.kernels[key] = kernel
            self.groups.append(kernel.pid)
        log = self.log()
        open(log, "w").close()
        kernel.stdin.write(json.dumps({"code": b.code, "name": b.where, "log": log}) + "\n")
        kernel.stdin.flush()
        ready, _, _ = select.select([kernel.answers], [], [], b.timeout)
        if not ready:
            self.fail(b, log, f"still running after {b.timeout:.0f} s")
        line = kernel.answers.readline()
        if not line:
            self.fail(b, log, "the Python session died")
        answer = json.loads(line)
        if not answer["ok"]:
            self.fail(b, log, answer["error"])

    def fail(self, b: Block, log: str, why: str) -> None:
        output = open(log, errors="replace").read()
        if len(output) > 6000:
            output = "...\n" + output[-6000:]
        raise DocError(f"{b.where}: this {b.kind} block failed: {why.rstrip()}\n"
                       f"--- the block:\n{b.code.rstrip()}\n--- its output:\n{output.rstrip()}")

    def stop(self) -> None:
        for k in self.kernels.values():
            if k.stdin:
                k.stdin.close()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for group in self.groups:
            while time.monotonic() < deadline:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def link_repository(root: str, build: str, work: str) -> None:
    """The scratch directory sees every top-level entry of the repository through a link (files
    the blocks write land in the scratch directory), and build/ is --build."""
    for name in os.listdir(root):
        if name in (".git", "build") or name.startswith(".venv"):
            continue
        os.symlink(os.path.join(root, name), os.path.join(work, name))
    os.symlink(os.path.abspath(build), os.path.join(work, "build"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=ROOT, help="the repository whose docs run")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="the CMake build directory (seen as build/ by the blocks)")
    ap.add_argument("--python", action="append", default=[], metavar="NAME=PATH",
                    help="the interpreter of blocks marked python=NAME")
    ap.add_argument("--work", help="the scratch directory (default: a new temporary one, "
                    "removed after a successful run)")
    ap.add_argument("--system-python", default="/usr/bin/python3",
                    help="the python3 a reader's shell finds (before a virtualenv is active)")
    ap.add_argument("--list", action="store_true", help="list the blocks and exit")
    args = ap.parse_args()
    try:
        blocks = collect(args.root)
    except DocError as e:
        print(f"docs-test: {e}", file=sys.stderr)
        return 1
    if args.list:
        for b in blocks:
            print(f"{b.where:28} {b.kind:6} " + (f"skip ({b.skip})" if b.skip else
                                                 b.code.split("\n")[0][:70]))
        return 0
    busy = [p for p in PORTS if not port_free(p)]
    if busy:
        print(f"docs-test: port(s) {busy} in use: the docs run a server on the ports they name "
              f"({', '.join(map(str, PORTS))}); stop what listens there", file=sys.stderr)
        return 1
    work = args.work or tempfile.mkdtemp(prefix="zlpr-docs-")
    os.makedirs(os.path.join(work, ".docs-test", "bin"), exist_ok=True)
    # The reader's python3 is the system's (Debian 12's /usr/bin/python3, whose python3-numpy
    # and python3-torch the README's virtualenv sees), whatever this machine puts first on PATH.
    os.symlink(args.system_python, os.path.join(work, ".docs-test", "bin", "python3"))
    link_repository(args.root, args.build, work)
    runner = Runner(work, dict(p.split("=", 1) for p in args.python))
    ran = skipped = 0
    t0 = time.monotonic()
    try:
        for b in blocks:
            if b.skip:
                skipped += 1
                print(f"  skip  {b.where}: {b.skip}", flush=True)
                continue
            started = time.monotonic()
            (runner.run_shell if b.kind == "sh" else runner.run_python)(b)
            ran += 1
            print(f"  ok    {b.where} ({b.kind}, {time.monotonic() - started:.1f} s)", flush=True)
    except DocError as e:
        print(f"docs-test: {e}\n(scratch directory kept: {work})", file=sys.stderr)
        return 1
    finally:
        runner.stop()
    print(f"docs-test: {ran} blocks ran, {skipped} skipped (with their reasons), "
          f"{time.monotonic() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
