"""The decode-throughput benchmark measures every view on real shards."""
from loci_fast.bench.decode import VIEWS, decode_throughput, encoding_table


def test_decode_throughput_reports_each_view(synth_shards):
    rows = decode_throughput(synth_shards, seconds=0.3, workers=1, batch_size=4)
    assert [r["view"] for r in rows] == list(VIEWS)
    for r in rows:
        assert r["frames"] > 0 and r["batches"] > 0 and r["frames_per_s"] > 0
        assert r["frames_per_s_per_worker"] == r["frames_per_s"] / r["workers"]


def test_encoding_table_compares_the_chosen_encodings(synth_shards):
    rows = {r["encoding"]: r for r in encoding_table(synth_shards, videos=2)}
    chosen = [k for k in rows if "(chosen)" in k]
    assert len(chosen) == 3 and all(rows[k]["bytes_per_frame"] > 0 for k in rows)
    # Depth: 16 bits per pixel stored losslessly beats raw float32 + zlib on size.
    assert rows["depth: 16-bit PNG (chosen)"]["bytes_per_frame"] < rows["depth: float32 + zlib"]["bytes_per_frame"]
