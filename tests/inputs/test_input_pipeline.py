"""Input pipeline: packing, determinism, host sharding, save/restore and bad input."""

import gzip
import json
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import mixtures  # noqa: F401  (registers tasks)
from mixtures import roles, sources, testing
from textbooks.data import records
from textbooks.data.counts import SplitStats
from textbooks.data.manifest import Manifest, write_manifest
from textbooks.inputs import converters, pipeline
from textbooks.tokens import packing

MEAN_CHARS = {"code_filtered": 9000, "code_textbooks": 700, "code_exercises": 200}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("roles"))
    return testing.write_corpora(root, roles=list(MEAN_CHARS), mean_chars=MEAN_CHARS,
                                 num_docs={"train": 60, "validation": 12}, num_shards=4)


@pytest.fixture(autouse=True)
def _byte_data(data_root, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", data_root)
    gin.bind_parameter("mixtures.roles.vocabulary_name.name", "byte")


def byte_tokens(text):
    return [b + 3 for b in text.encode("utf-8")] + [1]  # seqio.ByteVocabulary: ids = bytes + 3, eos = 1


# ----------------------------------------------------------------------------------------------------------
# Packing.


def reference_pack(docs, roles_, length):
    """Independent packer: concatenate, cut into rows, number fragments per row."""
    stream = [(t, d, p, r) for d, (doc, r) in enumerate(zip(docs, roles_)) for p, t in enumerate(doc)]
    rows = []
    for start in range(0, len(stream), length):
        chunk = stream[start:start + length]
        first_doc, first_pos = chunk[0][1], chunk[0][2]
        row = {"targets": [], "seg": [], "pos": [], "role": []}
        for t, d, p, r in chunk:
            row["targets"].append(t)
            row["seg"].append(d - first_doc + 1)
            row["pos"].append(p - first_pos if d == first_doc else p)
            row["role"].append(r)
        pad = length - len(chunk)
        for k in row:
            row[k] += [0] * pad
        rows.append(row)
    return rows


def test_pack_rows_matches_reference():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 5, size=n).astype(np.int32) for n in rng.integers(1, 700, size=40)]
    role_ids = rng.integers(1, 7, size=len(docs)).astype(np.int32)
    ds = tf.data.Dataset.from_generator(lambda: ({"targets": d, "role_id": r} for d, r in zip(docs, role_ids)),
                                        output_signature={"targets": tf.TensorSpec([None], tf.int32),
                                                          "role_id": tf.TensorSpec([], tf.int32)})
    got = list(packing.pack_rows(ds, 256).as_numpy_iterator())
    want = reference_pack(docs, role_ids, 256)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["targets"], w["targets"])
        np.testing.assert_array_equal(g["targets_segment_ids"], w["seg"])
        np.testing.assert_array_equal(g["targets_positions"], w["pos"])
        np.testing.assert_array_equal(g["targets_role_ids"], w["role"])


def test_converter_loss_weights_come_from_segments_not_token_ids():
    docs = [np.array([0, 0, 7, 9], np.int32), np.array([0, 5], np.int32), np.array([4, 0, 0], np.int32)]
    ds = tf.data.Dataset.from_generator(lambda: ({"targets": d, "role_id": np.int32(2)} for d in docs),
                                        output_signature={"targets": tf.TensorSpec([None], tf.int32),
                                                          "role_id": tf.TensorSpec([], tf.int32)})
    conv = converters.LMPackingFeatureConverter(bos_id=99)
    (row,) = list(conv(ds, {"targets": 12}).as_numpy_iterator())
    np.testing.assert_array_equal(row["decoder_target_tokens"], [0, 0, 7, 9, 0, 5, 4, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 1, 2, 2, 3, 3, 3, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_loss_weights"], [1] * 9 + [0] * 3)  # token 0 is real
    np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_input_tokens"], [99, 0, 0, 7, 99, 0, 99, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_role_ids"], [2] * 9 + [0] * 3)


def test_seqio_decoder_converter_accepts_role_tasks():
    # T5X users can keep seqio's own converter; the role_id feature is simply ignored there.
    ds = seqio.get_dataset("code_exercises", {"targets": 64}, seqio.DecoderFeatureConverter(pack=True),
                           shuffle=False)
    batch = next(ds.as_numpy_iterator())
    assert set(batch) >= {"decoder_target_tokens", "decoder_segment_ids"}


def test_long_documents_pack_fully_and_are_split_not_truncated():
    it = pipeline.make_train_iterator("code_filtered", task_feature_lengths=2048, batch_size=8, seed=0)
    stats = [pipeline.describe_batch(next(it)) for _ in range(6)]
    assert min(s["efficiency"] for s in stats) >= 0.98
    # Every validation token arrives exactly once: documents longer than 2048 are split, not cut.
    evals = pipeline.make_eval_datasets("code_filtered", task_feature_lengths=2048, batch_size=4)
    got = sum(int(b["decoder_loss_weights"].sum()) for b in evals["code_filtered"])
    want = sum(len(byte_tokens(r.text)) for r in testing.make_records("code_filtered", "validation", 12, 9000))
    assert got == want
    assert want > 12 * 2048  # documents are much longer than a row


def test_segments_are_document_fragments():
    it = pipeline.make_train_iterator("phi1", task_feature_lengths=512, batch_size=4, seed=1)
    for _ in range(3):
        batch = next(it)
        for row in range(4):
            seg = batch["decoder_segment_ids"][row]
            pos = batch["decoder_positions"][row]
            tgt = batch["decoder_target_tokens"][row]
            for s in np.unique(seg[seg > 0]):
                idx = np.flatnonzero(seg == s)
                assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
                np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
                assert not np.any(tgt[idx][:-1] == 1)  # end-of-text only at a fragment's end
                assert len(np.unique(batch["decoder_role_ids"][row][idx])) == 1


# ----------------------------------------------------------------------------------------------------------
# Determinism, sharding, save/restore.


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_same_seed_same_batches():
    kwargs = dict(task_feature_lengths=256, batch_size=4)
    a = take(pipeline.make_train_iterator("phi1", seed=7, **kwargs), 5)
    b = take(pipeline.make_train_iterator("phi1", seed=7, **kwargs), 5)
    c = take(pipeline.make_train_iterator("phi1", seed=8, **kwargs), 5)
    assert same(a, b)
    assert not same(a, c)


@pytest.mark.parametrize("num_hosts", [2, 5])  # 4 files: whole files per host, then every 5th example
def test_host_shards_are_disjoint_and_cover_the_data(num_hosts):
    task = seqio.TaskRegistry.get("code_textbooks_byte")
    ids = []
    for i in range(num_hosts):
        ds = task.get_dataset(None, split="train", shuffle=True, seed=3, num_epochs=1,
                              shard_info=seqio.ShardInfo(i, num_hosts))
        ids.append([ex["id"] for ex in ds.as_numpy_iterator()])
    flat = [x for part in ids for x in part]
    assert len(flat) == len(set(flat)) == 60
    assert all(part for part in ids)


def test_host_iterators_split_the_global_batch():
    hosts = [pipeline.make_train_iterator("phi1", task_feature_lengths=256, batch_size=8, seed=0,
                                          shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    batches = [next(h) for h in hosts]
    assert all(b["decoder_target_tokens"].shape == (4, 256) for b in batches)
    assert not np.array_equal(batches[0]["decoder_target_tokens"], batches[1]["decoder_target_tokens"])
    evals = [pipeline.make_eval_datasets("code_exercises", task_feature_lengths=256, batch_size=4,
                                         shard_info=seqio.ShardInfo(i, 2))["code_exercises"] for i in range(2)]
    got = sum(int(b["decoder_loss_weights"].sum()) for e in evals for b in e)
    want = sum(len(byte_tokens(r.text)) for r in testing.make_records("code_exercises", "validation", 12, 200))
    assert got == want


def test_save_and_restore_resume_exactly(tmp_path):
    kwargs = dict(task_feature_lengths=512, batch_size=4, seed=11)
    it = pipeline.make_train_iterator("phi1", **kwargs)
    before = take(it, 3)
    state = it.get_state()
    after = take(it, 4)
    restored = pipeline.make_train_iterator("phi1", **kwargs)
    restored.set_state(state)
    assert restored.step == 3
    resumed = take(restored, 4)
    assert same(after, resumed)  # neither replays nor skips
    assert not any(np.array_equal(before[-1]["decoder_target_tokens"], r["decoder_target_tokens"])
                   for r in resumed)
    path = str(tmp_path / "iterator.state")
    restored.save(path)
    again = pipeline.make_train_iterator("phi1", **kwargs)
    again.restore(path)
    assert same(take(restored, 2), take(again, 2))
    other = pipeline.make_train_iterator("phi1", task_feature_lengths=512, batch_size=4, seed=12)
    with pytest.raises(ValueError, match="seed=11 vs 12"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not an input pipeline state"):
        other.set_state(b"garbage")


# ----------------------------------------------------------------------------------------------------------
# Bad input.


def write_raw_shard(directory, name, lines):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(gzip.compress(b"".join(lines), mtime=0))


def good_line(i, role="code_exercises"):
    return (records.Record(id=f"ok-{i}", text=f"doc {i}", role=role, source="t", license="CC0-1.0",
                           split="train").to_json() + "\n").encode()


def test_missing_data_dir_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*TEXTBOOKS_DATA_DIR"):
        pipeline.make_train_iterator("phi1", task_feature_lengths=128, batch_size=2)


def test_bad_lines_are_counted_with_file_and_line(monkeypatch, tmp_path):
    directory = str(tmp_path / "code_exercises")
    write_raw_shard(directory, "train-00000-of-00002.jsonl.gz",
                    [good_line(0), b"{not json\n", good_line(1), b'{"id": "x", "text": "\xff\xfe"}\n', good_line(2)])
    write_raw_shard(directory, "train-00001-of-00002.jsonl.gz", [])  # an empty shard
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path))
    sources.BAD_RECORDS.reset()
    task = seqio.TaskRegistry.get("code_exercises_byte")
    ids = sorted(ex["id"].decode() for ex in task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
    assert ids == ["ok-0", "ok-1", "ok-2"]
    report = pipeline.TrainIterator.bad_records()
    assert report["num_rejected"] == 2
    first = "\n".join(report["first"])
    assert "train-00000-of-00002.jsonl.gz:2: not JSON" in first
    assert "train-00000-of-00002.jsonl.gz:4: invalid UTF-8" in first


def test_split_without_documents_is_a_clear_error(monkeypatch, tmp_path):
    directory = str(tmp_path / "code_exercises")
    records.write_shards([], directory, "train", num_shards=1)
    stats = SplitStats(shards=["train-00000-of-00001.jsonl.gz"])
    write_manifest(directory, Manifest(role="code_exercises", splits={"train": stats}))
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="holds no documents"):
        pipeline.make_train_iterator("code_exercises", task_feature_lengths=128, batch_size=2)


def test_host_without_data_is_a_clear_error(monkeypatch, tmp_path):
    testing.write_role(str(tmp_path), "code_exercises", num_docs={"train": 1, "validation": 1}, num_shards=2)
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path))
    it = pipeline.make_train_iterator("code_exercises", task_feature_lengths=64, batch_size=2,
                                      shard_info=seqio.ShardInfo(1, 2))  # shard file 1 is empty
    with pytest.raises(RuntimeError, match="host 1 of 2: a component has no documents"):
        next(it)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of the number of hosts"):
        pipeline.make_train_iterator("phi1", task_feature_lengths=128, batch_size=3,
                                     shard_info=seqio.ShardInfo(0, 2))
    with pytest.raises(ValueError, match="phi_one"):
        pipeline.make_train_iterator("phi_one", task_feature_lengths=128, batch_size=2)
    with pytest.raises(ValueError, match="'targets'"):
        pipeline.make_train_iterator("phi1", task_feature_lengths={"inputs": 8, "targets": 8}, batch_size=2)


def test_phi_vocabulary_token_zero_gets_loss(monkeypatch, tmp_path):
    vocab = roles.get_vocabulary("phi")
    assert vocab.encode("!") == [0]
    directory = str(tmp_path / "code_exercises")
    write_raw_shard(directory, "train-00000-of-00001.jsonl.gz", [
        (json.dumps({"id": "a", "text": "!", "role": "code_exercises", "source": "t", "license": "x",
                     "split": "train", "meta": {}}) + "\n").encode()])
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path))
    evals = pipeline.make_eval_datasets("code_exercises", task_feature_lengths=8, batch_size=1, split="train",
                                        vocabulary="phi")
    (batch,) = list(evals["code_exercises"])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][0], [0, 50256, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][0], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["decoder_input_tokens"][0][:2], [50256, 0])
