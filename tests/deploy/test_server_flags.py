"""zlpr-server refuses every nonsense start-up value with a message naming the flag and exit
status 2 (a usage error), instead of accepting it silently or aborting."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def server_binary(request):
    return os.path.join(request.config.getoption("--build"), "server/zlpr-server")


def with_env(**values):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZLPR_")}
    env.update(values)
    return env


@pytest.mark.parametrize("variable,value,message", [
    ("ZLPR_MAX_BATCH_ROWS", "abc",
     "ZLPR_MAX_BATCH_ROWS=abc (the environment's --max_batch_rows): Illegal value 'abc'"),
    ("ZLPR_MAX_BATCH_ROWS", "0",
     "--max_batch_rows=0: must be 1 to 1048576 (the value of ZLPR_MAX_BATCH_ROWS in the "
     "environment)"),
    ("ZLPR_SHUTDOWN_GRACE_S", "-1",
     "--shutdown_grace_s=-1: must be 0 to 3600 (the value of ZLPR_SHUTDOWN_GRACE_S in the "
     "environment)"),
])
def test_a_bad_value_from_the_environment_names_the_variable(request, variable, value, message):
    r = subprocess.run([server_binary(request), "--grpc_address=127.0.0.1:0",
                        "--metrics_address=", "--backend=cpu"],
                       env=with_env(**{variable: value}), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr


def start_and_stop(request, args, env):
    """(the start-up line, stderr) of a server started and stopped at once."""
    p = subprocess.Popen([server_binary(request), "--grpc_address=127.0.0.1:0", "--backend=cpu",
                          "--threads=1", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    p.send_signal(2)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, (line, err)
    return line, err


def test_misspelled_variables_are_named_and_kubernetes_service_links_are_not(request):
    line, err = start_and_stop(request, ["--metrics_address="], with_env(
        ZLPR_MAX_BATCH_ROW="64", ZLPR_THREADS="1", ZLPR_SERVER_SERVICE_HOST="10.0.0.1",
        ZLPR_SERVER_PORT_50051_TCP_ADDR="10.0.0.1", ZLPR_SERVER_PORT="tcp://10.0.0.1:50051"))
    assert "listening" in line, (line, err)
    assert ("warning: ZLPR_MAX_BATCH_ROW is set but is no flag's variable (ZLPR_<FLAG> sets "
            "--flag); did you mean ZLPR_MAX_BATCH_ROWS?") in err, err
    assert "SERVICE_HOST" not in err and "ZLPR_SERVER_PORT" not in err, err
    assert "ZLPR_THREADS" not in err, err


def test_the_start_up_line_says_when_metrics_are_off(request):
    line, _ = start_and_stop(request, ["--metrics_address="], with_env())
    assert "metrics off (--metrics_address is empty)" in line, line
    line, _ = start_and_stop(request, ["--metrics_address=127.0.0.1:0"], with_env())
    assert re.search(r"gRPC on port (\d+).*metrics on port (\d+)", line), line


def test_help_names_the_program_not_the_build_machines_paths(request):
    r = subprocess.run([server_binary(request), "--help"], capture_output=True, text=True,
                       timeout=30)
    out = r.stdout + r.stderr
    assert "Flags from zlpr-server:" in out, out[:500]
    assert "main.cc" not in out and os.path.dirname(ROOT) not in out, out[:500]
