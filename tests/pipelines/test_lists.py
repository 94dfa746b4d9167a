"""URL lists counted without loading them and read back by row range, and plans over many list files:
every row lands in exactly one shard, in order, whatever the format, the file boundaries, the text
chunking and the line index."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.sharding import lists
from pipelines.sharding.lists import read_rows, scan
from pipelines.sharding.plan import load_plan, make_plan
from pipelines.sharding.sources import SourceSpec


def write_list(path, fmt, rows):
    """rows: (url, caption) pairs, written as a URL list of format `fmt`."""
    if fmt == "parquet":
        pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), path, row_group_size=3)
    elif fmt == "csv":
        path.write_text("url,caption\n" + "".join(f'{u},"{c}"\n' for u, c in rows))
    elif fmt == "tsv":
        path.write_text("caption\turl\n" + "".join(f"{c}\t{u}\n" for u, c in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"url": u, "caption": c}) + "\n" for u, c in rows))
    else:
        path.write_text("".join(f"{u}\n" for u, _ in rows).rstrip("\n"))  # no final newline: still a row


@pytest.fixture
def small_index(monkeypatch):
    """A line index every 7 rows and 64-byte reads, so small files cross every boundary."""
    monkeypatch.setattr(lists, "LINE_INDEX_EVERY", 7)
    monkeypatch.setattr(lists, "_CHUNK", 64)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "txt"])
def test_any_row_range_reads_back_what_was_written(tmp_path, small_index, fmt):
    rows = [(f"http://h/{i}.jpg", f"a caption, {i}") for i in range(40)]
    path = tmp_path / f"urls.{fmt}"
    write_list(path, fmt, rows)
    listed = scan(str(path), fmt, "url")
    assert listed.num_rows == 40
    if fmt != "parquet":
        assert len(listed.line_offsets) == 6  # rows 0, 7, ..., 35
    for start, stop in [(0, 40), (0, 1), (6, 8), (7, 14), (13, 29), (39, 40)]:
        got = read_rows(lists.segment(listed, start, stop), "url", "caption")
        assert [r["location"] for r in got] == [u for u, _ in rows[start:stop]], (start, stop)
        captions = [c for _, c in rows[start:stop]] if fmt != "txt" else [None] * (stop - start)
        assert [r["caption"] for r in got] == captions


def test_a_plan_over_many_list_files_puts_every_row_in_one_shard_in_order(tmp_path, small_index):
    folder = tmp_path / "lists"
    folder.mkdir()
    expected = []
    for i, fmt in enumerate(["parquet", "csv", "jsonl", "txt", "tsv", "parquet"]):
        rows = [(f"http://h/{i}-{j}.jpg", f"c{i}-{j}") for j in range(5 + 4 * i)]
        write_list(folder / f"part{i}.{fmt}", fmt, rows)
        expected += [u for u, _ in rows]
    (folder / "README.md").write_text("not a list")
    plan = make_plan(SourceSpec(str(folder)), str(tmp_path / "out"), samples_per_shard=8)
    assert plan.num_inputs == len(expected) == 90 and plan.num_shards == 12 and len(plan.files) == 6
    got = [r["location"] for name in plan.names() for seg in plan.segments(name) for r in read_rows(seg, "url", "caption")]
    assert got == expected
    assert load_plan(str(tmp_path / "out")) == plan  # a rerun reads the same plan back
    # a glob names the same lists
    globbed = make_plan(SourceSpec(str(folder / "part*")), str(tmp_path / "out2"), samples_per_shard=8)
    assert globbed.num_inputs == 90


def test_a_folder_of_images_is_listed_into_the_plan(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.jpg").write_bytes(b"x")
    (images / "2.txt").write_text("caption two")
    plan = make_plan(SourceSpec(str(images)), str(tmp_path / "out"), samples_per_shard=2)
    assert plan.num_shards == 3 and [f.format for f in plan.files] == [lists.PATHS]
    rows = [r for name in plan.names() for seg in plan.segments(name) for r in read_rows(seg, "url", "caption")]
    assert [r["location"].rsplit("/", 1)[1] for r in rows] == [f"{i}.jpg" for i in range(5)]
    assert [bool(r["caption_location"]) for r in rows] == [False, False, True, False, False]


def test_nothing_to_read_is_one_clear_error(tmp_path):
    from common.config import ConfigError

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="no inputs"):
        make_plan(SourceSpec(str(tmp_path / "empty.txt")), str(tmp_path / "out"), 4)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("")
    with pytest.raises(ConfigError, match="no images and no URL lists"):
        make_plan(SourceSpec(str(tmp_path / "docs")), str(tmp_path / "out2"), 4)
    with pytest.raises(ConfigError, match="does not exist"):
        make_plan(SourceSpec(str(tmp_path / "nowhere")), str(tmp_path / "out3"), 4)


def test_input_format_names_the_format_of_a_file_named_otherwise_and_filters_a_folder(tmp_path):
    rows = [(f"http://h/{i}.jpg", f"c{i}") for i in range(5)]
    named_otherwise = tmp_path / "urls.list"
    write_list(tmp_path / "urls.txt", "txt", rows)
    (tmp_path / "urls.txt").rename(named_otherwise)
    plan = make_plan(SourceSpec(str(named_otherwise), input_format="txt"), str(tmp_path / "out"), 4)
    assert plan.num_inputs == 5 and [f.format for f in plan.files] == ["txt"]
    folder = tmp_path / "lists"
    folder.mkdir()
    write_list(folder / "a.csv", "csv", rows)
    write_list(folder / "b.txt", "txt", rows[:2])
    assert make_plan(SourceSpec(str(folder)), str(tmp_path / "all"), 4).num_inputs == 7
    only_csv = make_plan(SourceSpec(str(folder), input_format="csv"), str(tmp_path / "csv"), 4)
    assert only_csv.num_inputs == 5 and [f.format for f in only_csv.files] == ["csv"]
