"""The committed stubs (src/zlpr/v1) are what protoc and grpc_python_plugin make of
proto/zlpr/v1/zlpr.proto today: a change to the .proto without regenerating them fails here."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "python", "src")


@pytest.mark.skipif(not shutil.which("protoc") or not shutil.which("grpc_python_plugin"),
                    reason="protoc or grpc_python_plugin missing")
def test_committed_stubs_are_fresh(tmp_path):
    subprocess.run(["protoc", f"-I{ROOT}/proto", f"--python_out={tmp_path}",
                    f"--grpc_out={tmp_path}",
                    f"--plugin=protoc-gen-grpc={shutil.which('grpc_python_plugin')}",
                    f"{ROOT}/proto/zlpr/v1/zlpr.proto"], check=True)
    for name in ("zlpr_pb2.py", "zlpr_pb2_grpc.py"):
        with open(tmp_path / "zlpr" / "v1" / name) as fresh, \
                open(os.path.join(PACKAGE, "zlpr", "v1", name)) as committed:
            assert fresh.read() == committed.read(), (
                f"python/src/zlpr/v1/{name} is stale: run scripts/gen-python-stubs.sh")
