"""The LSH candidate stage's shuffle elements: band hashes with row references and no ids, id tables that give
each reference its document back, and clusters equal to the in-memory algorithm's when batches repeat."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.coders import coders
from apache_beam.utils.windowed_value import WindowedValue

import curate_testdata as td
from test_dedup import _planted_corpus, _records
from textbooks.curate import dedup, lsh


@pytest.fixture(scope="module")
def planted():
    return _planted_corpus()


def _signature_outputs(docs, cfg):
    """Runs the signature DoFn by hand over ``docs`` (one bundle); returns (band elements, id tables)."""
    fn = lsh._SignatureDoFn(cfg, "test")
    fn.setup()
    fn.start_bundle()
    out = [o for r in _records(docs) for o in fn.process(r)] + list(fn.finish_bundle())
    tables, bands = {}, []
    for o in out:
        tag, value = (o.tag, o.value) if isinstance(o, beam.pvalue.TaggedOutput) else (None, o)
        value = value.value if isinstance(value, WindowedValue) else value
        if tag == lsh.IDS:
            tables[value[0]] = value[1]
        else:
            assert tag is None
            bands.append(value)
    return bands, tables


def test_band_elements_hold_rows_not_ids_and_tables_give_the_documents_back(planted):
    docs, _ = planted
    docs = docs[:100]
    cfg = dedup.MinHashConfig(batch_size=40, bucket_shards=4, keep="longest")
    bands, tables = _signature_outputs(docs, cfg)
    assert len(tables) == 3  # batches of 40, 40 and 20 documents
    hasher = dedup.MinHasher(cfg)
    expected = hasher.band_hashes(hasher.signatures([t for _, t in docs])[0])  # [docs, bands]
    by_id = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    seen = np.zeros(expected.shape, dtype=np.int64)
    coder = coders.FastPrimitivesCoder()
    encoded = 0
    for shard, (key, hashes, rows, sigs) in bands:
        assert isinstance(key, bytes) and isinstance(hashes, bytes) and isinstance(rows, bytes) and sigs is None
        blob, offsets, lengths = tables[key]
        offsets, lengths = np.frombuffer(offsets, np.uint32), np.frombuffer(lengths, np.int64)
        assert len(rows) * 4 == len(hashes)  # uint16 rows in batches of up to 65,536 documents
        for h, row in zip(np.frombuffer(hashes, np.uint64), np.frombuffer(rows, np.uint16)):
            doc = by_id[blob[offsets[row]:offsets[row + 1]].decode()]
            assert lengths[row] == len(docs[doc][1])
            band = int(np.flatnonzero(expected[doc] == h)[0])
            assert shard == band * cfg.bucket_shards + int(h) % cfg.bucket_shards
            seen[doc, band] += 1
        encoded += len(coder.encode((shard, (key, hashes, rows, sigs))))
    assert (seen == 1).all()  # every document once in every band
    # 10 bytes per document and band, plus each element's framing (its key and shard): no id is repeated.
    assert encoded <= 10 * seen.size + 40 * len(bands)


def test_repeated_batches_and_ids_give_the_in_memory_clusters(planted, tmp_path):
    """The same records twice (equal batches, so equal batch keys, and every id twice) cluster like the
    in-memory algorithm, which counts a repeated id as one node."""
    docs, _ = planted
    docs = docs[:120]
    cfg = dedup.MinHashConfig(batch_size=5, bucket_shards=3)
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(_records(docs + docs)) | dedup.NearDedup(cfg)
        load = td.collect({"clusters": out["clusters"]}, str(tmp_path))
    got = sorted((c["keeper"], sorted(c["members"])) for c in load()["clusters"])
    expected = sorted((c[0], sorted(c)) for c in dedup.near_duplicate_clusters(docs + docs, cfg))
    assert got == expected and len(expected) >= 10


def test_rows_are_uint16_up_to_65536_documents_and_uint32_beyond():
    assert lsh.row_dtype(1 << 16) is np.uint16 and lsh.row_dtype((1 << 16) + 1) is np.uint32
    hashes = np.arange(3, dtype=np.uint64).tobytes()
    for dtype, last in ((np.uint16, (1 << 16) - 1), (np.uint32, 1 << 16)):
        rows = lsh.band_rows(np.array([0, 7, last], dtype=dtype).tobytes(), hashes)
        assert rows.dtype == dtype and rows.tolist() == [0, 7, last]
