"""Trial identity, the sweep folder layout and the on-disk markers that make a sweep resumable.

A trial is one proxy run: (base-config fingerprint, mixture ratios, seed). Its id is a hash of those three,
so results of different base configs can never be mixed and re-running a sweep finds its finished trials.

Layout of a sweep folder::

    <sweep_dir>/sweep.json            fingerprint, components, the base-config payload that was hashed
    <sweep_dir>/sweep_config.gin      the sweep's gin config (re-parsed by `textbooks sweep --run_trial`)
    <sweep_dir>/trials/<id>/trial.json    the trial (ratios, seed, point, fingerprint)
    <sweep_dir>/trials/<id>/DONE          JSON: metrics and timings, written last and atomically
    <sweep_dir>/trials/<id>/FAILED        JSON: error, traceback and log paths
    <sweep_dir>/trials/<id>/SUBMITTED     JSON: executor and job id of the latest submission
    <sweep_dir>/trials/<id>/.lock         held (fcntl) by the process running the trial
    <sweep_dir>/results.csv, results.json the gathered table
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from typing import Any, Iterator, Mapping, Sequence

from textbooks.mixopt import design

DONE, FAILED, SUBMITTED, LOCK, TRIAL_JSON = "DONE", "FAILED", "SUBMITTED", ".lock", "trial.json"


class SweepConfigMismatch(ValueError):
    """A sweep folder holds results of a different base config than the one being run."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the hashing form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_fingerprint(payload: Mapping[str, Any]) -> str:
    """A 16-hex-digit SHA-256 fingerprint of a base-config payload (anything JSON-serialisable)."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def trial_id(fingerprint: str, ratios: Mapping[str, float], seed: int) -> str:
    """The deterministic id of (fingerprint, ratios, seed): ``t`` + 15 hex digits.

    Ratios are rounded to :data:`design.DECIMALS` decimals and zero ratios dropped, so ``{'a': 1.0}`` and
    ``{'a': 1.0, 'b': 0.0}`` name the same trial.
    """
    canon = {k: round(float(v), design.DECIMALS) for k, v in sorted(ratios.items())
             if round(float(v), design.DECIMALS) != 0.0}
    digest = hashlib.sha256(canonical_json([fingerprint, canon, int(seed)]).encode()).hexdigest()
    return "t" + digest[:15]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One proxy run of a sweep.

    Attributes:
        trial_id: deterministic id (see :func:`trial_id`).
        point: index of the mixture point in the design.
        seed: the run's seed.
        ratios: ``{component: ratio}`` over all components.
        fingerprint: fingerprint of the sweep's base config.
    """

    trial_id: str
    point: int
    seed: int
    ratios: dict[str, float]
    fingerprint: str

    @classmethod
    def create(cls, point: int, ratios: Mapping[str, float], seed: int, fingerprint: str) -> "Trial":
        return cls(trial_id(fingerprint, ratios, seed), int(point), int(seed), dict(ratios), fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trial":
        return cls(str(d["trial_id"]), int(d["point"]), int(d["seed"]), dict(d["ratios"]), str(d["fingerprint"]))


def now() -> str:
    """UTC time in ISO format (for markers)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename (readers never see half)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Any:
    """Reads a JSON file; returns None when it does not exist.

    Raises:
        ValueError: the file exists but is not valid JSON (names the file).
    """
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to let the sweep redo that step") from e


class SweepDir:
    """Paths of a sweep folder, and the check that it belongs to one base config."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))

    sweep_json = property(lambda self: os.path.join(self.root, "sweep.json"))
    config_gin = property(lambda self: os.path.join(self.root, "sweep_config.gin"))
    trials_dir = property(lambda self: os.path.join(self.root, "trials"))
    results_csv = property(lambda self: os.path.join(self.root, "results.csv"))
    results_json = property(lambda self: os.path.join(self.root, "results.json"))
    submitit_dir = property(lambda self: os.path.join(self.root, "submitit"))
    commands_path = property(lambda self: os.path.join(self.root, "commands.sh"))
    tensorboard_dir = property(lambda self: os.path.join(self.root, "tensorboard"))

    def trial_dir(self, tid: str) -> str:
        return os.path.join(self.trials_dir, tid)

    def marker(self, tid: str, name: str) -> str:
        return os.path.join(self.trial_dir(tid), name)

    def manifest(self) -> dict[str, Any]:
        """The recorded ``sweep.json``.

        Raises:
            FileNotFoundError: the folder is not a sweep folder (says what to run first).
        """
        m = read_json(self.sweep_json)
        if m is None:
            missing = self.root if not os.path.isdir(self.root) else self.sweep_json
            raise FileNotFoundError(f"{missing} does not exist: {self.root} is not a sweep folder (or the sweep was "
                                    "never started); give --sweep_dir the folder of a sweep, or start one with "
                                    "`textbooks sweep --gin_file ...`")
        return m

    def init_or_check(self, fingerprint: str, payload: Mapping[str, Any], components: Sequence[str],
                      extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Creates ``sweep.json`` or checks that the existing one has the same fingerprint.

        Raises:
            SweepConfigMismatch: the folder holds another base config; the message lists what differs.
        """
        os.makedirs(self.trials_dir, exist_ok=True)
        existing = read_json(self.sweep_json)
        if existing is not None:
            if existing.get("fingerprint") != fingerprint:
                diffs = diff_payloads(existing.get("payload", {}), payload)
                raise SweepConfigMismatch(
                        f"{self.sweep_json} records base config {existing.get('fingerprint')} but this run's is "
                        f"{fingerprint}; differences: {'; '.join(diffs) or 'unknown'}. Results of different "
                        "configs are never mixed: use a new sweep_dir, or restore the recorded config.")
            return existing
        manifest = {"fingerprint": fingerprint, "payload": dict(payload), "components": list(components),
                    "created": now(), **dict(extra or {})}
        write_json_atomic(self.sweep_json, manifest)
        return manifest

    def write_trial(self, trial: Trial) -> None:
        """Writes ``trial.json`` unless it exists with the same content.

        Raises:
            SweepConfigMismatch: a trial folder with this id holds another trial.
        """
        path = self.marker(trial.trial_id, TRIAL_JSON)
        existing = read_json(path)
        if existing is not None:
            if existing.get("fingerprint") != trial.fingerprint or existing.get("seed") != trial.seed:
                raise SweepConfigMismatch(f"{path} holds another trial ({existing}); expected {trial.to_dict()}")
            return
        write_json_atomic(path, trial.to_dict())

    def read_trial(self, tid: str) -> Trial:
        """Reads ``trials/<tid>/trial.json``.

        Raises:
            FileNotFoundError: no such trial folder (names the path).
        """
        d = read_json(self.marker(tid, TRIAL_JSON))
        if d is None:
            raise FileNotFoundError(f"trial {tid}: {self.marker(tid, TRIAL_JSON)} does not exist; the trial "
                                    f"folder is missing from {self.trials_dir}")
        return Trial.from_dict(d)

    def trial_ids(self) -> list[str]:
        """Ids of every trial folder present (sorted)."""
        if not os.path.isdir(self.trials_dir):
            return []
        return sorted(d for d in os.listdir(self.trials_dir) if os.path.isdir(os.path.join(self.trials_dir, d)))


def trial_is_locked(lock_path: str) -> bool:
    """True while another process holds the trial's lock (it is running the trial)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class TrialBusy(RuntimeError):
    """Another process is running this trial."""


@contextlib.contextmanager
def trial_lock(lock_path: str) -> Iterator[None]:
    """Holds an exclusive fcntl lock on ``lock_path`` for the duration; released even on SIGKILL.

    Raises:
        TrialBusy: another process holds it.
    """
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise TrialBusy(f"{lock_path} is held by another process running this trial") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def diff_payloads(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like payloads (at most 10)."""
    out: list[str] = []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key} added")
            elif k not in new:
                out.append(f"{key} removed")
            else:
                out.extend(diff_payloads(old[k], new[k], key))
    elif canonical_json(old) != canonical_json(new):
        a, b = canonical_json(old), canonical_json(new)
        out.append(f"{prefix or 'payload'}: {a[:120]!s} -> {b[:120]!s}")
    return out[:10]
