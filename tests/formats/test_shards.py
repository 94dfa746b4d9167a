"""The shard layout's commit state as the jobs read it, on the loopback S3 where listings are cached."""

import s3fs

from formats.shards import committed_names, is_committed


def test_commit_state_reads_fresh_and_leaves_no_stale_listing(s3_bucket):
    out = f"{s3_bucket}/out"
    elsewhere = s3fs.S3FileSystem(skip_instance_cache=True)  # another process: a worker committing a shard
    elsewhere.pipe_file(f"{out}/00000_stats.json", b"{}")
    elsewhere.pipe_file(f"{out}/00000.tar", b"")
    assert committed_names(out) == ["00000"]
    elsewhere.pipe_file(f"{out}/00001_stats.json", b"{}")
    assert is_committed(out, "00001")  # not answered from the listing above
    assert committed_names(out) == ["00000", "00001"]
