"""TFDS builds of the roles: same documents as the shards, reproducible files, usable by the tfds tasks without
the builder module."""

import glob
import hashlib
import json
import os
import subprocess
import sys

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

import mixtures  # noqa: F401
from mixtures import testing
from textbooks.data import records
from textbooks.data.manifest import read_manifest
from textbooks.inputs import tfds_builders

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("roles"))
    return testing.write_corpora(root, roles=["web_filtered", "code_exercises"],
                                 num_docs={"train": 70, "validation": 9}, num_shards=3)


def file_digests(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_tfds_load_gives_the_shard_documents(data_root, tmp_path):
    config = tfds.download.DownloadConfig(manual_dir=data_root)
    loaded = tfds.load("textbooks_corpus/web_filtered", data_dir=str(tmp_path),
                       download_and_prepare_kwargs={"download_config": config})
    assert set(loaded) == {"train", "validation"}
    directory = os.path.join(data_root, "web_filtered")
    manifest = read_manifest(directory)
    for split, ds in loaded.items():
        got = {ex["id"].decode(): ex for ex in tfds.as_numpy(ds)}
        want = {r.id: r for r in records.read_split(directory, split)}
        assert len(got) == manifest.splits[split].num_docs == len(want)
        for rid, record in want.items():
            ex = got[rid]
            assert ex["text"].decode() == record.text
            assert (ex["role"].decode(), ex["source"].decode(), ex["license"].decode()) == (
                record.role, record.source, record.license)
            assert json.loads(ex["meta"]) == record.meta


def test_building_twice_gives_identical_files(data_root, tmp_path):
    role_dir = os.path.join(data_root, "code_exercises")
    a = tfds_builders.build_role("code_exercises", str(tmp_path / "a"), input_dir=role_dir)
    tfds_builders.build_role("code_exercises", str(tmp_path / "b"), input_dir=role_dir)
    assert a.info.splits["train"].num_examples == 70
    digests_a, digests_b = file_digests(str(tmp_path / "a")), file_digests(str(tmp_path / "b"))
    assert digests_a == digests_b
    assert any("tfrecord" in name for name in digests_a)


def test_array_record_build_gives_random_access(data_root, tmp_path):
    builder = tfds_builders.build_role("code_exercises", str(tmp_path),
                                       input_dir=os.path.join(data_root, "code_exercises"), file_format="array_record")
    source = builder.as_data_source(split="validation")
    ids = sorted(source[i]["id"].decode() for i in range(len(source)))
    assert ids == sorted(r.id for r in testing.make_records("code_exercises", "validation", 9, 300))


def test_tfds_task_matches_shard_task(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", data_root)
    tfds_builders.build_role("web_filtered", str(tmp_path))
    gin.bind_parameter("mixtures.sources.tfds_data_dir.path", str(tmp_path))

    def pieces(name):
        task = seqio.TaskRegistry.get(name)
        ds = task.get_dataset({"targets": 256}, split="validation", shuffle=False)
        return sorted((ex["id"], tuple(ex["targets"])) for ex in ds.as_numpy_iterator())

    assert pieces("web_filtered_tfds_byte") == pieces("web_filtered_byte")
    assert seqio.TaskRegistry.get("web_filtered_tfds_byte").num_input_examples("validation") == 9


def test_a_build_from_the_command_line_is_read_without_the_builder_module(data_root, tmp_path):
    """`python -m textbooks.inputs.tfds_builders` builds a role; mixtures, below the input pipeline, reads the
    prepared files in a process that never imports the builder code."""
    env = {**os.environ, "TEXTBOOKS_DATA_DIR": data_root, "PYTHONPATH": REPO}
    build = subprocess.run([sys.executable, "-m", "textbooks.inputs.tfds_builders", "--roles", "web_filtered",
                            "--data_dir", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    line = build.stdout.strip().splitlines()[-1]  # TFDS prints its progress to stdout first
    assert line.startswith(f"textbooks_corpus/web_filtered\t{tmp_path / 'textbooks_corpus'}"), build.stdout
    assert "'validation': <SplitInfo num_examples=9," in line
    code = f"""
import json, sys
import gin, seqio
import mixtures
gin.bind_parameter("mixtures.sources.tfds_data_dir.path", {str(tmp_path)!r})
ds = seqio.TaskRegistry.get("web_filtered_tfds_byte").get_dataset({{"targets": 256}}, split="validation",
                                                                  shuffle=False)
ids = sorted({{ex["id"].decode() for ex in ds.as_numpy_iterator()}})
print(json.dumps({{"ids": ids, "builder_imported": "textbooks.inputs.tfds_builders" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["builder_imported"] is False
    # A document longer than the sequence length gives several pieces with its id: compare the set of ids.
    assert got["ids"] == sorted(r.id for r in records.read_split(os.path.join(data_root, "web_filtered"),
                                                                 "validation"))


def test_missing_tfds_build_is_a_clear_error(tmp_path):
    gin.bind_parameter("mixtures.sources.tfds_data_dir.path", str(tmp_path))
    task = seqio.TaskRegistry.get("code_filtered_tfds_byte")
    with pytest.raises(FileNotFoundError, match="tfds_builders --roles code_filtered"):
        task.get_dataset({"targets": 64}, split="train")
