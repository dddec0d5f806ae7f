"""zlpr-server refuses every nonsense start-up value with a message naming the flag and exit
status 2 (a usage error), instead of accepting it silently or aborting."""
import os
import subprocess

import pytest


@pytest.mark.parametrize("flag,message", [
    ("--grpc_address=127.0.0.1:99999", "port from 0 to 65535"),
    ("--max_batch_rows=0", "--max_batch_rows=0: must be 1 to"),
    ("--max_batch_rows=-3", "--max_batch_rows=-3: must be 1 to"),
    ("--max_queue_size=0", "--max_queue_size=0: must be 1 to"),
    ("--max_queue_size=-1", "--max_queue_size=-1: must be 1 to"),
    ("--max_queue_delay_us=-5", "--max_queue_delay_us=-5: must be 0 to"),
    ("--max_message_bytes=0", "--max_message_bytes=0: must be 1024 to"),
    ("--max_message_bytes=-1", "--max_message_bytes=-1: must be 1024 to"),
    ("--shutdown_grace_s=-1", "--shutdown_grace_s=-1: must be 0 to 3600"),
    ("--shutdown_grace_s=nan", "--shutdown_grace_s=nan: must be 0 to 3600"),
    ("--threads=-1", "--threads=-1: must be 0 to 1024"),
    ("--threads=100000", "--threads=100000: must be 0 to 1024"),
    ("--max_inflight_bytes=-1", "--max_inflight_bytes=-1: must be 1048576 to"),
    ("--max_inflight_bytes=1000", "--max_inflight_bytes=1000: must be 1048576 to"),
    ("--transport_memory_bytes=-5", "--transport_memory_bytes=-5: must be 16777216 to"),
    ("--auth_token_grace_s=-1", "--auth_token_grace_s=-1: must be 0 to 86400"),
    ("--auth_token_grace_s=nan", "--auth_token_grace_s=nan: must be 0 to 86400"),
    ("stray", "unexpected argument 'stray'"),
])
def test_nonsense_start_up_values_are_refused(request, flag, message):
    build = request.config.getoption("--build")
    r = subprocess.run([os.path.join(build, "server/zlpr-server"), "--grpc_address=127.0.0.1:0",
                        "--metrics_address=", "--backend=cpu", flag],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
