"""A stand-in trial for runner tests: computes a deterministic metric from the ratios and the seed.

Writes ``<run_dir>/metrics.json`` with ``loss = 2 + exp(-2 r0 + 1.5 r1 - r2) + 0.01 * (seed - 0.5)`` (over the
sorted component names) and ``<run_dir>/metrics.jsonl`` with a short decreasing curve. Environment knobs:
``FAKE_TRIAL_EXEC_LOG`` (append "trial_id pid start end"), ``FAKE_TRIAL_SLEEP`` (seconds),
``FAKE_TRIAL_FAIL_IF`` (fail when this component's ratio is >= 0.99), ``FAKE_TRIAL_HOLD`` (a path: once
``FAKE_TRIAL_HOLD_AFTER`` trials are in the exec log, a trial waits for that file to exist before finishing).
"""

import argparse
import json
import math
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--ratios", required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--run_dir", required=True)
p.add_argument("--trial_id", required=True)
a = p.parse_args()
start = time.time()
ratios = json.loads(a.ratios)
fail_if = os.environ.get("FAKE_TRIAL_FAIL_IF")
time.sleep(float(os.environ.get("FAKE_TRIAL_SLEEP", "0")))
log = os.environ.get("FAKE_TRIAL_EXEC_LOG")
hold = os.environ.get("FAKE_TRIAL_HOLD")
if hold and log and os.path.exists(log):
    with open(log) as f:
        finished = sum(1 for line in f if line.strip())
    if finished >= int(os.environ.get("FAKE_TRIAL_HOLD_AFTER", "0")):
        deadline = time.time() + 600
        while not os.path.exists(hold) and time.time() < deadline:
            time.sleep(0.05)
if fail_if and ratios.get(fail_if, 0.0) >= 0.99:
    print(f"deliberate failure for {fail_if}={ratios[fail_if]}", file=sys.stderr)
    sys.exit(3)
names = sorted(ratios)
coef = [-2.0, 1.5, -1.0]
loss = 2.0 + math.exp(sum(c * ratios[n] for c, n in zip(coef, names))) + 0.01 * (a.seed - 0.5)
with open(os.path.join(a.run_dir, "metrics.jsonl"), "w") as f:
    for step in range(1, 6):
        f.write(json.dumps({"step": step, "loss": loss + 1.0 / step}) + "\n")
with open(os.path.join(a.run_dir, "metrics.json"), "w") as f:
    json.dump({"loss": loss, "eval": {"acc": 1.0 / loss}}, f)
if log:
    with open(log, "a") as f:
        f.write(f"{a.trial_id} {os.getpid()} {start:.3f} {time.time():.3f}\n")
