"""Training phi models over a device mesh: the gin entry point, optimizer, train step, checkpoints and metrics.

Modules: :mod:`.trainer` (``train``, the gin entry point of ``textbooks train``, named after its verb like every
verb's entry point; importing it registers every configurable the run gin files bind), :mod:`.step` (loss,
train/eval steps, gradient accumulation), :mod:`.state` (train state and its shardings), :mod:`.optimizer`
(AdamW, schedules), :mod:`.checkpoints` (orbax, resume), :mod:`.metrics` and :mod:`.flops` (TensorBoard/JSONL,
MFU), :mod:`.summary` (the run's summary.json), :mod:`.hooks` (signals, validation loss), :mod:`.data` (data
sources), :mod:`.synthetic` (synthetic batches), :mod:`.aot` (compiling for a TPU topology ahead of time).
The mesh and sharding rules live in :mod:`textbooks.partitioning`; a trained model is read with
:func:`textbooks.model.load.load_model`.

``train`` and ``TrainResult`` are importable from here (loaded on first use).
"""

_LAZY = {"train": "textbooks.train.trainer", "TrainResult": "textbooks.train.summary"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'textbooks.train' has no attribute {name!r}")
