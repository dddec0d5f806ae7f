"""What the perf_analyzer benchmarks share (oip_vs_zlpr.py, steady.py): the Predict input they
send, and a process's CPU time."""
import json
import os
import random


def predict_input(directory, cols=1000):
    """Writes perf_analyzer's --input-data for zlpr_predict (one row of `cols` seeded normal
    scores) into `directory`; returns its path."""
    rng = random.Random(0)
    path = os.path.join(directory, "input.json")
    with open(path, "w") as f:
        json.dump({"data": [{"scores": [rng.gauss(0, 1) for _ in range(cols)]}]}, f)
    return path


def cpu_seconds(pid):
    """The user and system CPU seconds process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
