"""Readers (JSONL, Parquet, text folders, source trees, shards) and the gin-driven `textbooks curate` command."""

import json
import os

import pytest

import curate_testdata as td
from textbooks.curate import io
from textbooks.curate.input_specs import InputSpec, ReadConfig, list_input_files, parse_input
from textbooks.curate.textnorm import count_tokens
from textbooks.data import records


def test_parse_input_forms():
    assert parse_input("jsonl:/d/*.jsonl").kind == "jsonl"
    shards = parse_input("/d/shards")
    assert shards.kind == "shards" and shards.paths == ("/d/shards",)
    assert parse_input({"paths": "/x", "kind": "text"}).extensions == (".txt",)
    with pytest.raises(ValueError, match="kind must be one of"):
        InputSpec(paths="/x", kind="csv")


def test_readers_in_process(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [t for _, t in td.stdlib_docstrings(min_words=60, max_docs=6)]
    td.write_jsonl(str(tmp_path / "a.jsonl"), [{"body": texts[0], "key": "k0", "lang": "en"},
                                               {"body": texts[1], "key": "k1", "lang": "en"}])
    pq.write_table(pa.table({"content": [texts[2], None, texts[3]], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "sub").mkdir()
    (tmp_path / "notes" / "one.txt").write_text(texts[4])
    (tmp_path / "notes" / "sub" / "two.txt").write_text(texts[5])
    (tmp_path / "notes" / "skip.md").write_text("not matched")
    rejects = []
    specs = [InputSpec(paths=str(tmp_path / "a.jsonl"), kind="jsonl", text_field="body", id_field="key",
                       source="web", license="CC-BY", role="web_raw"),
             InputSpec(paths=str(tmp_path / "*.parquet"), kind="parquet", text_field="content", source="pq"),
             InputSpec(paths=str(tmp_path / "notes"), kind="text", source="notes"),
             InputSpec(paths=os.path.join(td.STDLIB, "json"), kind="source", source="stdlib",
                       exclude=("tool.py", "*/__pycache__/*"))]
    got = list(io.read_records(specs, ReadConfig(validation_fraction=0.5), rejects=rejects))
    by_id = {r["id"]: r for r in got}
    assert by_id["k0"]["text"] == texts[0] and by_id["k0"]["meta"] == {"lang": "en", "path": "a.jsonl"}
    assert by_id["k0"]["license"] == "CC-BY" and by_id["k0"]["role"] == "web_raw"
    assert by_id["pq/t.parquet:1"]["text"] == texts[2] and by_id["pq/t.parquet:3"]["meta"]["n"] == 3
    assert [r["reason"] for r in rejects] == ["invalid_field"]  # the null text of row 2
    assert by_id["notes/one.txt"]["text"] == texts[4] and "notes/sub/two.txt" in by_id
    assert not any(i.endswith("skip.md") for i in by_id)
    assert by_id["stdlib/decoder.py"]["meta"]["language"] == "python" and "stdlib/tool.py" not in by_id
    assert {r["split"] for r in got} == {"train", "validation"}  # hash-assigned
    for r in got:
        records.Record.from_dict(r).to_json()  # every record is a valid shard record
    # Split assignment is a function of the id only.
    again = {r["id"]: r["split"] for r in io.read_records(specs, ReadConfig(validation_fraction=0.5))}
    assert again == {i: r["split"] for i, r in by_id.items()}


def test_missing_input_names_the_spec(tmp_path):
    with pytest.raises(FileNotFoundError, match="jsonl:.*nothing-here"):
        list_input_files(InputSpec(paths=str(tmp_path / "nothing-here*.jsonl"), kind="jsonl"))


def test_cli_curate_with_gin_file_and_overrides(tmp_path):
    from textbooks import cli

    docs = [{"id": f"d{i}", "text": t, "role": "web_raw", "source": "stdlib", "license": "PSF-2.0", "split": "train",
             "meta": {}} for i, (_, t) in enumerate(td.stdlib_docstrings(min_words=80, max_docs=12))]
    docs.append(dict(docs[0], id="dup"))
    records.write_shards(docs, tmp_path / "in", "train", 1)
    gin_file = tmp_path / "run.gin"
    gin_file.write_text(
        "import textbooks.curate.pipeline\n"
        f"curate.inputs = ['{tmp_path / 'in'}']\n"
        "curate.role = 'web_filtered'\n"
        "curate.splits = ('train',)\n"
        "curate.heuristics = @HeuristicsConfig()\n"
        "HeuristicsConfig.gopher_quality = @GopherQualityConfig()\n"
        "GopherQualityConfig.min_doc_words = 120\n"
        "curate.exact_dedup = @ExactDedupConfig()\n"
        "curate.direct_running_mode = 'in_memory'\n")
    out = tmp_path / "out"
    status = cli.main(["curate", f"--gin_file={gin_file}", f"--gin.curate.output_dir='{out}'",
                       "--gin.curate.direct_num_workers=1", "--gin.GopherQualityConfig.min_doc_words=90"])
    assert status == 0
    report = json.load(open(out / "report" / "report.json"))
    assert report["config"]["heuristics"]["gopher_quality"]["min_doc_words"] == 90  # the override won
    assert [s["stage"] for s in report["stages"]] == ["heuristics", "exact_dedup"]
    assert report["stages"][0]["docs_in"] == 13
    assert not {"d0", "dup"} <= {r.id for r in records.iter_records(out)}  # never both copies
    assert "GopherQualityConfig.min_doc_words = 90" in open(out / "config.gin").read()
    assert report["reconciliation"]["balanced"]


def test_cli_reports_bad_binding(capsys):
    from textbooks import cli

    assert cli.main(["curate", "--gin.curate.no_such_arg=1"]) == 2
    assert "curate.no_such_arg" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["web", "code", "tiny", "train_edu_classifier_web", "train_edu_classifier_code",
                                  "train_edu_classifier_judge"])
def test_experiment_gin_files_parse(name):
    import gin

    import textbooks.curate.pipeline  # noqa: F401
    import textbooks.curate.training  # noqa: F401
    from textbooks import gin_utils

    gin_utils.parse_gin([f"curate/{name}.gin"], finalize=False)
    if name.startswith("train_"):
        assert gin.query_parameter("train_classifier.label_source") in ("references", "judge")
    else:
        assert gin.query_parameter("curate.role") in ("web_filtered", "code_filtered")
        assert gin.query_parameter("MinHashConfig.num_bands") == 14


def test_count_tokens_counts_each_text_not_the_last_one():
    a = "one two  three\nfour"
    b = "".join(["one two three four five"])  # another str object
    assert count_tokens(a) == 4
    assert count_tokens(a) == 4  # the remembered count
    assert count_tokens(b) == 5
    assert count_tokens("x " * 7) == 7
    assert count_tokens(a) == len(a.split())
