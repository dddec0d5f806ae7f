"""The docs test itself: it fails when a snippet is broken (the README's first minutes, copied
into a scratch repository and broken there on purpose), and it refuses docs it cannot judge
(a fence without a language, a skip without its reason, an unknown directive)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUNNER = os.path.join(HERE, "run_docs.py")


def run(root, *args, build=None):
    cmd = [sys.executable, RUNNER, "--root", str(root), *args]
    if build:
        cmd += ["--build", build]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def first_minutes(tmp_path):
    """A scratch repository whose README is the real one's first minutes with the CLI: the
    server started in the background, health, info, .npy files from numpy, predict and loss."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = readme.index("## The first five minutes")
    end = readme.index("From Python, in a virtualenv")
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text(readme[start:end], encoding="utf-8")
    return root


def test_the_first_minutes_run_and_a_broken_snippet_fails_the_run(request, tmp_path):
    build = request.config.getoption("--build")
    root = first_minutes(tmp_path)
    good = run(root, build=build)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok    README.md:" in good.stdout and "blocks ran" in good.stdout, good.stdout

    text = (root / "README.md").read_text(encoding="utf-8")
    assert "--top_k=3" in text
    (root / "README.md").write_text(text.replace("--top_k=3", "--top_k=three"), encoding="utf-8")
    broken_line = next(i + 1 for i, line in enumerate(text.split("\n")) if "--top_k=3" in line)
    bad = run(root, build=build)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    # It names the block (file and line of its first command), why, and shows the output.
    block_line = next(i + 1 for i, line in enumerate(text.split("\n")[:broken_line])
                      if line.startswith("python3 -c 'import numpy"))
    assert f"docs-test: README.md:{block_line}: this sh block failed: exit status 2" in bad.stderr, \
        bad.stderr
    assert "--top_k=three: " in bad.stderr, bad.stderr
    # What the run started is stopped, even after a failure: the ports are free again.
    again = run(root, build=build)
    assert "in use" not in again.stderr, again.stderr


@pytest.mark.parametrize("text,message", [
    ("```\nls\n```\n", "README.md:1: a code block without a language"),
    ("<!-- docs-test: skip -->\n```sh\nls\n```\n", "README.md:2: docs-test: skip needs its reason"),
    ("<!-- docs-test: skip () -->\n```sh\nls\n```\n", "docs-test: skip needs its reason"),
    ("<!-- docs-test: sometimes -->\n```sh\nls\n```\n",
     "README.md:2: unknown docs-test directive 'sometimes'"),
    ("<!-- docs-test: skip (why) -->\n```yaml\na: 1\n```\n",
     "README.md:2: a docs-test directive on a yaml block, which is never run"),
])
def test_docs_it_cannot_judge_are_refused(tmp_path, text, message):
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    r = run(tmp_path, "--list")
    assert r.returncode == 1, r.stdout
    assert message in r.stderr, r.stderr


def test_every_real_block_is_run_or_says_why_not():
    r = run(ROOT, "--list")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.strip().split("\n")
    assert len(listed) >= 20, listed
    # The first minutes and each guide have blocks that run.
    for doc in ("README.md", "docs/PYTHON.md", "docs/OIP.md", "examples/train_ddp.py"):
        assert any(l.startswith(doc + ":") and " skip (" not in l for l in listed), doc
