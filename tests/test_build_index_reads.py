"""An instructions build reads the images folder's fetch index once: the retracted figures it leaves out and the
card's licence table come from that one read."""

import pyarrow.parquet as pq

from vital_hub.demo import sample_checksum, write_sample_fetch_index, write_sample_sources
from vital_hub.mixtures.build import BuildOptions, build_repo
from vital_hub.mixtures.spec import load_plan


def spy_on_parquet_reads(monkeypatch) -> list[str]:
    """Every parquet read through pyarrow (whole table, file object, schema), by file name."""
    reads = []
    read_table, read_schema, parquet_file = pq.read_table, pq.read_schema, pq.ParquetFile

    def counting_read_table(source, *args, **kwargs):
        reads.append(str(source))
        return read_table(source, *args, **kwargs)

    def counting_read_schema(source, *args, **kwargs):
        reads.append(str(source))
        return read_schema(source, *args, **kwargs)

    class CountingParquetFile(parquet_file):
        def __init__(self, source, *args, **kwargs):
            reads.append(str(source))
            super().__init__(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", counting_read_table)
    monkeypatch.setattr(pq, "read_schema", counting_read_schema)
    monkeypatch.setattr(pq, "ParquetFile", CountingParquetFile)
    return reads


def test_build_reads_each_fetch_index_shard_once(tmp_path, monkeypatch):
    sample = write_sample_sources(tmp_path / "sample")
    images = sample["images"]
    write_sample_fetch_index(images, images)
    # a fetch run on two machines leaves two shards; split the sample's one in two, as such a run would
    index_dir = images / "index"
    table = pq.read_table(index_dir / "shard-00000-of-00001.parquet")
    (index_dir / "shard-00000-of-00001.parquet").unlink()
    (index_dir / "shard-00000-of-00001.done").unlink()
    half = table.num_rows // 2
    for number, part in enumerate((table.slice(0, half), table.slice(half))):
        pq.write_table(part, index_dir / f"shard-{number:05d}-of-00002.parquet")
        (index_dir / f"shard-{number:05d}-of-00002.done").write_text("{}\n", encoding="utf-8")
    retracted = {row["pair_id"] for row in table.to_pylist() if row["retracted"]}
    assert retracted  # the generated index marks some articles retracted

    reads = spy_on_parquet_reads(monkeypatch)
    options = BuildOptions(
        sources=sample["sources"], out=tmp_path / "repo", images=images, show_progress=False, workers=1
    )
    manifest = build_repo(load_plan(), options, sample_checksum)

    index_reads = sorted(read for read in reads if "/index/" in read.replace("\\", "/"))
    shards = sorted(str(p) for p in index_dir.glob("shard-*.parquet"))
    assert index_reads == shards  # each shard opened once (its columns and rows from that one open)
    # what that one read feeds: the records left out as retracted and the card's licence table
    assert sum(c["images"]["retracted_left_out"] for c in manifest["components"].values()) > 0
    card = (tmp_path / "repo" / "README.md").read_text(encoding="utf-8")
    assert "Rows by their figure's licence code (from the fetch index" in card and "| CC BY-NC |" in card
