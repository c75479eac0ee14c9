"""Weights & Biases as a metrics backend of training, beside TensorBoard and JSON Lines.

Off by default; on with gin ``WandbConfig.enabled = True`` (``wandb`` must then be installed: it is in the
``test`` and ``wandb`` extras). The run logs the same scalars as the TensorBoard writer (``train/<key>`` and
``eval/<key>`` at each logged step), its config holds the run record (:mod:`textbooks.train.run_record`) and the
operative gin config, and text summaries (the operative config) become files of the W&B run. ``mode`` is W&B's
(``'online'``, ``'offline'``, ``'disabled'``; None: ``WANDB_MODE`` or online). The run id is derived from the
model dir, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any, Mapping, Sequence

import gin

from textbooks.data import files

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass
class WandbConfig:
    """Weights & Biases logging of a training run (gin: ``WandbConfig.enabled = True``).

    Attributes:
        enabled: log to W&B (needs the ``wandb`` package).
        project: W&B project.
        entity: W&B entity (team or user); None for the default.
        mode: 'online', 'offline' or 'disabled'; None for W&B's default (``WANDB_MODE``, else online).
        name: run name; default the model dir's folder name.
        group: run group (e.g. a sweep's name).
        tags: run tags.
        dir: folder for W&B's local files; default ``WANDB_DIR``, else the model dir when it is local.
        run_id: W&B run id; default a hash of the model dir (a resumed run continues its W&B run).
    """

    enabled: bool = False
    project: str = "textbooks"
    entity: str | None = None
    mode: str | None = None
    name: str | None = None
    group: str | None = None
    tags: Sequence[str] = ()
    dir: str | None = None
    run_id: str | None = None


class WandbWriter:
    """One W&B run for one training run (first process only).

    Raises:
        RuntimeError: ``wandb`` is not installed (the message says how to install it or switch W&B off).
    """

    def __init__(self, config: WandbConfig, model_dir: str):
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError("WandbConfig.enabled = True but wandb is not installed: `pip install -c "
                               "constraints.txt -e .[wandb]`, or set WandbConfig.enabled = False") from e
        directory = config.dir or os.environ.get("WANDB_DIR") or (None if files.is_url(model_dir) else model_dir)
        if directory:
            os.makedirs(directory, exist_ok=True)
        run_id = config.run_id or hashlib.sha1(model_dir.encode()).hexdigest()[:16]
        self.run = wandb.init(project=config.project, entity=config.entity, mode=config.mode,
                              name=config.name or os.path.basename(model_dir.rstrip("/")), group=config.group,
                              tags=list(config.tags), dir=directory, id=run_id, resume="allow",
                              config={"model_dir": model_dir})
        log.info("logging to W&B run %s (%s, mode %s)", run_id, config.project, config.mode or "default")

    def write_scalars(self, step: int, scalars: Mapping[str, float], split: str) -> None:
        """Logs ``scalars`` as ``<split>/<key>`` at ``step``."""
        if scalars:
            self.run.log({f"{split}/{k}": v for k, v in scalars.items()}, step=int(step))

    def write_config(self, values: Mapping[str, Any]) -> None:
        """Adds (or replaces) entries of the run's config."""
        self.run.config.update(dict(values), allow_val_change=True)

    def write_text(self, step: int, name: str, text: str) -> None:
        """Writes ``text`` as the file ``<name>.txt`` of the run (kept locally, uploaded when online)."""
        with open(os.path.join(self.run.dir, f"{name}.txt"), "w") as f:
            f.write(text)

    def close(self) -> None:
        self.run.finish()
