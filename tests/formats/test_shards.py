"""The shard layout's commit state as the jobs read it, on the loopback S3 where listings are cached."""

import s3fs

from formats.shards import committed_names, is_committed


def test_commit_state_reads_fresh_and_leaves_no_stale_listing(s3_bucket):
    out = f"{s3_bucket}/out"
    elsewhere = s3fs.S3FileSystem(skip_instance_cache=True)  # another process: a worker committing a shard
    elsewhere.pipe_file(f"{out}/00000_stats.json", b"{}")
    elsewhere.pipe_file(f"{out}/00000.tar", b"")
    names = ["00000", "00001", "10000"]
    assert committed_names(out, names) == ["00000"]
    elsewhere.pipe_file(f"{out}/00001_stats.json", b"{}")
    assert is_committed(out, "00001")  # not answered from the listing above
    assert committed_names(out, names) == ["00000", "00001"]
    elsewhere.pipe_file(f"{out}/10000_stats.json", b"{}")  # under another name prefix
    assert committed_names(out, names, known=["00000", "00001"]) == names


def test_names_a_record_lists_count_as_committed_without_a_look(tmp_path):
    nowhere = str(tmp_path / "never-made")  # a listing of it would fail
    assert committed_names(nowhere, ["00000", "00001"], known=["00001", "00000"]) == ["00000", "00001"]
