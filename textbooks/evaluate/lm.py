"""The model as the evaluation sees it: log-likelihood of continuations and text generation.

:class:`EvalModel` wraps (config, params, vocabulary) - e.g. from
:func:`textbooks.model.load.load_model` - and offers the two requests every benchmark reduces to:

* :meth:`EvalModel.loglikelihood` - ``log p(continuation | context)`` for (context, continuation) string pairs,
  tokenized the way lm-eval-harness does (the context alone, then the continuation as the remainder of the
  tokenization of the concatenation, so merges across the boundary are honoured; trailing spaces of the
  context move to the continuation; an empty context is replaced by the end-of-text token), plus whether every
  continuation token was the greedy choice. Sequences longer than the model keep their last ``max_len + 1``
  tokens. Requests are sorted by length and padded to power-of-two length buckets, batched under a token
  budget, and scored by one jit-compiled function per bucket whose batch axis is split over the mesh's
  data axes (``batch`` -> ``replica, data, fsdp`` under the project's logical-axis rules).
* :meth:`EvalModel.generate` - sampled or greedy continuations through :mod:`textbooks.model.decode`
  (KV cache), cut at text stop sequences.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from textbooks import partitioning
from textbooks.model import causal_lm
from textbooks.model import decode as decode_lib
from textbooks.model.buckets import bucket
from textbooks.model.load import load_model
from textbooks.model.stops import cut_at_stop

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
    """Result of one (context, continuation) request.

    Attributes:
        logprob: sum of the natural-log probabilities of the continuation tokens.
        is_greedy: every continuation token was the argmax of its distribution.
        num_tokens: continuation tokens scored.
        truncated: the sequence was cut on the left to fit the model.
    """

    logprob: float
    is_greedy: bool
    num_tokens: int
    truncated: bool = False


def _score_fn(model, params, inputs, targets, segment_ids, window_start, window_mask):
    """Sum of the log-probabilities of each row's continuation, which lies in a window of ``C`` positions from
    ``window_start``. Only the window's hidden states go through the LM head, so a batch never materializes
    ``[batch, length, vocab]`` logits (XLA drops the model's own unused full-length head)."""
    import jax
    import jax.numpy as jnp

    _, hidden = model.apply({"params": params}, inputs, segment_ids=segment_ids, output_hidden_states=True)
    width = window_mask.shape[1]
    index = jnp.clip(window_start[:, None] + jnp.arange(width)[None, :], 0, inputs.shape[1] - 1)  # [B, C]
    h = jnp.take_along_axis(hidden, index[..., None], axis=1)  # [B, C, D]
    tgt = jnp.take_along_axis(targets, index, axis=1)
    logits = causal_lm.head_logits(model.config, params, h)
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_logp = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == tgt
    mask = window_mask.astype(bool)
    total = jnp.sum(jnp.where(mask, token_logp, 0.0), axis=-1)
    all_greedy = jnp.all(greedy | ~mask, axis=-1)
    return total, all_greedy


def _token_logprob_fn(model, params, inputs, targets, segment_ids, positions):
    import jax
    import jax.numpy as jnp

    logits = model.apply({"params": params}, inputs, segment_ids=segment_ids, positions=positions)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


class EvalModel:
    """A model ready for benchmark requests.

    Args:
        config: the :class:`textbooks.model.config.ModelConfig`.
        params: parameters (numpy or jax arrays, any layout :mod:`textbooks.model.params_io` accepts).
        vocabulary: the seqio vocabulary the model was trained with.
        mesh: device mesh; default: all devices on the data axis (``textbooks.partitioning``).
        rules: logical-axis rules; default: the project's.
        tokens_per_batch: padded tokens per scoring batch (bounds the ``[batch, length, vocab]`` logits).
        min_length_bucket: smallest padded length of scoring batches.
        decode_min_length_bucket: smallest prompt/cache length bucket of generation; raising it to ``max_len``
            gives every prompt one shape (fewer compiled programs, which pays off for small models and runs).
    """

    def __init__(self, config, params, vocabulary, *, mesh=None, rules=None, tokens_per_batch: int = 4096,
                 min_length_bucket: int = 32, decode_min_length_bucket: int = 16):
        import jax

        self.config = config.replace(embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0, remat_policy="none")
        self.vocabulary = vocabulary
        self.mesh = mesh if mesh is not None else partitioning.make_mesh(partitioning.PartitioningConfig())
        self.rules = tuple(rules if rules is not None else partitioning.DEFAULT_LOGICAL_AXIS_RULES)
        self.tokens_per_batch = int(tokens_per_batch)
        self.min_length_bucket = int(min_length_bucket)
        self.decode_min_length_bucket = int(decode_min_length_bucket)
        self.data_parallel = math.prod(self.mesh.shape[a] for a in partitioning.DATA_AXES if a in self.mesh.shape)
        self._host_params = params
        self._model = causal_lm.CausalLM(self.config)
        try:
            param_sharding = partitioning.logical_to_sharding(causal_lm.param_logical_specs(self.config), self.mesh,
                                                              self.rules)
            self.params = jax.device_put(params, param_sharding)
        except (ValueError, TypeError) as e:  # layout differs from the config's: keep a full copy per device.
            logger.warning("parameters do not match the logical specs of the config (%s); replicating them", e)
            param_sharding = partitioning.replicated(self.mesh)
            self.params = jax.device_put(params, param_sharding)
        self._param_sharding = param_sharding
        batch_sharding = partitioning.batch_sharding(self.mesh, self.rules)
        row_sharding = partitioning.logical_sharding(("batch",), self.mesh, self.rules)
        self._score = jax.jit(functools.partial(_score_fn, self._model),
                              in_shardings=(param_sharding, batch_sharding, batch_sharding, batch_sharding,
                                            row_sharding, batch_sharding),
                              out_shardings=(row_sharding, row_sharding))
        self._token_logprobs = jax.jit(functools.partial(_token_logprob_fn, self._model),
                                       in_shardings=(param_sharding,) + (batch_sharding,) * 4,
                                       out_shardings=batch_sharding)
        self._decoder = None
        self.compiled_shapes: set[tuple[int, int, int]] = set()  # (rows, length, continuation window)

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, **kwargs: Any) -> "EvalModel":
        """Loads ``path`` with :func:`textbooks.model.load.load_model` (orbax model/step dir or HF dir)."""
        loaded = load_model(path)
        return cls(loaded.config, loaded.params, loaded.vocabulary, **kwargs)

    def set_params(self, params: Any) -> None:
        """Swaps in new parameters of the same shapes (e.g. a later training step); compiled code is reused."""
        import jax

        self._host_params = params
        self.params = jax.device_put(params, self._param_sharding)
        self._decoder = None

    @property
    def eos_id(self) -> int:
        return int(self.vocabulary.eos_id)

    @property
    def max_len(self) -> int:
        return int(self.config.max_len)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.vocabulary.encode(text)]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        batch = getattr(self.vocabulary, "encode_batch", None)
        if batch is not None and len(texts) > 1:
            return [[int(t) for t in ids] for ids in batch(list(texts))]
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocabulary.decode([int(i) for i in ids])

    # ------------------------------------------------------------------------------------------------------
    def encode_pairs(self, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Tokenizes (context, continuation) pairs the lm-eval way (see the module docstring)."""
        contexts, wholes = [], []
        for context, continuation in requests:
            spaces = len(context) - len(context.rstrip(" "))
            if spaces:
                continuation, context = context[-spaces:] + continuation, context[:-spaces]
            contexts.append(context)
            wholes.append(context + continuation)
        unique = list(dict.fromkeys([c for c in contexts if c] + wholes))
        table = dict(zip(unique, self.encode_many(unique)))
        pairs = []
        for context, whole in zip(contexts, wholes):
            if not context:
                pairs.append(([self.eos_id], table[whole]))
                continue
            ctx_ids, whole_ids = table[context], table[whole]
            pairs.append((ctx_ids, whole_ids[len(ctx_ids):]))
        return pairs

    def loglikelihood(self, requests: Sequence[tuple[str, str]], *,
                      progress: Callable[[int, int], None] | None = None) -> list[LogLikelihood]:
        """``log p(continuation | context)`` for each (context, continuation) pair, in order."""
        return self.loglikelihood_tokens(self.encode_pairs(requests), progress=progress)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                             progress: Callable[[int, int], None] | None = None) -> list[LogLikelihood]:
        """Like :meth:`loglikelihood` for already tokenized (context ids, continuation ids) pairs."""
        import jax

        max_len = self.max_len
        rows = []  # (bucket, index, inputs, targets, n_cont, truncated)
        results: list[LogLikelihood | None] = [None] * len(pairs)
        for i, (ctx, cont) in enumerate(pairs):
            ctx, cont = list(ctx) or [self.eos_id], list(cont)
            if not cont:
                results[i] = LogLikelihood(0.0, True, 0, False)
                continue
            whole = ctx + cont
            truncated = len(whole) > max_len + 1
            whole = whole[-(max_len + 1):]
            n_cont = min(len(cont), len(whole) - 1)
            rows.append((len(whole) - 1, i, whole[:-1], whole[1:], n_cont, truncated))
        rows.sort(key=lambda r: -r[0])
        done, total, start = 0, len(rows), time.monotonic()
        index = 0
        # Parameters and batch carry their shardings in and out; XLA propagates them through the model. (The
        # model's activation constraints are left off: with Flax 0.12, DenseGeneral's shape check re-runs the
        # kernel initializer and applies the 3-d logical names to a 2-d kernel under a mesh with rules.)
        with jax.set_mesh(self.mesh):
            while index < len(rows):
                length = bucket(rows[index][0], min(self.min_length_bucket, max_len), max_len)
                per_batch = max(1, self.tokens_per_batch // length // self.data_parallel) * self.data_parallel
                chunk = rows[index:index + per_batch]  # sorted longest first: all fit in ``length``
                index += len(chunk)
                # Row counts are powers of two times the data-parallel size, so few shapes get compiled.
                batch = min(per_batch, self.data_parallel * bucket(-(-len(chunk) // self.data_parallel), 1,
                                                                   per_batch))
                width = bucket(max(r[4] for r in chunk), min(32, length), length)
                inputs = np.zeros((batch, length), np.int32)
                targets = np.zeros((batch, length), np.int32)
                segments = np.zeros((batch, length), np.int32)
                starts = np.zeros((batch,), np.int32)
                mask = np.zeros((batch, width), np.int32)
                for b, (n, _, inp, tgt, n_cont, _) in enumerate(chunk):
                    inputs[b, :n], targets[b, :n], segments[b, :n] = inp, tgt, 1
                    starts[b] = n - n_cont
                    mask[b, :n_cont] = 1
                self.compiled_shapes.add((batch, length, width))
                total_lp, greedy = jax.device_get(self._score(self.params, inputs, targets, segments, starts,
                                                              mask))
                for b, (_, i, _, _, n_cont, truncated) in enumerate(chunk):
                    results[i] = LogLikelihood(float(total_lp[b]), bool(greedy[b]), n_cont, truncated)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total:
            logger.info("scored %d requests in %.1fs (%d compiled shapes)", total, time.monotonic() - start,
                        len(self.compiled_shapes))
        return results  # type: ignore[return-value]

    def token_logprobs(self, inputs: np.ndarray, targets: np.ndarray, segment_ids: np.ndarray,
                       positions: np.ndarray) -> np.ndarray:
        """``log p(targets[b, t] | inputs[b, :t+1])`` for packed rows ``[batch, length]`` (segment 0 = padding).

        Rows are padded up to a multiple of the data-parallel size; the result has the input's shape.
        """
        import jax

        arrays = [np.asarray(a, np.int32) for a in (inputs, targets, segment_ids, positions)]
        rows = arrays[0].shape[0]
        padded = -(-rows // self.data_parallel) * self.data_parallel
        if padded != rows:
            arrays = [np.pad(a, ((0, padded - rows), (0, 0))) for a in arrays]
        with jax.set_mesh(self.mesh):
            out = jax.device_get(self._token_logprobs(self.params, *arrays))
        return np.asarray(out)[:rows]

    # ------------------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, num_samples: int = 1,
                 seed: int = 0, max_batch_size: int = 16) -> list[list[str]]:
        """Returns ``num_samples`` continuations per prompt, each cut at the first of ``stop``.

        Prompts longer than ``max_len - max_new_tokens`` keep their last tokens. Generation runs on one
        device with the KV-cache decoder (its batch is not split over the mesh).
        """
        import jax

        if self._decoder is None:
            params = jax.device_put(self._host_params, jax.local_devices()[0])
            self._decoder = decode_lib.Decoder(params, self.config, max_batch_size=max_batch_size,
                                               min_length_bucket=min(self.decode_min_length_bucket, self.max_len))
        max_new = max(1, min(int(max_new_tokens), self.max_len - 1))
        stop_ids = [ids for ids in (self.encode(s) for s in stop) if ids]
        prompt_ids = self.encode_many(list(prompts))
        requests = []
        for p, ids in enumerate(prompt_ids):
            ids = (ids or [self.eos_id])[-(self.max_len - max_new):]
            for s in range(num_samples):
                seed_s = int(np.random.SeedSequence([seed, p, s]).generate_state(1)[0])
                requests.append(decode_lib.GenerationRequest(
                        prompt=ids, max_new_tokens=max_new, temperature=float(temperature), top_k=int(top_k),
                        top_p=float(top_p), stop_sequences=stop_ids, eos_id=self.eos_id, seed=seed_s))
        outputs = self._decoder.generate(requests)
        texts = [self.decode(o.tokens) for o in outputs]
        out = []
        for p in range(len(prompt_ids)):
            samples = texts[p * num_samples:(p + 1) * num_samples]
            out.append([cut_at_stop(t, stop) for t in samples])
        return out

