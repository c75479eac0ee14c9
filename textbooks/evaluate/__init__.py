"""Evaluation on the phi papers' benchmarks, offline.

Modules (each imports its heavy dependencies itself; importing this package is cheap):

* :mod:`~textbooks.evaluate.benchmarks` - ``load_benchmark(name, split)`` / ``benchmark_texts(name)`` over the
  local HumanEval, MBPP, GSM8K, PIQA, HellaSwag, ARC, BoolQ, WinoGrande, OpenBookQA, SIQA, MMLU and SQuAD files.
* :mod:`~textbooks.evaluate.prompts` - lm-eval-harness prompt formats (zero-shot; MMLU 2-shot).
* :mod:`~textbooks.evaluate.lm` - :class:`~textbooks.evaluate.lm.EvalModel`: batched, jit-compiled, mesh-sharded
  log-likelihoods and KV-cache generation for a (config, params, vocabulary).
* :mod:`~textbooks.evaluate.multiple_choice` - ``acc`` / ``acc_norm`` by log-likelihood.
* :mod:`~textbooks.evaluate.continuous` - bits per byte of the gold answer, probability of the correct choice.
* :mod:`~textbooks.evaluate.sandbox` - isolated execution of generated programs.
* :mod:`~textbooks.evaluate.code_eval` - HumanEval / MBPP pass@k.
* :mod:`~textbooks.evaluate.gsm8k` - answer extraction and solving via code.
* :mod:`~textbooks.evaluate.squad` - SQuAD exact match / F1.
* :mod:`~textbooks.evaluate.component_loss` - validation loss and bits per byte per mixture component.
* :mod:`~textbooks.evaluate.report` - intervals, JSON, markdown tables in the phi-1.5 layout, plots.
* :mod:`~textbooks.evaluate.suite` - ``evaluate`` (the gin entry point of ``textbooks eval``), ``SuiteSettings``,
  ``evaluate_model``, ``BenchmarkEvalHook``.
* :mod:`~textbooks.evaluate.seqio_tasks` - the multiple-choice suites as seqio Tasks (rank classification).

Command line: ``textbooks eval --checkpoint DIR --tasks=phi15 --out DIR``.
"""

from textbooks.evaluate.benchmarks import benchmark_texts, load_benchmark

__all__ = ["benchmark_texts", "load_benchmark"]
