"""The dataset manifest: written from counts in name order; a resume takes the counts of shards done
before from the last manifest and reads stats markers only for shards it does not list."""

import json

from formats.manifest import committed_counts, read_manifest, recorded_counts, shard_counts, write_manifest


def test_counts_come_from_the_last_manifest_and_markers_only_for_what_it_lacks(tmp_path):
    out = str(tmp_path)
    write_manifest(out, 3, {"00001": 7, "00000": 5})
    manifest = read_manifest(out)
    assert [s["name"] for s in manifest["shards"]] == ["00000.tar", "00001.tar"]
    assert manifest["num_samples"] == 12 and not manifest["complete"]
    (tmp_path / "00000_stats.json").write_text("not json: a read of it would fail")
    (tmp_path / "00002_stats.json").write_text(json.dumps({"shard": "00002", "num_samples": 4}))  # after the manifest
    counts = committed_counts(out, ["00000", "00002"], recorded_counts(out))
    assert counts == {"00000": 5, "00002": 4}
    assert shard_counts(write_manifest(out, 3, {**counts, "00001": 7})) == {"00000": 5, "00001": 7, "00002": 4}
    assert read_manifest(out)["complete"]


def test_without_a_manifest_every_count_comes_from_its_marker(tmp_path):
    (tmp_path / "00000_stats.json").write_text(json.dumps({"shard": "00000", "num_samples": 3}))
    assert committed_counts(str(tmp_path), ["00000"], recorded_counts(str(tmp_path))) == {"00000": 3}
