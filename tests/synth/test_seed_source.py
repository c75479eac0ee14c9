"""Seeded templates read web extracts from a data role under the data root, so $TEXTBOOKS_DATA_DIR applies."""

import os

import gin

from textbooks.data import records
from textbooks.synth import generate as generate_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_web(root):
    docs = [records.Record(id=f"web-{i}", text=f"Extract {i} about the tides and the moon. " * 20,
                           role="web_filtered", source="owt", license="unknown", split="train") for i in range(3)]
    records.write_shards(docs, os.path.join(root, "web_filtered"), "train", num_shards=1)


def test_a_role_name_reads_that_roles_train_shards_under_the_data_root(tmp_path, monkeypatch):
    _write_web(str(tmp_path / "data"))
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path / "data"))
    assert generate_lib.seed_shard_pattern("web_filtered").startswith(str(tmp_path / "data" / "web_filtered"))
    seeds = generate_lib.load_seed_texts("web_filtered", min_chars=100)
    assert sorted(s.id for s in seeds) == ["web-0", "web-1", "web-2"]
    # A glob is read as given (with ~ expanded).
    assert generate_lib.seed_shard_pattern("~/x/*.jsonl.gz") == os.path.expanduser("~/x/*.jsonl.gz")


def test_the_web_seeded_gin_file_follows_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path / "data"))
    gin.parse_config_file(os.path.join(REPO, "experiments", "synth", "web_seeded.gin"), skip_unknown=True)
    source = gin.query_parameter("generate.seed_shards")
    assert generate_lib.seed_shard_pattern(source).startswith(str(tmp_path / "data"))
