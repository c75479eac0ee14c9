"""``train``: the gin-configured entry point that trains a phi model on a seqio mixture over a device mesh.

Following T5X, gin binds this top-level function's arguments (``train.batch_size = %BATCH_SIZE`` ...) and the
small dataclass configs it takes (:class:`~textbooks.train.optimizer.OptimizerConfig`,
:class:`~textbooks.partitioning.PartitioningConfig`, :class:`~textbooks.train.checkpoints.CheckpointConfig`,
:class:`~textbooks.train.hooks.ValidationConfig`); it is a plain Python function too (notebooks, tests).

A run: build the mesh; build the model and optimizer; restore the newest checkpoint of ``model_dir`` (or
initialize, optionally from ``init_from`` parameters); compile the step; loop. Metrics of step ``s`` are read
back while step ``s+1`` runs, so the host never stalls the devices. Checkpoints are saved asynchronously every
``save_every`` steps, at the end, and on SIGTERM/SIGINT (then the run returns normally). A model dir whose newest
checkpoint already reached ``train_steps`` holds a finished run: nothing is trained or written, and the summary
it records is returned (:mod:`textbooks.train.summary`). The operative gin config is written after the first
step, the run record (commit, versions, mixture, tokens per role) at each checkpoint (:mod:`.run_record`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import gin
import jax

from textbooks import partitioning as part
from textbooks.data import files, paths
from textbooks.model import config as _model_config  # noqa: F401  (registers model_config for the gin files)
from textbooks.model.config import PARAM_TREE_FIELDS
from textbooks.model.load import load_model
from textbooks.model.causal_lm import CausalLM
from textbooks.progress import Progress, emit
from textbooks.train import checkpoints as ckpt_lib
from textbooks.train import data as data_lib
from textbooks.train import flops as flops_lib
from textbooks.train import hooks, metrics as metrics_lib, optimizer as opt_lib, state as state_lib
from textbooks.train import run_record, step as step_lib
from textbooks.train import synthetic  # noqa: F401  (registers synthetic_dataset for the gin files)
from textbooks.train.summary import TrainResult, finished_run, summary_line, write_summary  # noqa: F401
from textbooks.vocab import PHI_PADDED_VOCAB_SIZE, PHI_VOCAB_SIZE
from textbooks.vocab import registry as vocab_registry  # also registers get_vocabulary before gin is locked

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")
# The numbers of a logged step that the progress line shows.
PROGRESS_FIELDS = ("loss", "grad_norm", "learning_rate", "tokens_per_second", "mfu")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/Inf and the run was configured to stop."""


def resolve_vocabulary(vocabulary: str | None, mixture_or_task_name: str | None, model_vocab_size: int) -> str:
    """The vocabulary name recorded for the run.

    Explicit ``vocabulary`` wins; otherwise the mixture's (``mixtures.roles.vocabulary_name``, gin); without
    a mixture (synthetic data) 'phi' for models with a phi-sized embedding, else 'spm8k'.
    """
    if vocabulary:
        return vocabulary
    if mixture_or_task_name:
        name = data_lib.mixture_vocabulary_name(mixture_or_task_name)
        if name:
            return name
    return "phi" if model_vocab_size >= PHI_VOCAB_SIZE else "spm8k"


def check_vocab_size(model_vocab_size: int, vocabulary: str) -> None:
    """Raises ValueError when the model's embedding cannot hold every id of ``vocabulary``."""
    size = vocab_registry.vocabulary_size(vocabulary)
    if model_vocab_size < size:
        padded = PHI_PADDED_VOCAB_SIZE if vocabulary == "phi" else size
        raise ValueError(f"the model's vocab_size ({model_vocab_size}) is smaller than vocabulary {vocabulary!r} "
                         f"({size} ids); set model_config.vocab_size = {padded} (gin) or choose another "
                         f"vocabulary (train.vocabulary)")


@gin.configurable(denylist=("train_iterator", "devices"))
def train(*, model_dir: str = gin.REQUIRED, model_config: Any = gin.REQUIRED,
          mixture_or_task_name: str | None = None, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, train_steps: int = gin.REQUIRED, vocabulary: str | None = None,
          optimizer: opt_lib.OptimizerConfig | None = None, partitioning: part.PartitioningConfig | None = None,
          checkpoint: ckpt_lib.CheckpointConfig | None = None, evaluation: hooks.ValidationConfig | None = None,
          microbatches: int = 1, seed: int = 0, log_every: int = 50, on_nonfinite: str = "stop",
          max_consecutive_nonfinite: int = 10, z_loss: float = 0.0,
          dataset_fn: Callable[..., Iterator[dict]] | None = None, train_iterator: Iterator[dict] | None = None,
          devices: Sequence[Any] | None = None, progress_bar: bool | None = None,
          tensorboard: bool = True, peak_flops_per_device: float | None = None,
          compiler_options: Mapping[str, Any] | None = None) -> TrainResult:
    """Trains (or resumes training) a phi model and writes checkpoints, metrics and config to ``model_dir``.

    Args:
        model_dir: the run's folder (checkpoints, metrics, TensorBoard events, operative config).
        model_config: a :class:`~textbooks.model.config.ModelConfig` (gin: ``@model_config()``).
        mixture_or_task_name: registered seqio mixture or task to train on.
        task_feature_lengths: ``{'targets': sequence length}``.
        batch_size: global batch size in sequences (all processes together).
        train_steps: the step to train up to (a resumed run continues to it).
        vocabulary: name of the vocabulary the data is tokenized with (``'phi'``, ``'spm8k'``, ``'byte'``);
            default: the mixture's (see :func:`resolve_vocabulary`). Recorded in checkpoints and checked
            against the model's vocab_size.
        optimizer, partitioning, checkpoint, evaluation: the dataclass configs (defaults when None).
        microbatches: gradient accumulation: split each batch into this many sequential microbatches.
        seed: one seed for parameters, dropout and data order, the same on every process.
        log_every: write metrics every this many steps.
        on_nonfinite: 'stop' (raise :class:`NonFiniteLossError`; the last checkpoint stays the last finite
            state) or 'skip' (drop that update and go on).
        max_consecutive_nonfinite: with 'skip', stop after this many non-finite steps in a row.
        z_loss: coefficient of an auxiliary ``log(Z)^2`` loss (0: off, as in the phi papers).
        dataset_fn: a data function instead of the seqio pipeline (see :func:`textbooks.train.data.make_iterator`).
        train_iterator: an already built iterator of per-process batches (Python use; overrides the rest).
        devices: the devices to use (default: all).
        progress_bar: force or forbid the progress line redrawn in place (default: when stderr is a terminal or in
            a notebook); otherwise each logged step prints a line.
        tensorboard: write TensorBoard events.
        peak_flops_per_device: the peak used for MFU (default: the datasheet table for accelerators, a
            measured matmul peak on CPU).
        compiler_options: XLA options for compiling the init, train and eval steps (``jax.jit``'s
            ``compiler_options``), e.g. ``{'xla_tpu_enable_latency_hiding_scheduler': True}``.

    Returns:
        A :class:`TrainResult` (for a finished model dir, the one its summary.json records).

    Raises:
        ValueError: inconsistent settings (the message says which). NonFiniteLossError: see ``on_nonfinite``.
    """
    wall_start = time.time()
    model_dir = paths.resolve(model_dir)  # orbax needs an absolute path; gs:// is kept
    optimizer = optimizer or opt_lib.OptimizerConfig()
    partitioning = partitioning or part.PartitioningConfig()
    checkpoint = checkpoint or ckpt_lib.CheckpointConfig()
    evaluation = evaluation or hooks.ValidationConfig()
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"train.on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
    if train_steps < 1 or batch_size < 1 or microbatches < 1 or log_every < 1:
        raise ValueError(f"train_steps ({train_steps}), batch_size ({batch_size}), microbatches ({microbatches}) "
                         f"and log_every ({log_every}) must be positive")
    if train_iterator is None and dataset_fn is None and mixture_or_task_name:
        data_lib.check_mixture(mixture_or_task_name)
    pinned_vocabulary = vocabulary if dataset_fn is None and train_iterator is None else None
    vocabulary = resolve_vocabulary(vocabulary, mixture_or_task_name if dataset_fn is None else None,
                                    model_config.vocab_size)
    check_vocab_size(model_config.vocab_size, vocabulary)
    compiler_options = dict(compiler_options) if compiler_options else None
    mesh = part.make_mesh(partitioning, devices)
    step_lib.check_batch_layout(batch_size, microbatches, dict(mesh.shape))
    rules = partitioning.logical_axis_rules
    shard = part.data_shard_info(mesh, batch_size, rules)
    spec = data_lib.DataSpec(mixture_or_task_name, dict(task_feature_lengths), batch_size, seed,
                             model_config.vocab_size)
    if spec.seq_len > model_config.max_len:
        log.warning("sequence length %d exceeds the model's max_len %d", spec.seq_len, model_config.max_len)
    primary = jax.process_index() == 0
    log.info("mesh %s; process %d reads data shard %d of %d (%d rows)", part.describe_mesh(mesh),
             jax.process_index(), shard.index, shard.num_shards, shard.per_process_batch_size)

    model = CausalLM(model_config)
    tx, schedule = opt_lib.make_optimizer(optimizer, train_steps)
    roles = data_lib.role_names()
    shardings = state_lib.state_shardings(model, tx, mesh, rules)

    # State: resume, or initialize (optionally from pretrained parameters).
    ckpts = ckpt_lib.RunCheckpoints(model_dir, checkpoint)
    restored = None
    if checkpoint.resume:
        restored = ckpts.restore_latest(state_lib.sharded_abstract_state(model, tx, mesh, rules),
                                        model_config=model_config.to_dict())
    if restored is not None:
        state = state_lib.TrainState(step=restored.progress["step"], params=restored.params,
                                     opt_state=restored.opt_state, rng=restored.progress["rng"])
        log.info("resumed from step %d in %s", restored.step, ckpts.directory)
    else:
        state = state_lib.init_state(model, tx, mesh, rules, seed, compiler_options)
        if checkpoint.init_from:
            state = _init_params_from(state, checkpoint.init_from, model_config, shardings, tx)
    start_step = int(jax.device_get(state.step))
    if restored is not None and start_step >= train_steps:
        ckpts.close()
        return finished_run(model_dir, start_step, train_steps, ckpts.latest_step(), wall_start)

    iterator = train_iterator if train_iterator is not None else data_lib.make_iterator(
        spec, shard, "train", dataset_fn=dataset_fn, vocabulary=pinned_vocabulary, train_steps=train_steps)
    iterator = data_lib.restore_iterator(iterator, restored.data_iterator if restored else None, start_step)

    train_step = step_lib.compile_train_step(
        step_lib.make_train_step(model, tx, schedule, num_roles=len(roles), microbatches=microbatches,
                                 z_loss=z_loss, rules=rules), shardings, mesh, rules,
        compiler_options=compiler_options)
    eval_hook = _make_eval_hook(evaluation, spec, mesh, rules, model, roles, dataset_fn, shardings,
                                pinned_vocabulary, compiler_options)

    metadata = {"model_config": model_config.to_dict(), "vocabulary": vocabulary,
                "mixture_or_task_name": mixture_or_task_name, "task_feature_lengths": dict(task_feature_lengths),
                "batch_size": batch_size, "seed": seed, "operative_config": gin.operative_config_str(),
                "mesh": dict(mesh.shape), "process_count": jax.process_count()}
    writer = metrics_lib.MetricsLogger(model_dir, enabled=primary, tensorboard=tensorboard)
    if primary:
        _write_run_files(model_dir, metadata)
    record = run_record.RunRecord(model_dir, enabled=primary, writer=writer, metadata=metadata, start_step=start_step,
                                  mixture=run_record.mixture_record(getattr(iterator, "mixture", None),
                                                                    None if dataset_fn else mixture_or_task_name))

    if peak_flops_per_device:
        peak, peak_source = peak_flops_per_device * mesh.size, "train.peak_flops_per_device"
    else:
        peak, peak_source = flops_lib.peak_flops(mesh.devices.flat)
    tokens_per_step = batch_size * spec.seq_len
    flops_per_step = flops_lib.flops_per_token(model_config, spec.seq_len) * tokens_per_step
    log.info("%s parameters; %.3g model FLOPs per step; peak %.3g FLOP/s (%s)", f"{model_config.num_params():,}",
             flops_per_step, peak, peak_source)

    progress = Progress(train_steps, "train", unit="step", already_done=start_step, interval=float("inf"),
                        enabled=primary, redraw=progress_bar)
    loop = _Loop(train_step=train_step, mesh=mesh, rules=rules, batch_size=batch_size, roles=roles,
                 writer=writer, progress=progress, log_every=log_every, on_nonfinite=on_nonfinite,
                 max_consecutive_nonfinite=max_consecutive_nonfinite, tokens_per_step=tokens_per_step,
                 flops_per_step=flops_per_step, peak=peak, ckpts=ckpts, metadata=metadata, eval_hook=eval_hook,
                 eval_every=evaluation.eval_every, seq_len=spec.seq_len, per_process=shard.per_process_batch_size,
                 record=record)
    try:
        with hooks.StopSignal() as stop, jax.set_mesh(mesh):
            state = loop.run(state, iterator, start_step, train_steps, stop)
        tokens_per_role = record.finish(loop.step)
    finally:
        ckpts.close()
        progress.close()
        writer.close()
    result = TrainResult(model_dir=model_dir, start_step=start_step, final_step=loop.step,
                         final_loss=loop.last_loss, tokens_per_second=loop.mean_tokens_per_second(),
                         mfu=loop.mean_mfu(), wall_seconds=time.time() - wall_start, stopped_by=loop.stopped_by,
                         skipped_steps=loop.skipped, last_checkpoint_step=ckpts.latest_step(),
                         eval=loop.last_eval, tokens_per_role=tokens_per_role)
    if primary:
        write_summary(result)
        emit(f"run summary: {summary_line(result)}")
    if loop.stopped_by == "nonfinite":
        raise NonFiniteLossError(loop.nonfinite_message)
    return result


def _write_run_files(model_dir: str, metadata: Mapping[str, Any]) -> None:
    """Writes the model config next to the checkpoints (the operative config follows the first step)."""
    files.makedirs(model_dir)  # local files without TensorFlow; gs:// through tf.io.gfile
    with files.open_file(files.join(model_dir, "model_config.json"), "w") as f:
        json.dump(metadata["model_config"], f, indent=2, sort_keys=True)


def _init_params_from(state, path, model_config, shardings, tx):
    loaded = load_model(path, shardings=shardings.params, scan_layers=model_config.scan_layers)
    if loaded.config.to_dict() != model_config.to_dict():
        diff = {k: (v, model_config.to_dict().get(k)) for k, v in loaded.config.to_dict().items()
                if model_config.to_dict().get(k) != v}
        if set(PARAM_TREE_FIELDS) & set(diff):
            raise ValueError(f"init_from {path}: its model differs in shape from this run's: {diff}")
        log.info("init_from %s: model settings differ (kept this run's): %s", path, diff)
    params = jax.device_put(loaded.params, shardings.params)
    log.info("initialized parameters from %s (step %s)", path, loaded.step)
    return state.replace(params=params, opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params))


def _make_eval_hook(evaluation, spec, mesh, rules, model, roles, dataset_fn, shardings, vocabulary,
                    compiler_options):
    if not evaluation.eval_every:
        return None
    if dataset_fn is None and not (evaluation.mixture_or_task_name or spec.mixture_or_task_name):
        log.warning("evaluation is on (ValidationConfig.eval_every) but there is no validation mixture: no evaluation")
        return None
    batch_size = evaluation.batch_size or spec.batch_size
    eval_spec = dataclasses.replace(spec, batch_size=batch_size,
                                    mixture_or_task_name=evaluation.mixture_or_task_name or spec.mixture_or_task_name)
    eval_shard = part.data_shard_info(mesh, batch_size, rules)
    eval_step = jax.jit(step_lib.make_eval_step(model, num_roles=len(roles), rules=rules),
                        in_shardings=(shardings.params, part.batch_sharding(mesh, rules)),
                        out_shardings=part.replicated(mesh), compiler_options=compiler_options)

    def batches():
        return data_lib.make_eval_batches(eval_spec, eval_shard, evaluation.split, evaluation.num_batches,
                                          dataset_fn=dataset_fn, vocabulary=vocabulary)

    return hooks.make_eval_hook(eval_step, batches, mesh, rules, batch_size, roles)


@dataclasses.dataclass
class _Loop:
    """The step loop and its bookkeeping (metrics lag one step behind the dispatched step)."""

    train_step: Callable
    mesh: Any
    rules: Any
    batch_size: int
    roles: Sequence[str]
    writer: metrics_lib.MetricsLogger
    progress: Progress
    log_every: int
    on_nonfinite: str
    max_consecutive_nonfinite: int
    tokens_per_step: int
    flops_per_step: float
    peak: float
    ckpts: ckpt_lib.RunCheckpoints
    metadata: Mapping[str, Any]
    eval_hook: Any
    eval_every: int
    seq_len: int
    per_process: int
    record: run_record.RunRecord
    step: int = 0
    last_loss: float | None = None
    stopped_by: str = "completed"
    skipped: int = 0
    consecutive_nonfinite: int = 0
    nonfinite_message: str = ""
    last_eval: dict = dataclasses.field(default_factory=dict)
    _rates: list = dataclasses.field(default_factory=list)
    _interval_start: tuple | None = None
    _excluded: float = 0.0

    def run(self, state, iterator, start_step: int, train_steps: int, stop: hooks.StopSignal):
        self.step = start_step
        pending = None
        first = True
        while self.step < train_steps:
            try:
                local = next(iterator)
            except StopIteration:
                log.warning("the training data ended at step %d (before train_steps %d)", self.step, train_steps)
                self.stopped_by = "end_of_data"
                break
            if first:
                data_lib.check_batch(local, self.per_process, self.seq_len)
            batch = part.make_global_batch(local, self.mesh, self.rules, self.batch_size)
            state, raw = self.train_step(state, batch)
            self.step += 1
            if pending is not None and not self._consume(*pending):
                break
            pending = (self.step, raw)
            if first:  # The first step includes compilation: time from its end.
                jax.block_until_ready(raw)
                self._interval_start = (self.step, time.perf_counter())
                first = False
            self._maybe_save(state, iterator, force=self.step == train_steps, pending=raw)
            if self.eval_hook is not None and (self.step % self.eval_every == 0 or self.step == train_steps):
                self._untimed(self._evaluate, state)
            if self.step == start_step + 1:  # T5X: the operative config once the lazy configurables have run
                self._untimed(lambda _: self.record.first_step(self.step), state)
            if stop.should_stop(self.step):
                self.stopped_by = "signal"
                break
        if pending is not None and self.stopped_by != "nonfinite":
            self._consume(*pending)
        if self.stopped_by in ("signal", "end_of_data"):
            self._maybe_save(state, iterator, force=True)
        if self.stopped_by == "signal":
            self.ckpts.wait()
            log.warning("stopped by a signal at step %d; checkpoint saved", self.step)
        return state

    def _untimed(self, fn, state, *args) -> None:
        """Runs ``fn(state, *args)`` after the dispatched step finishes, leaving its time out of throughput."""
        jax.block_until_ready(state)
        t = time.perf_counter()
        fn(state, *args)
        self._excluded += time.perf_counter() - t

    def _maybe_save(self, state, iterator, force: bool, pending=None) -> None:
        if self.stopped_by == "nonfinite":
            return
        if force or self.step % self.ckpts.config.save_every == 0:
            data_state = data_lib.iterator_state(iterator)
            self._untimed(self._save, state, data_state, force, pending)

    def _save(self, state, data_state, force: bool, pending) -> None:
        if self.ckpts.save(self.step, state, data_state, self.metadata, force=force):
            log.info("saving checkpoint at step %d", self.step)
            host = None if pending is None else metrics_lib.summarize(jax.device_get(pending), self.roles)
            self.record.checkpoint(self.step, host)

    def _evaluate(self, state) -> None:
        t = time.perf_counter()
        result = self.eval_hook(state.params, self.mesh)
        if result:
            result["seconds"] = time.perf_counter() - t
            self.last_eval = result
            self.writer.write(self.step, result, split="eval")
            self.progress.write(f"eval at step {self.step}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in result.items() if k.startswith("loss")))

    def _consume(self, step: int, raw) -> bool:
        """Reads back step ``step``'s metrics; returns False when the loop must stop."""
        host = jax.device_get(raw)
        record = metrics_lib.summarize(host, self.roles)
        if record.get("nonfinite", 0.0) > 0:
            self.skipped += 1
            self.consecutive_nonfinite += 1
            what = f"non-finite loss or gradient at step {step} (loss {record.get('loss')}, grad norm " \
                   f"{record.get('grad_norm')}); the update was not applied"
            if self.on_nonfinite == "stop" or self.consecutive_nonfinite > self.max_consecutive_nonfinite:
                last = self.ckpts.latest_step()
                self.nonfinite_message = (
                    f"{what}. Stopping (train.on_nonfinite={self.on_nonfinite!r}); the newest checkpoint "
                    f"(step {last}) holds the last finite state. Lower the learning rate, enable clipping "
                    f"(OptimizerConfig.max_grad_norm) or set train.on_nonfinite='skip', then resume.")
                log.error(self.nonfinite_message)
                self.stopped_by = "nonfinite"
                self.writer.write(step, record)
                return False
            log.warning("%s; skipping it (%d in a row)", what, self.consecutive_nonfinite)
        else:
            self.consecutive_nonfinite = 0
            self.last_loss = record["loss"]
            self.record.count(record)
        if step % self.log_every == 0 or step == 1:
            now = time.perf_counter()
            if self._interval_start is not None and step > self._interval_start[0]:
                steps = step - self._interval_start[0]
                seconds = max(now - self._interval_start[1] - self._excluded, 1e-9)
                self._excluded = 0.0
                rate = steps * self.tokens_per_step / seconds
                record["step_seconds"] = seconds / steps
                record["tokens_per_second"] = rate
                record["mfu"] = rate / self.tokens_per_step * self.flops_per_step / self.peak
                self._rates.append((steps, seconds))
                self._interval_start = (step, now)
            self.writer.write(step, record)
            self.progress.advance_to(step, {k: record[k] for k in PROGRESS_FIELDS if k in record}, show=True)
        else:
            self.progress.advance_to(step)
        return True

    def mean_tokens_per_second(self) -> float | None:
        steps = sum(s for s, _ in self._rates)
        seconds = sum(t for _, t in self._rates)
        return steps * self.tokens_per_step / seconds if seconds else None

    def mean_mfu(self) -> float | None:
        rate = self.mean_tokens_per_second()
        return None if rate is None else rate / self.tokens_per_step * self.flops_per_step / self.peak
