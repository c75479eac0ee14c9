"""textbooks: reproduce and extend "Textbooks Are All You Need" (phi-1, phi-1.5) in JAX/Flax.

Subpackages follow the one-way data flow: ``corpora`` and ``synth`` produce documents, ``curate`` filters them,
``data`` holds the shard format every stage shares, ``mixtures`` (top level) registers seqio tasks, ``train``
fits ``model`` over a device mesh (``partitioning``), ``evaluate`` scores checkpoints, and ``mixopt`` sweeps
and fits mixture ratios.
"""

__version__ = "0.1.0"
