"""A SentencePiece BPE model as an HF ``tokenizers.Tokenizer`` that gives the same ids, for transformers.

transformers' own SentencePiece classes (Llama, T5) add a dummy prefix, an end-of-sequence token or their own
whitespace handling, so :func:`build_tokenizer` writes the model out piece by piece instead:

* normalizer: ``" "`` becomes ``"▁"`` and nothing else changes (the models trained here use the ``identity``
  rule, no dummy prefix, no whitespace squeezing);
* pre-tokenizer: SentencePiece's words with ``split_by_whitespace`` and ``allow_whitespace_only_pieces``: a run
  of ``"▁"`` and the non-space characters after it (regex ``▁*[^▁]+|▁+``), so indentation runs stay whole;
* model: BPE over all pieces, ids unchanged. SentencePiece merges, among the adjacent pairs, the one whose
  joined piece has the highest score (leftmost first); the merge list here holds, for every normal piece in
  score order, each split of it into two normal pieces (longer left part first), so HF's lowest-rank-first,
  leftmost-first merging takes the same steps. Two splits of one piece get different ranks where
  SentencePiece ties them, which could matter only where a shorter repeat sits between two equal longer
  ones inside a run of one repeated unit (``"▁▁|▁|▁▁"``); the tests found no text that does so. Only
  normal pieces are ever made by merging: control pieces (``<pad>``, ``<|endoftext|>``), byte pieces
  (``<0x41>``) and user symbols (``\\n``, ``\\t``) never come out of text, as in SentencePiece, and
  characters without a piece fall back to their UTF-8 bytes;
* decoder: ``"▁"`` back to ``" "``, runs of byte pieces to their UTF-8 text.

The ids equal SentencePiece's, and so does the decoded text of the ids encoding produces (the tests compare
the standard library's sources, whitespace runs, unicode and generated text). One difference cannot be
removed, because HF ``tokenizers`` has no decoder that does what SentencePiece does there: a run of byte
pieces that is not UTF-8 (a model can sample one) decodes to one U+FFFD per byte piece, while SentencePiece
replaces only the invalid bytes and keeps whole characters inside the run (``<0xF4><0x47>``:
``"\\ufffd\\ufffd"`` here, ``"\\ufffdG"`` there). Special ids are rendered or skipped as transformers'
``skip_special_tokens`` says, where seqio stops at the first end-of-text id.

:func:`unsupported` lists the settings of a model this does not reproduce (unigram models, dummy prefix,
normalization rules, ...); :func:`build_tokenizer` refuses such models and also re-checks every model on
:data:`SELF_CHECK_TEXTS` against the ``sentencepiece`` library.
"""

from __future__ import annotations

from typing import Any, Sequence

SPACE = "\u2581"
WORD_PATTERN = f"{SPACE}*[^{SPACE}]+|{SPACE}+"
# What the encoder is compared on before a folder gets a tokenizer.json: code, whitespace runs, unicode
# (characters with and without pieces), piece-looking and special-looking text.
SELF_CHECK_TEXTS: tuple[str, ...] = (
    "def f(x):\n\tif x:\n        return  x  \n\n\n",
    "class A(object):\n    \"\"\"Doc.\"\"\"\n\n    def __init__(self, *args, **kwargs) -> None:\n        pass\n",
    " " * 37 + "x = [i ** 2 for i in range(10)]  # comment   \t\t\n" + " " * 3,
    "----" * 9 + "=" * 31 + "**" * 7 + "~" * 11 + "#" * 13 + "_" * 17 + "." * 5,
    "ünïcödé 😀 текст 中文 ∑∫ \u2581 \u00a0 \u3000 \r\n \x00 \x7f \ufeff",
    "<|endoftext|> <pad> <unk> <0x41> <s> </s> \u2581\u2581x",
    "1234567890 3.14159e-10 0xDEADBEEF",
    "",
)


class UnsupportedModelError(ValueError):
    """A SentencePiece model whose ids an HF ``tokenizers.Tokenizer`` here would not reproduce exactly."""


def load_proto(model: bytes) -> Any:
    """Parses a serialized SentencePiece model (``sentencepiece_model_pb2.ModelProto``)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    return proto


def unsupported(proto: Any) -> list[str]:
    """The settings of ``proto`` that :func:`build_tokenizer` does not reproduce (empty when it can)."""
    from sentencepiece import sentencepiece_model_pb2

    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        problems.append(f"model_type is {sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)}"
                        " (only BPE is converted)")
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        problems.append(f"normalization rule {norm.name!r} rewrites text (only 'identity' is converted)")
    if norm.add_dummy_prefix:
        problems.append("add_dummy_prefix is on (text would get a leading space)")
    if norm.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on (whitespace runs would be squeezed)")
    if not norm.escape_whitespaces:
        problems.append("escape_whitespaces is off")
    if proto.denormalizer_spec.precompiled_charsmap:
        problems.append("the model has a denormalization rule")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix is on")
    if not trainer.split_by_whitespace or not trainer.allow_whitespace_only_pieces:
        problems.append("split_by_whitespace and allow_whitespace_only_pieces must both be on")
    if not trainer.byte_fallback:
        problems.append("byte_fallback is off (unknown characters would map to <unk>)")
    for piece in proto.pieces:
        if piece.type == piece_type.UNUSED:
            problems.append(f"piece {piece.piece!r} is marked unused")
            break
        if piece.type == piece_type.USER_DEFINED and len(piece.piece) != 1:
            problems.append(f"user symbol {piece.piece!r} is longer than one character")
            break
        if piece.type == piece_type.NORMAL and SPACE in piece.piece.lstrip(SPACE):
            problems.append(f"piece {piece.piece!r} has a space after other characters")
            break
    return problems


def _merges(proto: Any) -> list[tuple[str, str]]:
    """Each normal piece's splits into two normal pieces, pieces by descending score (then id), longer left
    part first."""
    from sentencepiece import sentencepiece_model_pb2

    normal_type = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    normal = {p.piece for p in proto.pieces if p.type == normal_type}
    order = sorted((-p.score, i) for i, p in enumerate(proto.pieces) if p.type == normal_type)
    merges = []
    for _, i in order:
        piece = proto.pieces[i].piece
        for k in range(len(piece) - 1, 0, -1):
            if piece[:k] in normal and piece[k:] in normal:
                merges.append((piece[:k], piece[k:]))
    return merges


def build_tokenizer(model: bytes, check_texts: Sequence[str] = SELF_CHECK_TEXTS):
    """The HF ``tokenizers.Tokenizer`` of a serialized SentencePiece BPE model (see the module docstring).

    Args:
        model: the bytes of a ``.model`` file.
        check_texts: texts whose ids and decoded text must equal the ``sentencepiece`` library's.

    Returns:
        A ``tokenizers.Tokenizer`` without added tokens: special pieces keep their ids but are never matched
        in text.

    Raises:
        UnsupportedModelError: a setting is not reproduced, or a check text gives other ids or text.
    """
    import sentencepiece
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = load_proto(model)
    problems = unsupported(proto)
    if problems:
        raise UnsupportedModelError("; ".join(problems))
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    if len(vocab) != len(proto.pieces):
        raise UnsupportedModelError("the model has duplicate pieces")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(proto), unk_token=proto.trainer_spec.unk_piece,
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    for text in check_texts:
        ours, theirs = processor.encode(text), tok.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            raise UnsupportedModelError(f"the converted tokenizer gives other ids than sentencepiece for "
                                        f"{text[:40]!r}: {theirs[:12]} instead of {ours[:12]}")
        if tok.decode(theirs, skip_special_tokens=False) != processor.decode(ours):
            raise UnsupportedModelError(f"the converted tokenizer decodes {text[:40]!r} differently")
    return tok


def special_tokens(proto: Any) -> dict[str, str]:
    """transformers' special-token settings (``pad_token``, ``eos_token``, ``unk_token``, ``bos_token``) of
    the model's special pieces; a special the model lacks (id -1) is left out."""
    trainer = proto.trainer_spec
    found = {}
    for key, index in (("pad_token", trainer.pad_id), ("eos_token", trainer.eos_id),
                       ("unk_token", trainer.unk_id), ("bos_token", trainer.bos_id)):
        if 0 <= index < len(proto.pieces):
            found[key] = proto.pieces[index].piece
    return found
