"""The streaming loader: deterministic order, exact resume, even steps across ranks, bad samples skipped."""

import io
import tarfile

import pytest

from model.views import ViewConfig
from trainer.data import StreamSpec, list_shards, make_loader, steps_per_epoch


def spec_for(root, batch_size=4, shards_url=None):
    shards = list_shards(shards_url or str(root / "shards"), str(root / "clip"))
    return StreamSpec(shards_url or str(root / "shards"), str(root / "clip"), shards, 128, batch_size, 16,
                      ViewConfig(crop_size=32), 8, seed=3, max_bad_samples=10)


def keys_of(loader, count):
    out = []
    for batch in loader:
        out.append((batch["epoch"], batch["batch_in_epoch"], tuple(batch["keys"])))
        if len(out) == count:
            return out


@pytest.mark.parametrize("num_workers", [0, 3])  # 6 shards split evenly over 2 ranks x 3
def test_an_epoch_covers_every_sample_once_and_ranks_run_the_same_steps(prepared, num_workers):
    spec = spec_for(prepared)
    steps = steps_per_epoch(spec.shards, 2, 4)
    assert steps == 6  # 48 samples / (2 ranks x 4)
    seen = []
    for rank in range(2):
        batches = keys_of(make_loader(spec, rank, 2, steps, 0, num_workers), steps + 1)
        assert [b[:2] for b in batches] == [(0, j) for j in range(steps)] + [(1, 0)]
        seen += [k for b in batches[:steps] for k in b[2]]
    assert len(seen) == 48 == len(set(seen))


def test_resuming_at_any_batch_continues_the_same_sequence(prepared):
    spec = spec_for(prepared)
    steps = steps_per_epoch(spec.shards, 2, 4)
    full = keys_of(make_loader(spec, 1, 2, steps, 0, 2), 2 * steps)
    for start in (5, 7):  # the last batch of an epoch (odd: the workers' roles swap), into the next epoch
        assert keys_of(make_loader(spec, 1, 2, steps, start, 2), 2 * steps - start) == full[start:]
    batch = next(iter(make_loader(spec, 0, 2, steps, 0, 0)))
    assert batch["images"].shape == (8, 3, 32, 32) and batch["clip"].shape == (8, 64, 8, 8)
    assert batch["regions"].shape == (8, 32, 32) and batch["source"].tolist() == [0, 1, 2, 3] * 2


def test_bad_samples_are_skipped_and_logged(prepared, tmp_path, caplog):
    # a copy of the image shards where one image of shard 00000 is garbage
    shards = tmp_path / "shards"
    shards.mkdir()
    for path in (prepared / "shards").glob("*.*"):
        (shards / path.name).write_bytes(path.read_bytes())
    broken = io.BytesIO()
    with tarfile.open(prepared / "shards" / "00000.tar") as src, tarfile.open(fileobj=broken, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "000003.jpg":
                data = b"garbage"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    (shards / "00000.tar").write_bytes(broken.getvalue())
    spec = spec_for(prepared, shards_url=str(shards))
    batches = keys_of(make_loader(spec, 0, 1, steps_per_epoch(spec.shards, 1, 4), 0, 0), 12)
    keys = [k for b in batches for k in b[2]]
    assert len(keys) == 47 and "000003" not in keys
    assert "bad sample 000003" in caplog.text


def test_a_resume_reads_no_more_the_later_it_starts(prepared, monkeypatch):
    """Samples read to produce the first batch after a restart, by position: bounded by one shuffle
    block plus one shard (16 + 8 here), wherever the restart lands (it used to replay every earlier one)."""
    from trainer import data

    spec = spec_for(prepared)  # 6 shards of 8, buffer 16, batches of 4: 12 steps an epoch on one rank
    steps = steps_per_epoch(spec.shards, 1, 4)
    reference = keys_of(make_loader(spec, 0, 1, steps, 0, 0), steps)
    real, counted = data.paired_samples, []

    def counting(*args):
        for sample in real(*args):
            counted.append(sample["__key__"])
            yield sample

    monkeypatch.setattr(data, "paired_samples", counting)
    reads = {}
    for start in (0, 4, 8, 11):
        counted.clear()
        assert keys_of(make_loader(spec, 0, 1, steps, start, 0), 1) == reference[start:start + 1]
        reads[start] = len(counted)
    assert max(reads.values()) <= 16 + 8, reads
    assert reads[11] < 48, reads  # the last batch of the epoch without reading the epoch


def test_views_cut_on_the_device_equal_the_loaders_and_ship_fewer_bytes(prepared):
    import dataclasses

    import torch

    from trainer.data import finish_batch

    spec = spec_for(prepared)
    raw_spec = dataclasses.replace(spec, views_on_device=True)
    steps = steps_per_epoch(spec.shards, 1, 4)
    cut = next(iter(make_loader(spec, 0, 1, steps, 3, 0)))
    raw = next(iter(make_loader(raw_spec, 0, 1, steps, 3, 0)))
    assert raw["canvas"].dtype == torch.uint8 and raw["dense"].dtype == torch.float16
    on_device = finish_batch(raw, raw_spec, torch.device("cpu"))
    assert on_device["keys"] == cut["keys"] and on_device["batch_in_epoch"] == cut["batch_in_epoch"] == 3
    for key in ("images", "regions", "source", "boxes"):
        torch.testing.assert_close(on_device[key], cut[key], msg=key)
    torch.testing.assert_close(on_device["clip"], cut["clip"], atol=2e-3, rtol=2e-3)  # fp16 in transit
    # bytes from loader to step when the views are as large as the canvas (the GPU recipe: 224 of 224)
    full = dataclasses.replace(spec, views=ViewConfig(crop_size=128), feature_size=32)
    sizes = {}
    for on_device in (False, True):
        batch = next(iter(make_loader(dataclasses.replace(full, views_on_device=on_device), 0, 1, steps, 0, 0)))
        sizes[on_device] = sum(v.nbytes for v in batch.values() if torch.is_tensor(v))
    assert sizes[True] < sizes[False] / 4, sizes


@pytest.mark.parametrize("views_on_device", [False, True])
def test_an_online_teacher_stream_reads_no_features_and_carries_the_teachers_crops(prepared, views_on_device):
    """teacher.mode=online on sidecars that do store features: they are not read; the batch carries the
    views' crops before colour changes, in the same order and with the same views as the stored path."""
    import dataclasses

    import torch

    from trainer.data import finish_batch

    spec = dataclasses.replace(spec_for(prepared), views_on_device=views_on_device)
    steps = steps_per_epoch(spec.shards, 1, 4)
    stored = finish_batch(next(iter(make_loader(spec, 0, 1, steps, 2, 0))), spec, torch.device("cpu"))
    online_spec = dataclasses.replace(spec, online_teacher=True)
    raw = next(iter(make_loader(online_spec, 0, 1, steps, 2, 0)))
    assert "dense" not in raw and "clip" not in raw
    online = finish_batch(raw, online_spec, torch.device("cpu"))
    assert "clip" not in online and online["teacher_images"].shape == online["images"].shape == (8, 3, 32, 32)
    assert online["keys"] == stored["keys"]
    for key in ("images", "regions", "boxes", "source"):
        assert torch.equal(online[key], stored[key]), key
