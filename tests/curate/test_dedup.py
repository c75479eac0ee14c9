"""Exact and MinHash LSH dedup on real text (stdlib docstrings) with planted near-duplicates."""

import itertools
import random

import apache_beam as beam
import numpy as np
import pytest

import curate_testdata as td
from textbooks.curate import dedup


def _planted_corpus(n_bases=160, n_dup_bases=80, seed=0):
    """Bases with pairwise Jaccard < 0.3, and 1-2 variants (edit, insertion, reordering) of some of them."""
    rng = random.Random(seed)
    bases = []
    shingle_sets = []
    for doc_id, text in td.stdlib_docstrings(min_words=150):
        s = td.shingles(text)
        if all(len(s & o) / len(s | o) < 0.3 for o in shingle_sets):
            bases.append((doc_id, text))
            shingle_sets.append(s)
        if len(bases) == n_bases:
            break
    assert len(bases) == n_bases, "not enough distinct stdlib docstrings"
    docs = list(bases)
    truth = {doc_id: doc_id for doc_id, _ in bases}
    kinds = ["edit", "insert", "reorder", "edit+append"]
    for i, (doc_id, text) in enumerate(bases[:n_dup_bases]):
        for v in range(1 + i % 2):
            kind = kinds[(i + v) % len(kinds)]
            if kind == "edit":
                new = td.light_edit(text, rng, every=100)
            elif kind == "insert":
                other = bases[-1 - i][1]
                new = td.insert_sentence(text, " ".join(other.split()[:14]) + ".", rng)
            elif kind == "reorder":
                new = td.swap_paragraphs(text, rng)
            else:
                new = td.light_edit(text, rng, every=150) + "\n\nSee also the module documentation."
            vid = f"{doc_id}#v{v}"
            docs.append((vid, new))
            truth[vid] = doc_id
    rng.shuffle(docs)
    return docs, truth


def _pairs(groups):
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def _records(docs):
    return [{"id": i, "text": t, "role": "r", "source": "stdlib", "license": "PSF-2.0", "split": "train", "meta": {}}
            for i, t in docs]


@pytest.fixture(scope="module")
def planted():
    return _planted_corpus()


def test_minhash_estimates_jaccard(planted):
    docs, truth = planted
    hasher = dedup.MinHasher(dedup.MinHashConfig(num_bands=32, rows_per_band=8))
    by_id = dict(docs)
    variants = [d for d in truth if truth[d] != d][:25]
    errors = []
    for v in variants:
        a, b = by_id[v], by_id[truth[v]]
        est = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        errors.append(abs(est - td.jaccard(a, b)))
    assert np.mean(errors) < 0.05 and max(errors) < 0.15, errors


def test_candidate_probability_formula():
    cfg = dedup.MinHashConfig()
    assert cfg.candidate_probability(0.8) == pytest.approx(1 - (1 - 0.8 ** 8) ** 14)
    assert cfg.candidate_probability(0.3) < 0.01 < 0.9 < cfg.candidate_probability(0.9)


def test_near_dedup_beam_recall_precision(planted, tmp_path):
    docs, truth = planted
    cfg = dedup.MinHashConfig()  # FineWeb: 5-gram shingles, 14 bands x 8 rows
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(_records(docs)) | dedup.NearDedup(cfg)
        load = td.collect({"clusters": out["clusters"], "kept": out["kept"] | "k" >> beam.Map(lambda r: r["id"]),
                           "dropped": out["dropped"] | "d" >> beam.Map(lambda r: (r["id"], r["meta"]["curation"]))},
                          str(tmp_path))
    results = load()
    predicted_groups = [c["members"] for c in results["clusters"]]
    true_groups = {}
    for doc_id, base in truth.items():
        true_groups.setdefault(base, []).append(doc_id)
    pred, true = _pairs(predicted_groups), _pairs(true_groups.values())
    precision = len(pred & true) / max(len(pred), 1)
    recall = len(pred & true) / max(len(true), 1)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, len(pred), len(true))
    # Exactly one survivor per predicted cluster, the smallest id (keep='min_id'); all others dropped.
    assert len(results["kept"]) + len(results["dropped"]) == len(docs)
    for c in results["clusters"]:
        assert c["keeper"] == min(c["members"]) and c["keeper"] in results["kept"]
    for doc_id, info in results["dropped"]:
        assert info["reason"] == "near_duplicate" and info["duplicate_of"] < doc_id
    # The same algorithm without Beam finds the same clusters.
    in_memory = dedup.near_duplicate_clusters(docs, cfg)
    assert sorted(map(sorted, in_memory)) == sorted(map(sorted, predicted_groups))


def test_keep_longest_policy():
    text = td.stdlib_docstrings(min_words=150)[0][1]
    docs = [("a", text), ("b", text + " One more sentence at the end of it."), ("c", "unrelated " * 50)]
    clusters = dedup.near_duplicate_clusters(docs, dedup.MinHashConfig(keep="longest"))
    assert clusters == [["b", "a"]]


def test_exact_dedup_normalization_and_keeper():
    base = "The quick brown fox jumps over the lazy dog.\nIt was not amused."
    recs = _records([("z", base), ("m", "  THE quick brown fox   jumps over the lazy dog.\n\nIt was not amused.  "),
                     ("a", base.lower()), ("q", "Something else entirely.")])
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(recs) | dedup.ExactDedup()
        from apache_beam.testing.util import assert_that, equal_to
        assert_that(out["kept"] | "k" >> beam.Map(lambda r: r["id"]), equal_to(["a", "q"]), label="kept")
        assert_that(out["dropped"] | "d" >> beam.Map(lambda r: (r["id"], r["meta"]["curation"]["duplicate_of"])),
                    equal_to([("m", "a"), ("z", "a")]), label="dropped")
    # With lowercase=False the case-changed copy is distinct.
    from textbooks.curate.textnorm import exact_key
    assert exact_key("Hello  World") == exact_key("hello world")
    assert exact_key("Hello World", lowercase=False) != exact_key("hello world", lowercase=False)


def test_connected_components_transitive():
    comps = dedup.connected_components([(3, 4), (1, 2), (2, 3), (7, 8)])
    assert comps == [[1, 2, 3, 4], [7, 8]]


def test_verify_threshold_filters_weak_candidates(planted):
    docs, truth = planted
    by_id = dict(docs)
    variant = next(d for d in truth if truth[d] != d and "#v0" in d)
    base = truth[variant]
    pair = [(base, by_id[base]), (variant, by_id[variant]), ("copy", by_id[base])]
    estimate = float(np.mean(dedup.MinHasher(dedup.MinHashConfig()).signature(by_id[base])
                             == dedup.MinHasher(dedup.MinHashConfig()).signature(by_id[variant])))
    assert 0.5 < estimate < 1.0
    loose = dedup.near_duplicate_clusters(pair, dedup.MinHashConfig())
    strict = dedup.near_duplicate_clusters(pair, dedup.MinHashConfig(verify_threshold=0.999))
    assert sorted(map(sorted, loose)) == [sorted([base, variant, "copy"])]
    assert strict == [sorted([base, "copy"])]  # only the exact copy agrees on every signature position


def test_signature_is_multiply_add_shift_minimum_and_band_keys_match_band_hashes(planted):
    """Each signature position is ``min over shingles x of ((a*x + b) mod 2**64) >> 32``, written out with
    Python integers (exact arithmetic), and the band keys carry the band hashes of the signature."""
    docs, _ = planted
    hasher = dedup.MinHasher(dedup.MinHashConfig())
    shingles = hasher.shingles(docs[0][1])[:50]
    assert len(shingles) == 50 and int(shingles.max()) < 1 << 32
    a, b = [int(v) for v in hasher.a], [int(v) for v in hasher.b]
    expected = [min(((ai * int(x) + bi) % (1 << 64)) >> 32 for x in shingles) for ai, bi in zip(a, b)]
    assert hasher.signature_of_shingles(shingles).tolist() == expected
    sigs = np.stack([hasher.signature(t) for _, t in docs[:5]])
    hashes = hasher.band_hashes(sigs)
    assert hashes.shape == (5, 14) and hashes.dtype == np.uint64
    for sig, row in zip(sigs, hashes):
        assert hasher.band_keys(sig) == [band.to_bytes(2, "little") + int(h).to_bytes(8, "little")
                                         for band, h in enumerate(row)]
    # Signatures differing in one band's rows differ in that band's hash only.
    other = sigs[0].copy()
    other[3] ^= 1
    diff = hasher.band_hashes(np.stack([sigs[0], other]))
    assert (diff[0] != diff[1]).tolist() == [i == 0 for i in range(14)]


@pytest.mark.parametrize("batch_size,bucket_shards,keep,verify", [(1, 1, "min_id", None), (7, 3, "longest", None),
                                                                 (5, 2, "min_id", 0.6)])
def test_near_dedup_batches_and_shards_do_not_change_clusters(planted, tmp_path, batch_size, bucket_shards, keep,
                                                              verify):
    """Small batches (one document each, or several bundles' worth) and any number of bucket shards give the
    clusters of the in-memory algorithm, with each keep policy and with signature verification."""
    docs, _ = planted
    docs = docs[:120]
    cfg = dedup.MinHashConfig(batch_size=batch_size, bucket_shards=bucket_shards, keep=keep, verify_threshold=verify)
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(_records(docs)) | dedup.NearDedup(cfg)
        load = td.collect({"clusters": out["clusters"]}, str(tmp_path))
    got = sorted((c["keeper"], sorted(c["members"])) for c in load()["clusters"])
    expected = sorted((c[0], sorted(c)) for c in dedup.near_duplicate_clusters(docs, cfg))
    assert got == expected and len(expected) >= 10


def test_config_rejects_nonpositive_batch():
    with pytest.raises(ValueError, match="batch_size and bucket_shards"):
        dedup.MinHashConfig(bucket_shards=0)


def _run_near_dedup(records, cfg, directory):
    """Runs NearDedup; returns (kept ids, {dropped id: meta.curation}, counters by name)."""
    from apache_beam.metrics.metric import MetricsFilter

    p = beam.Pipeline(runner="DirectRunner")
    out = p | beam.Create(records) | dedup.NearDedup(cfg)
    load = td.collect({"kept": out["kept"] | "k" >> beam.Map(lambda r: r["id"]),
                       "dropped": out["dropped"] | "d" >> beam.Map(lambda r: (r["id"], r["meta"]["curation"]))},
                      directory)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    got = load()
    return sorted(got["kept"]), dict(got["dropped"]), counters


@pytest.mark.parametrize("keep", ["min_id", "longest"])
def test_near_dedup_join_and_side_input_give_the_same_decisions(planted, tmp_path, keep):
    """The CoGroupByKey join and the dict side input keep the same records and drop the others with the same
    ``meta.curation``; the counters say which path ran."""
    docs, truth = planted
    records = _records(docs)
    runs = {}
    for path in ("join", "side_input"):  # 'reread' needs input files: tests/curate/test_reread.py
        cfg = dedup.MinHashConfig(keep=keep, decisions=path, batch_size=37, bucket_shards=3)
        runs[path] = _run_near_dedup(records, cfg, str(tmp_path / path))
    (kept_j, dropped_j, counters_j), (kept_s, dropped_s, counters_s) = runs["join"], runs["side_input"]
    assert kept_j == kept_s and dropped_j == dropped_s
    assert len(kept_j) + len(dropped_j) == len(docs) and len(dropped_j) >= 0.9 * (len(docs) - len(set(truth.values())))
    assert set(kept_j).isdisjoint(dropped_j)
    for doc_id, info in dropped_j.items():
        assert info["reason"] == "near_duplicate" and info["stage"] == "near_dedup" and info["duplicate_of"] in kept_j
        assert info["cluster_size"] >= 2
    assert counters_j.get("near_dedup/decisions_join", 0) >= 1 and "near_dedup/decisions_side_input" not in counters_j
    assert counters_s.get("near_dedup/decisions_side_input", 0) >= 1 and "near_dedup/decisions_join" not in counters_s


def test_config_rejects_unknown_decisions_path():
    with pytest.raises(ValueError, match=r"MinHashConfig\.decisions must be one of 'auto', 'join', 'side_input', "
                                         r"'reread', got 'shuffle'"):
        dedup.MinHashConfig(decisions="shuffle")


class _RemoteRunner(beam.runners.runner.PipelineRunner):
    """Stands for a distributed runner (Dataflow, Flink, Spark): never run, only named."""


def test_auto_decisions_side_input_on_local_runners_join_elsewhere():
    auto = dedup.MinHashConfig()
    assert auto.decisions == "auto"
    assert dedup.decisions_path(auto, beam.Pipeline()) == "side_input"
    assert dedup.decisions_path(auto, beam.Pipeline(runner="DirectRunner")) == "side_input"
    assert dedup.decisions_path(auto, beam.Pipeline(runner=_RemoteRunner())) == "join"
    # Where the stage can read its input again: 'reread' on local runners only (it holds every decision).
    assert dedup.decisions_path(auto, beam.Pipeline(runner="DirectRunner"), reread=True) == "reread"
    assert dedup.decisions_path(auto, beam.Pipeline(runner=_RemoteRunner()), reread=True) == "join"
    for path in dedup.DECISIONS:  # an explicit choice holds on every runner
        cfg = dedup.MinHashConfig(decisions=path)
        assert dedup.decisions_path(cfg, beam.Pipeline(), reread=True) == path
        assert dedup.decisions_path(cfg, beam.Pipeline(runner=_RemoteRunner()), reread=True) == path
    with pytest.raises(ValueError, match=r"'reread' needs near dedup to see the records exactly as read"):
        dedup.decisions_path(dedup.MinHashConfig(decisions="reread"), beam.Pipeline())


def test_word_hash_cache_is_bounded_and_exact(monkeypatch):
    """The per-process word-hash cache never grows past its limit (it is emptied first), and hashes are the
    words' BLAKE2b values whether or not they were cached."""
    from textbooks.curate import textnorm

    monkeypatch.setattr(textnorm, "_CACHE_LIMIT", 50)
    monkeypatch.setattr(textnorm, "_word_cache", {})
    for start in range(0, 400, 30):
        words = [f"w{i}" for i in range(start, start + 40)] + ["w0", "w0"]
        got = textnorm.hash_words(words)
        assert got.tolist() == [textnorm.stable_hash64(w) for w in words]
        assert len(textnorm._word_cache) <= 50
    assert textnorm.hash_words([]).shape == (0,)


def test_batched_words_are_word_tokens_and_batches_do_not_change_signatures(planted, monkeypatch):
    """The batched tokenizer finds exactly :func:`textnorm.word_tokens`'s words (non-ASCII letters, digits,
    underscores, a NUL inside a text, empty texts), equal words get equal hashes in any batch, and a
    document's signature does not depend on the batch it is computed in (nor on the character budget that
    splits a batch)."""
    from textbooks.curate import minhash
    from textbooks.curate.textnorm import word_tokens

    texts = [t for _, t in planted[0][:40]] + ["Straße ﬁne naïve 42 foo_bar\x00baz — ½", "", " ,. ", "one two",
                                              "Ünïcödé wörds, ÜNÏCÖDÉ WÖRDS"]
    hasher = dedup.MinHasher(dedup.MinHashConfig())
    hashes, owner = hasher.words(texts)
    by_word = {}
    for i, text in enumerate(texts):
        words = word_tokens(text)
        mine = hashes[owner == i].tolist()
        assert len(mine) == len(words), (i, text[:80])
        for w, h in zip(words, mine):
            assert by_word.setdefault(w, h) == h, w
    assert len(set(by_word.values())) == len(by_word)
    together, counts = hasher.signatures(texts)
    assert counts.tolist() == [len(word_tokens(t)) for t in texts]
    monkeypatch.setattr(minhash, "_CHAR_BUDGET", 5000)
    monkeypatch.setattr(minhash, "_BLOCK", 7)
    for i, text in enumerate(texts):
        alone = hasher.signature(text)
        assert (alone is None) == (counts[i] == 0)
        if alone is not None:
            assert alone.tolist() == together[i].tolist()
    assert hasher.signatures(texts)[0].tolist() == together.tolist()
