"""Training phi models over a device mesh: the gin entry point, optimizer, train step, checkpoints and metrics.

Modules: :mod:`.trainer` (``train``, the gin entry point of ``textbooks train``, named after its verb like every
verb's entry point; importing it registers every configurable the run gin files bind), :mod:`.step` (loss,
train/eval steps, gradient accumulation), :mod:`.state` (train state and its shardings), :mod:`.optimizer`
(AdamW, schedules), :mod:`.checkpoints` (orbax, resume), :mod:`.metrics` and :mod:`.flops` (TensorBoard/JSONL,
MFU), :mod:`.summary` (the run's summary.json), :mod:`.hooks` (signals, validation loss), :mod:`.data` (data
sources), :mod:`.synthetic` (synthetic batches), :mod:`.aot` (compiling for a TPU topology ahead of time).
The mesh and sharding rules live in :mod:`textbooks.partitioning`; a trained model is read with
:func:`textbooks.model.load.load_model`.

``train`` and ``TrainResult`` are importable from here (``train`` loaded on first use).
"""

from textbooks.train.summary import TrainResult

__all__ = ["TrainResult", "train"]


def __getattr__(name: str):
    if name == "train":
        # deferred: trainer brings in TensorFlow, seqio, JAX and orbax (~6 s); metrics, summary, optimizer do not
        from textbooks.train import trainer

        return trainer.train
    raise AttributeError(f"module 'textbooks.train' has no attribute {name!r}")
