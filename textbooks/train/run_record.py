"""The run record: what a training run was made of, kept in ``<model_dir>/run_record.json``.

The T5X habit, one step further. T5X writes the operative gin config after the first training step, because
configurables that run lazily (the input pipeline's, the evaluation data's) are only in it once they were
called; :meth:`RunRecord.first_step` does the same here (``config.gin`` and the TensorBoard/W&B text) and the
end of the run writes it again if a later first call (an evaluation) added bindings. Beside it, the record
holds what a config does not say:

* ``code``: the git commit of the code that ran and whether its tree had uncommitted changes (None outside a
  git checkout; reading it never fails a run);
* ``packages``: the versions of the key packages (:data:`KEY_PACKAGES`, ``importlib.metadata``);
* ``mixture``: the requested and the realized (repetition-capped) token fractions of a
  :class:`~mixtures.mixing.TokenMixture` (its ``fraction_report``);
* ``tokens_per_role``: the loss-weighted tokens trained so far per data role, counted from every step's
  metrics (skipped non-finite steps excluded), over the whole run when resumed (each checkpoint's count is kept
  in ``tokens_at_checkpoint``, and a resumed run starts from its checkpoint's). Written at every checkpoint
  and at the end.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
from typing import Any, Mapping, Sequence

import gin

from textbooks.data import files

log = logging.getLogger(__name__)

RUN_RECORD_FILE = "run_record.json"
CONFIG_FILE = "config.gin"
KEY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "gin-config", "tensorflow", "numpy",
                "textbooks")
_CODE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def git_state(directory: str = _CODE_DIR) -> dict[str, Any]:
    """``{'commit': sha or None, 'dirty': bool or None}`` of the git checkout holding ``directory``.

    None values when it is not in a git checkout or git is not available: never raises.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def package_versions(names: Sequence[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def mixture_record(provider: Any, name: str | None) -> dict[str, Any] | None:
    """The requested and realized fractions of the mixture the run reads (None without a mixture).

    ``provider`` is the mixture the input pipeline built (its ``fraction_report`` holds ``requested`` and
    ``capped`` fractions, the cap and the budget); other sources record their name alone.
    """
    if provider is None and not name:
        return None
    report = getattr(provider, "fraction_report", None)
    out: dict[str, Any] = {"name": getattr(provider, "name", name)}
    if report:
        out.update({k: (dict(v) if isinstance(v, Mapping) else v) for k, v in report.items()})
    return out


class RunRecord:
    """Keeps a run's record and writes it (first process only) with the operative config.

    Args:
        model_dir: the run's folder.
        enabled: write files (True on the first process).
        writer: the run's :class:`~textbooks.train.metrics.MetricsLogger` (TensorBoard text and W&B config).
        metadata: the checkpoint metadata; its ``operative_config`` is replaced by the post-step one.
        mixture: the mixture record (:func:`mixture_record`).
        start_step: the step the run starts from (a resumed run adds to that checkpoint's token counts).
    """

    def __init__(self, model_dir: str, *, enabled: bool, writer: Any, metadata: dict[str, Any],
                 mixture: Mapping[str, Any] | None, start_step: int):
        self.model_dir, self.enabled, self.writer, self.metadata = model_dir, enabled, writer, metadata
        self.path = files.join(model_dir, RUN_RECORD_FILE)
        previous = read_run_record(model_dir) or {} if start_step else {}
        self.at_checkpoint: dict[str, dict[str, float]] = {
            k: v for k, v in previous.get("tokens_at_checkpoint", {}).items() if int(k) <= start_step}
        base = self.at_checkpoint.get(str(start_step)) if start_step else {}
        if base is None:
            log.warning("%s has no token counts for checkpoint %d: tokens_per_role counts this run's steps only",
                        self.path, start_step)
        self.tokens: dict[str, float] = dict(base or {})
        self.complete = base is not None
        self.record: dict[str, Any] = {"code": git_state(), "packages": package_versions(),
                                       "mixture": dict(mixture) if mixture else None, "start_step": start_step}
        self._config = ""

    def count(self, record: Mapping[str, float]) -> None:
        """Adds one finite step's ``tokens/<role>`` metrics to the totals."""
        for key, value in record.items():
            if key.startswith("tokens/"):
                role = key[len("tokens/"):]
                self.tokens[role] = self.tokens.get(role, 0.0) + float(value)

    def first_step(self, step: int) -> None:
        """Writes the operative config (T5X: after the first step, when the lazy configurables have run)."""
        self._write_config(step)
        self.write(step)

    def checkpoint(self, step: int, pending: Mapping[str, float] | None) -> None:
        """Records the token counts of checkpoint ``step``; ``pending``: that step's metrics if not yet counted."""
        tokens = dict(self.tokens)
        if pending is not None and not pending.get("nonfinite", 0.0):
            for key, value in pending.items():
                if key.startswith("tokens/"):
                    tokens[key[7:]] = tokens.get(key[7:], 0.0) + float(value)
        self.at_checkpoint[str(step)] = tokens
        self.write(step, tokens)

    def finish(self, step: int) -> dict[str, float]:
        """Writes the final record (and the operative config again if it gained bindings); returns the tokens
        per role."""
        if self.enabled and gin.operative_config_str() != self._config:
            self._write_config(step)
        self.write(step)
        return dict(self.tokens)

    def write(self, step: int, tokens: Mapping[str, float] | None = None) -> None:
        """Writes ``run_record.json`` with the token counts through ``step``."""
        if not self.enabled:
            return
        self.record.update(step=step, tokens_per_role=dict(self.tokens if tokens is None else tokens),
                           tokens_complete=self.complete, tokens_at_checkpoint=self.at_checkpoint)
        files.makedirs(self.model_dir)
        tmp = self.path + ".tmp"
        with files.open_file(tmp, "w") as f:
            json.dump(self.record, f, indent=2, sort_keys=True)
        files.rename(tmp, self.path)
        self.writer.write_config({"run_record": self.record})

    def _write_config(self, step: int) -> None:
        self._config = gin.operative_config_str()
        self.metadata["operative_config"] = self._config
        if not self.enabled:
            return
        with files.open_file(files.join(self.model_dir, CONFIG_FILE), "w") as f:
            f.write(self._config)
        self.writer.write_text(step, "operative_config", "```\n" + self._config + "\n```")
        self.writer.write_config({"operative_config": self._config})


def read_run_record(model_dir: str) -> dict[str, Any] | None:
    """The run record of ``model_dir``, or None when there is none (or it is not valid JSON)."""
    path = files.join(model_dir, RUN_RECORD_FILE)
    if not files.exists(path):
        return None
    try:
        with files.open_file(path, "r") as f:
            return json.load(f)
    except ValueError as e:
        log.warning("%s is not valid JSON (%s); ignoring it", path, e)
        return None
