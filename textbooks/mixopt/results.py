"""The results table of a sweep, gathered from its trial folders (CSV + JSON), and metric-file readers.

The trial folders are the source of truth (a DONE marker holds a trial's metrics); the table is rewritten
from them whenever a trial finishes, so it is complete and free of duplicates at any moment, including after
a sweep was killed and resumed. Each row: ``trial_id, point, seed, status, ratio/<component>..., metrics...,
error, log, run_dir, wall_s``. Statuses: done, failed, running, submitted, pending, missing (the trial is
recorded in ``sweep.json`` but its folder is gone).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from textbooks.mixopt import trials as trials_lib

logger = logging.getLogger(__name__)

RATIO_PREFIX = "ratio/"
# The fractions a training trial realized (its mixture's repetition-capped ones), recorded among its metrics.
REALIZED_PREFIX = "realized_ratio/"
BASE_COLUMNS = ("trial_id", "point", "seed", "status")
TAIL_COLUMNS = ("wall_s", "error", "log", "run_dir")
STATUSES = ("done", "failed", "running", "submitted", "pending", "missing")
# Per-step metrics files looked for in a run folder, in order: the trainer's, then a generic name.
CURVE_FILES = ("train.jsonl", "metrics.jsonl")


def flatten_numeric(obj: Any, prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Numeric leaves of a nested JSON object as ``{'a/b/c': value}`` (booleans and strings are skipped)."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_numeric(v, f"{prefix}{sep}{k}" if prefix else str(k), sep))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def read_metrics_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a per-step metrics JSON Lines file; bad lines are counted and logged with their number.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    rows, bad = [], 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                if bad <= 3:
                    logger.warning("%s:%d: not JSON, skipped", path, lineno)
                continue
            if isinstance(rec, dict):
                rows.append(rec)
            else:
                bad += 1
    if bad:
        logger.warning("%s: %d bad line(s) set aside", path, bad)
    return rows


def last_values(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The last finite numeric value of every key (nested keys flattened with '/'), ignoring 'step'."""
    out: dict[str, float] = {}
    for rec in records:
        for k, v in flatten_numeric(rec).items():
            if k != "step" and math.isfinite(v):
                out[k] = v
    return out


def find_metrics_files(run_dir: str, names: Sequence[str] = CURVE_FILES) -> list[str]:
    """Metrics JSONL files under ``run_dir``: those called one of ``names`` (in that order of preference),
    else any ``*.jsonl``."""
    named, other = [], []
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            if name in names:
                named.append((list(names).index(name), path))
            elif name.endswith(".jsonl"):
                other.append(path)
    return [p for _, p in sorted(named)] or sorted(other)


def ratio_columns(components: Sequence[str]) -> list[str]:
    return [RATIO_PREFIX + c for c in components]


def design_ratios(row: Mapping[str, Any], components: Sequence[str]) -> list[float]:
    """The ratios a run trained on, for fitting: the realized ones (``realized_ratio/<c>``, e.g. capped by a
    repetition cap) when the trial recorded them, else the requested ``ratio/<c>``."""
    if any(str(k).startswith(REALIZED_PREFIX) for k in row):
        return [float(row.get(REALIZED_PREFIX + c) or 0.0) for c in components]
    return [float(row[RATIO_PREFIX + c]) for c in components]


def trial_status(sweep: trials_lib.SweepDir, tid: str) -> tuple[str, dict[str, Any] | None]:
    """``(status, marker)`` of a trial from its folder: DONE wins, then FAILED, a held lock, SUBMITTED."""
    folder = sweep.trial_dir(tid)
    if not os.path.isdir(folder):
        return "missing", None
    done = trials_lib.read_json(sweep.marker(tid, trials_lib.DONE))
    if done is not None:
        return "done", done
    if trials_lib.trial_is_locked(sweep.marker(tid, trials_lib.LOCK)):
        return "running", None
    failed = trials_lib.read_json(sweep.marker(tid, trials_lib.FAILED))
    if failed is not None:
        return "failed", failed
    submitted = trials_lib.read_json(sweep.marker(tid, trials_lib.SUBMITTED))
    if submitted is not None:
        return "submitted", submitted
    return "pending", None


def gather(sweep: trials_lib.SweepDir, trial_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per trial of the sweep (those recorded in ``sweep.json`` plus any folder present).

    Trials whose recorded fingerprint differs from the sweep's are left out with a warning (they cannot be
    compared); trials recorded but without a folder get status ``missing``.
    """
    manifest = sweep.manifest()
    fingerprint, components = manifest["fingerprint"], list(manifest["components"])
    recorded = list(trial_ids) if trial_ids is not None else list(manifest.get("trials", {}))
    ids = list(dict.fromkeys(recorded + sweep.trial_ids()))
    rows = []
    for tid in ids:
        status, marker = trial_status(sweep, tid)
        info = manifest.get("trials", {}).get(tid, {})
        row: dict[str, Any] = {"trial_id": tid, "point": info.get("point"), "seed": info.get("seed"),
                               "status": status}
        ratios = info.get("ratios", {})
        if status == "missing":
            row["error"] = f"trial folder {sweep.trial_dir(tid)} is missing"
        else:
            try:
                trial = sweep.read_trial(tid)
            except (FileNotFoundError, ValueError) as e:
                row.update(status="missing", error=str(e))
            else:
                if trial.fingerprint != fingerprint:
                    logger.warning("trial %s has fingerprint %s, not the sweep's %s; left out", tid,
                                   trial.fingerprint, fingerprint)
                    continue
                row.update(point=trial.point, seed=trial.seed)
                ratios = trial.ratios
        for c in components:
            row[RATIO_PREFIX + c] = float(ratios.get(c, 0.0)) if ratios else float("nan")
        if status == "done" and marker:
            row.update(marker.get("metrics", {}))
            row.update(wall_s=marker.get("wall_s"), run_dir=marker.get("run_dir"), log=marker.get("log"))
        elif status == "failed" and marker:
            row.update(error=marker.get("error"), log=";".join(marker.get("log_paths", [])),
                       wall_s=marker.get("wall_s"))
        rows.append(row)
    rows.sort(key=lambda r: (r["point"] if r["point"] is not None else 1 << 30, r["seed"] or 0, r["trial_id"]))
    return rows


def columns_of(rows: Sequence[Mapping[str, Any]], components: Sequence[str]) -> list[str]:
    """Table columns: ids and status, ratios, metrics (sorted), then wall time, error, log and run dir."""
    fixed = set(BASE_COLUMNS) | set(TAIL_COLUMNS) | set(ratio_columns(components))
    metrics = sorted({k for r in rows for k in r if k not in fixed})
    return list(BASE_COLUMNS) + ratio_columns(components) + metrics + list(TAIL_COLUMNS)


def write_table(rows: Sequence[Mapping[str, Any]], components: Sequence[str], csv_path: str,
                json_path: str) -> None:
    """Writes the table as CSV and JSON (each atomically)."""
    cols = columns_of(rows, components)
    tmp = csv_path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    os.replace(tmp, csv_path)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
             for r in rows]
    trials_lib.write_json_atomic(json_path, {"components": list(components), "columns": cols, "rows": clean})


def refresh(sweep: trials_lib.SweepDir) -> list[dict[str, Any]]:
    """Gathers the table from the trial folders and rewrites ``results.csv`` / ``results.json``."""
    rows = gather(sweep)
    write_table(rows, sweep.manifest()["components"], sweep.results_csv, sweep.results_json)
    return rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of rows per status."""
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def metric_names(rows: Sequence[Mapping[str, Any]], components: Sequence[str]) -> list[str]:
    """Numeric metric columns present in at least one finished row."""
    fixed = set(BASE_COLUMNS) | set(TAIL_COLUMNS) | set(ratio_columns(components))
    names = set()
    for r in rows:
        if r.get("status") == "done":
            names.update(k for k, v in r.items() if k not in fixed and isinstance(v, (int, float))
                         and not isinstance(v, bool) and not k.startswith(REALIZED_PREFIX))
    return sorted(names)
