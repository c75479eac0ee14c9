"""Facts about a named vocabulary (what ``textbooks vocab info`` prints): kind, size, special ids, source files."""

from __future__ import annotations

import dataclasses

from sentencepiece import sentencepiece_model_pb2

from textbooks.vocab import phi, spm_hf
from textbooks.vocab.registry import get_vocabulary


@dataclasses.dataclass(frozen=True)
class VocabularyFacts:
    """What a vocabulary is.

    Attributes:
        name: the name it was asked for (``'phi'``, ``'spm8k'``, ``'byte'``, ``'spm:PATH'``).
        kind: the tokenization algorithm and its notable settings.
        size: number of ids (``vocab_size``, seqio extra ids included).
        special: ``pad``, ``eos``, ``unk``, ``bos`` -> ``(id, piece)``, or None where the vocabulary has none.
        sources: the files it is built from (empty for built-in ones).
    """

    name: str
    kind: str
    size: int
    special: dict[str, tuple[int, str] | None]
    sources: tuple[str, ...]

    def lines(self) -> list[str]:
        """Human-readable lines, one fact per line."""
        special = " ".join(f"{k}={'none' if v is None else f'{v[0]} {v[1]!r}'}" for k, v in self.special.items())
        return [f"name:    {self.name}", f"kind:    {self.kind}", f"size:    {self.size:,} ids",
                f"special: {special}", "source:  " + ("\n         ".join(self.sources) or "none (built in)")]


def _id(value) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


def describe(name: str) -> VocabularyFacts:
    """The facts of vocabulary ``name``.

    Raises:
        ValueError: unknown name. FileNotFoundError: a missing model file.
    """
    vocab = get_vocabulary(name)
    ids = {key: _id(getattr(vocab, f"{key}_id", None)) for key in ("pad", "eos", "unk", "bos")}
    if name == "phi":
        special = {k: None if i is None else (i, "<|endoftext|>" if i == phi.EOS_ID else vocab.decode([i]))
                   for k, i in ids.items()}
        added = len(phi.added_tokens())
        return VocabularyFacts(name, f"byte-level BPE (GPT-2's {phi.GPT2_VOCAB_SIZE:,} tokens + codegen's "
                                     f"{added} whitespace tokens; HF tokenizers); no padding token: seqio's "
                                     f"pad id 0 is a real token, derive padding from segment ids",
                               int(vocab.vocab_size), special, (*phi.gpt2_files(), phi.added_tokens_path()))
    if name == "byte":
        special = {k: None if i is None else (i, {0: "<pad>", 1: "<eos>", 2: "<unk>"}.get(i, "?"))
                   for k, i in ids.items()}
        return VocabularyFacts(name, "UTF-8 bytes (id = byte + 3; seqio ByteVocabulary)", int(vocab.vocab_size),
                               special, ())
    path = vocab.sentencepiece_model_file
    with open(path, "rb") as f:
        proto = spm_hf.load_proto(f.read())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)
    settings = [f"normalization {norm.name or 'none'}",
                "byte fallback" if trainer.byte_fallback else "no byte fallback",
                "dummy prefix" if norm.add_dummy_prefix else "no dummy prefix",
                "squeezes whitespace" if norm.remove_extra_whitespaces else "whitespace kept"]
    special = {k: None if i is None else (i, proto.pieces[i].piece if i < len(proto.pieces) else "?")
               for k, i in ids.items()}
    return VocabularyFacts(name, f"SentencePiece {model_type} ({', '.join(settings)})", int(vocab.vocab_size),
                           special, (path,))
