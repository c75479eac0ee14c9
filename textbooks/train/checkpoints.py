"""Checkpoints of a training run (orbax): saving, resuming, and falling back past a corrupt step.

A run's checkpoints live in ``<model_dir>/checkpoints/<step>/`` (``ocp.CheckpointManager``), each with the
items

* ``params``: model parameters (float32 master weights),
* ``opt_state``: optimizer state,
* ``progress``: the step counter and base rng,
* ``data_iterator``: every process's input-pipeline state (``process_<i>-of-<n>.json``),
* ``metadata``: JSON with the model config, vocabulary name, operative gin config, data settings.

Saves are asynchronous (the step loop goes on while arrays are written); orbax writes into a temporary
folder and renames it when complete, so an interrupted save never looks like a checkpoint. On restart,
:meth:`RunCheckpoints.restore_latest` restores the newest step; if that fails (files missing or corrupt) it
says so, moves the step aside to ``<model_dir>/checkpoints_corrupt/`` and tries the one before.

Reading a trained model out of these checkpoints (or out of any other checkpoint folder) is
:func:`textbooks.model.load.load_model`'s, the one loader the rest of the project uses; this module shares its
folder and item names.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from typing import Any, Mapping

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from textbooks.model.config import param_tree_differences
from textbooks.model.load import CHECKPOINT_SUBDIR, METADATA_ITEM, PARAMS_ITEM

log = logging.getLogger(__name__)

CORRUPT_SUBDIR = "checkpoints_corrupt"
FORMAT_VERSION = 1
STATE_ITEMS = (PARAMS_ITEM, "opt_state", "progress")
ITEMS = STATE_ITEMS + ("data_iterator", METADATA_ITEM)
# Replicated arrays smaller than this are written by one replica instead of being sliced across replicas:
# slicing costs a small compilation per array and shape on the first save (seconds for ~1000 arrays), which
# only pays off for large arrays.
REPLICA_PARALLEL_MIN_BYTES = 4 << 20


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how a run checkpoints.

    Attributes:
        save_every: save every this many steps (the last step and a preemption always save).
        keep: keep the newest this many checkpoints.
        keep_period: also keep every checkpoint whose step is a multiple of this (None: no).
        async_save: write checkpoints in the background while training goes on.
        resume: restore the newest checkpoint in the model dir on start.
        init_from: at the start of a fresh run, take the parameters (only) from this orbax model dir, step
            dir, transformers-format or params folder (fine-tuning); folders are read into the run's layer
            layout (scanned or not).
    """

    save_every: int = 1000
    keep: int = 3
    keep_period: int | None = None
    async_save: bool = True
    resume: bool = True
    init_from: str | None = None

    def __post_init__(self):
        if self.save_every < 1:
            raise ValueError(f"CheckpointConfig.save_every must be >= 1, got {self.save_every}")
        if self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep must be >= 1, got {self.keep}")


# ----------------------------------------------------------------------------------------------------------
# The data-iterator item: one JSON file per process.


class DataIteratorHandler(ocp.handlers.AsyncCheckpointHandler):
    """Saves each process's input-pipeline state as ``process_<i>-of-<n>.json`` (every process writes)."""

    @staticmethod
    def _filename() -> str:
        return f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    async def _write(self, directory: epath.Path, text: str) -> None:
        (directory / self._filename()).write_text(text)

    async def async_save(self, directory: epath.Path, args: "DataIteratorSave") -> list[Any]:
        text = json.dumps(_encode_state(args.state))  # Captured now: the iterator moves on meanwhile.
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(directory, text),
                                                                 name="data_iterator_save")]

    def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
        (directory / self._filename()).write_text(json.dumps(_encode_state(args.state)))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore | None" = None) -> Any:
        path = directory / self._filename()
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
            raise FileNotFoundError(f"no input-pipeline state {path} for this process (found: {found}); was "
                                    f"the checkpoint written with another number of processes?")
        return _decode_state(json.loads(path.read_text()))

    def metadata(self, directory: epath.Path) -> None:
        return None


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    pass


def _encode_state(state: Any) -> dict[str, Any]:
    if isinstance(state, (bytes, bytearray)):
        return {"encoding": "base64", "value": base64.b64encode(bytes(state)).decode("ascii")}
    return {"encoding": "json", "value": state}


def _decode_state(blob: Mapping[str, Any]) -> Any:
    if blob.get("encoding") == "base64":
        return base64.b64decode(blob["value"])
    return blob.get("value")


# ----------------------------------------------------------------------------------------------------------
# A run's checkpoints.


@dataclasses.dataclass
class Restored:
    """What :meth:`RunCheckpoints.restore_latest` returns."""

    step: int
    params: Any
    opt_state: Any
    progress: dict[str, Any]
    data_iterator: Any
    metadata: dict[str, Any]


class RunCheckpoints:
    """The checkpoints of one run in ``<model_dir>/checkpoints`` (save, resume, fallback on corruption)."""

    def __init__(self, model_dir: str, config: CheckpointConfig):
        self.model_dir = model_dir
        self.config = config
        self.directory = epath.Path(model_dir) / CHECKPOINT_SUBDIR
        self._warn_unfinished()
        self.manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        policies = [ocp.checkpoint_managers.LatestN(n=self.config.keep)]
        if self.config.keep_period:
            policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=self.config.keep_period))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(self.config.save_every),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=self.config.async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        handlers = {name: _array_tree_handler() for name in STATE_ITEMS}
        handlers.update(data_iterator=DataIteratorHandler(), metadata=ocp.JsonCheckpointHandler())
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def _warn_unfinished(self) -> None:
        if jax.process_index() != 0 or not self.directory.exists():
            return
        for p in sorted(self.directory.iterdir()):
            if p.is_dir() and ocp.path.step.is_tmp_checkpoint(p):
                log.warning("found an unfinished checkpoint %s (a save was interrupted); it is ignored and "
                            "removed", p)

    @property
    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, metadata: Mapping[str, Any], force: bool = False) -> bool:
        """Saves ``state`` (a TrainState) at ``step`` if due (or ``force``); returns whether it saved."""
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(
            params=ocp.args.PyTreeSave(state.params),
            opt_state=ocp.args.PyTreeSave(state.opt_state),
            progress=ocp.args.PyTreeSave({"step": state.step, "rng": state.rng}),
            data_iterator=DataIteratorSave(data_state),
            metadata=ocp.args.JsonSave(dict(metadata, step=int(step), format_version=FORMAT_VERSION,
                                            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))),
        )
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        """Blocks until the background save (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore_latest(self, target: Any, model_config: Mapping[str, Any] | None = None) -> Restored | None:
        """Restores the newest readable checkpoint into ``target`` (a TrainState of sharded abstract arrays).

        A step that cannot be restored while an older one can is reported as corrupt and moved to
        ``<model_dir>/checkpoints_corrupt/``. When no step can be restored, nothing is moved and the error
        is raised (usually the model or optimizer changed, not the files).

        Args:
            target: the restore target.
            model_config: this run's model config (``ModelConfig.to_dict()``); a checkpoint of a model with
                other shapes is an error, not corruption.

        Returns:
            The restored pieces, or None when the model dir has no checkpoint.

        Raises:
            ValueError: the checkpoints belong to a differently shaped model.
            RuntimeError: no checkpoint could be restored.
        """
        failed: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            if model_config is not None:
                _check_same_model(self.directory / str(step), model_config)
            try:
                restored = self._restore(step, target)
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.warning("checkpoint at step %d in %s cannot be restored (%s); trying the previous one",
                            step, self.directory, reason)
                failed.append((step, reason))
                continue
            for bad, _ in failed:
                self._move_aside(bad)
            return restored
        if failed:
            raise RuntimeError(f"no checkpoint in {self.directory} can be restored: "
                               + "; ".join(f"step {s}: {r}" for s, r in failed)
                               + ". If the model, optimizer or process count changed, use a new model_dir (or "
                                 "CheckpointConfig.resume=False and init_from for the parameters).")
        return None

    def _restore(self, step: int, target: Any) -> Restored:
        step_dir = self.directory / str(step)
        missing = [item for item in ITEMS if not (step_dir / item).exists()]
        if missing:
            raise FileNotFoundError(f"items {missing} are missing from {step_dir}")
        progress_target = {"step": target.step, "rng": target.rng}
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=_tree_restore(target.params),
            opt_state=_tree_restore(target.opt_state),
            progress=_tree_restore(progress_target),
            data_iterator=DataIteratorRestore(),
            metadata=ocp.args.JsonRestore(),
        ))
        if int(out["progress"]["step"]) != step:
            raise ValueError(f"checkpoint {step_dir} holds step {int(out['progress']['step'])}")
        return Restored(step=step, params=out["params"], opt_state=out["opt_state"], progress=out["progress"],
                        data_iterator=out["data_iterator"], metadata=dict(out["metadata"]))

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.directory / str(step)
            dst_root = epath.Path(self.model_dir) / CORRUPT_SUBDIR
            dst_root.mkdir(parents=True, exist_ok=True)
            dst = dst_root / f"{step}-{int(time.time())}"
            if src.exists():
                src.rename(dst)
                log.warning("moved %s to %s", src, dst)
        _sync(f"move_aside_{step}")
        self.manager.reload()


def _array_tree_handler() -> ocp.PyTreeCheckpointHandler:
    registry = ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES)),
        (np.ndarray, ocp.type_handlers.NumpyHandler()))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _tree_restore(target: Any) -> ocp.args.PyTreeRestore:
    """Restore args that put every array in ``target``'s shape, dtype and sharding."""
    return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def _check_same_model(step_dir: epath.Path, model_config: Mapping[str, Any]) -> None:
    try:
        saved = json.loads((step_dir / METADATA_ITEM / METADATA_ITEM).read_text())["model_config"]
    except Exception:  # noqa: BLE001 - unreadable metadata: let the restore attempt report it
        return
    diff = param_tree_differences(saved, model_config)
    if diff:
        raise ValueError(f"{step_dir} holds a model of another shape (saved vs this run: "
                         + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
                         + "); use a new model_dir, or CheckpointConfig.resume=False")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
