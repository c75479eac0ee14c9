"""A stand-in trial with a planted downstream law and seed noise, for the target-assessment tests.

Writes ``<run_dir>/metrics.json`` with, for each task of ``TASKS``, ``bench/<task>/bpb = offset + exp(t . r) +
NOISE * z`` (the same ``t`` for every task, a per-task offset; ``z`` standard normal, seeded by the ratios, the
seed and the task), and ``bench/noise/bpb = 3 + 0.05 * z'``: pure seed noise, independent of the mixture.
"""

import argparse
import hashlib
import json
import math
import os

import numpy as np

TASKS = {"winogrande": 1.0, "arc_easy": 1.2, "siqa": 0.8, "piqa": 1.1}
T = {"web_filtered": -0.5, "code_filtered": 1.0, "synthetic_textbooks": -1.5}
NOISE = 0.002

p = argparse.ArgumentParser()
p.add_argument("--ratios", required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--run_dir", required=True)
a = p.parse_args()
ratios = json.loads(a.ratios)


def z(name: str) -> float:
    key = json.dumps([sorted((k, round(v, 6)) for k, v in ratios.items()), a.seed, name]).encode()
    return float(np.random.default_rng(int(hashlib.sha256(key).hexdigest()[:12], 16)).standard_normal())


law = math.exp(sum(T[c] * ratios.get(c, 0.0) for c in T))
metrics = {f"bench/{t}/bpb": off + law + NOISE * z(t) for t, off in TASKS.items()}
metrics["bench/noise/bpb"] = 3.0 + 0.05 * z("noise")
with open(os.path.join(a.run_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f)
