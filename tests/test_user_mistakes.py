"""Every user mistake of issue 18 is one line on stderr and exit status 2, before Ray starts, with
nothing written. The jobs run in this process with `ray.init` replaced by a failure, so a mistake
that is caught only once a cluster is up fails here. (Time to that line, imports included, is
measured by `bench/bench_mistakes.py`, not asserted: it depends on the box.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from pipelines import embed, evaluate, segment, shard
from pipelines import main as main_job
from trainer import train

JOBS: dict[str, Callable[[list[str]], int]] = {
    "shard": shard.main, "embed": embed.main, "evaluate": evaluate.main, "segment": segment.main,
    "main": main_job.main, "train": train.main,
}


def _shards(root: Path) -> str:
    """A folder the embed job and the trainer accept as shards: a manifest (its tars are never read here)."""
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"shards": [], "num_shards": 0, "num_samples": 0,
                                                   "complete": True}))
    return str(root)


def _generic_dataset(root: Path) -> str:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky\ncat\n")
    return str(root)


# (job, what the user typed given the folder it runs in, a word of the one line)
MISTAKES: dict[str, tuple[str, Callable[[Path], list[str]], str]] = {
    "shard: missing input": ("shard", lambda t: ["--input", str(t / "nope"), "--output", str(t / "o")],
                             "does not exist"),
    "shard: empty folder": ("shard", lambda t: ["--input", str(_mkdir(t / "empty")), "--output", str(t / "o")],
                            "no images and no URL lists"),
    "shard: csv without the url column": ("shard", lambda t: ["--input", _write(t / "l.csv", "link,caption\nhttp://x/a.jpg,a\n"),
                                                              "--output", str(t / "o")], "no column 'url'"),
    "shard: tsv without the url column": ("shard", lambda t: ["--input", _write(t / "l.tsv", "link\tcaption\nhttp://x/a.jpg\ta\n"),
                                                              "--output", str(t / "o")], "--url-col"),
    "shard: jsonl without the url key": ("shard", lambda t: ["--input", _write(t / "l.jsonl", '{"link": "http://x/a.jpg"}\n'),
                                                             "--output", str(t / "o")], "no column 'url'"),
    "shard: a column to save that the list lacks": ("shard", lambda t: [
        "--input", _write(t / "l.csv", "url,caption\nhttp://x/a.jpg,a\n"), "--output", str(t / "o"),
        "--save-additional-columns", "score"], "no column 'score' to save"),
    "shard: missing --config": ("shard", lambda t: ["--config", str(t / "nope.yaml")], "config file"),
    "shard: invalid YAML": ("shard", lambda t: ["--config", _write(t / "c.yaml", "input: [unclosed\n")],
                            "not valid YAML"),
    "shard: an abbreviated flag": ("shard", lambda t: ["--timeout", "3", "--input", "a", "--output", "b"],
                                   "unrecognized arguments: --timeout"),
    "embed: missing input": ("embed", lambda t: ["--input", str(t / "nope"), "--output", str(t / "o")],
                             "holds no shards"),
    "embed: missing weights file": ("embed", lambda t: ["--input", _shards(t / "s"), "--output", str(t / "o"),
                                                        "--clip-pretrained", str(t / "nope.pt")], "teacher weights"),
    "embed: unknown open_clip model": ("embed", lambda t: ["--input", _shards(t / "s"), "--output", str(t / "o"),
                                                           "--clip-model", "ViT-Q-99"], "no open_clip architecture"),
    "embed: missing class list": ("embed", lambda t: ["--input", _shards(t / "s"), "--output", str(t / "o"),
                                                      "--classes", str(t / "nope.txt")], "class names file"),
    "train: missing shards": ("train", lambda t: [f"data.shards={t / 'nope'}", f"data.clip={t / 'nope2'}",
                                                  f"run.storage_path={t / 'runs'}", f"run.log_dir={t / 'runs'}"],
                              "holds no shards"),
    "train: missing sidecars": ("train", lambda t: [f"data.shards={_shards(t / 's')}", f"data.clip={t / 'nope'}",
                                                    f"run.storage_path={t / 'runs'}", f"run.log_dir={t / 'runs'}"],
                                "holds no CLIP sidecars"),
    "evaluate: missing dataset": ("evaluate", lambda t: ["--checkpoint", "teacher", "--clip-model", "tiny-rn",
                                                         "--dataset", "generic", "--data-root", str(t / "nope"),
                                                         "--unseen", "cat", "--output", str(t / "o")],
                                  "dataset root"),
    "evaluate: a dataset with no images": ("evaluate", lambda t: ["--checkpoint", "teacher", "--clip-model", "tiny-rn",
                                                                  "--dataset", "generic", "--data-root",
                                                                  _generic_dataset(t / "d"), "--unseen", "cat",
                                                                  "--output", str(t / "o")], "no images"),
    "evaluate: unknown dataset": ("evaluate", lambda t: ["--checkpoint", "teacher", "--dataset", "voc99",
                                                         "--data-root", str(t), "--output", str(t / "o")],
                                  "dataset must be one of"),
    "segment: missing images": ("segment", lambda t: ["--checkpoint", "teacher", "--clip-model", "tiny-rn",
                                                      "--images", str(t / "nope"), "--output", str(t / "o"),
                                                      "--prompts", "a,b"], "no images"),
    "segment: missing model file": ("segment", lambda t: ["--checkpoint", str(t / "nope.pt"), "--images",
                                                          _image(t / "a.png"), "--output", str(t / "o"),
                                                          "--prompts", "a,b"], "model file"),
    "segment: not a model file": ("segment", lambda t: ["--checkpoint", _write(t / "m.pt", "hello"), "--images",
                                                        _image(t / "a.png"), "--output", str(t / "o"),
                                                        "--prompts", "a,b"], "is not a model file"),
    "main: seeds and a seed of one's own": ("main", lambda t: ["--seeds", "0,1", "--train-overrides", "run.seed=3",
                                                               "--runs-root", str(t / "runs")], "leave run.seed out"),
    "main: invalid YAML": ("main", lambda t: ["--config", _write(t / "c.yaml", "- a list\n")], "must hold a mapping"),
    "main: an explain threshold out of range": ("main", lambda t: ["--explain-threshold", "2", "--runs-root",
                                                                   str(t / "runs")], "explain_threshold"),
    "main: a teacher to train and one given": ("main", lambda t: ["--teacher", "train", "--clip-pretrained", "x.pt",
                                                                  "--runs-root", str(t / "runs")], "leave out --clip-pretrained"),
    "main: your data without an evaluation folder": ("main", lambda t: ["--train-images", str(t), "--runs-root",
                                                                         str(t / "runs")], "needs --eval-root"),
    "main: your data without a teacher": ("main", lambda t: ["--train-images", str(t), "--eval-root", str(t),
                                                             "--runs-root", str(t / "runs")], "needs a teacher"),
    "main: an evaluation folder that is not one": ("main", lambda t: [
        "--train-images", str(t), "--eval-root", str(t / "nope"), "--clip-pretrained", "openai",
        "--runs-root", str(t / "runs")], "dataset root"),
    "main: unseen names not among your classes": ("main", lambda t: [
        "--train-images", str(t), "--eval-root", _labelled(t / "val"), "--clip-pretrained", "openai",
        "--unseen", "zebra", "--runs-root", str(t / "runs")], "not among your classes"),
}


def _labelled(root: Path) -> str:
    """A one-image evaluation folder in the generic layout, classes sky and cat."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    Image.new("L", (8, 8)).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("sky\ncat\n")
    return str(root)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _image(path: Path) -> str:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(path)
    return str(path)


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for a user's mistake")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_user_mistake_is_one_line_and_exit_status_2_with_no_ray_and_nothing_written(case, tmp_path, no_ray,
                                                                                    capsys, monkeypatch):
    job, argv, words = MISTAKES[case]
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    try:
        status = JOBS[job](args)
    except SystemExit as e:  # argparse's own exit, after its one line
        status = e.code
    assert status == 2, case
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert sorted(tmp_path.rglob("*")) == before, "the mistake left files behind"


# What makes the one line come within seconds: the libraries that take 2-9 s to import on a 2-core box
# (open_clip and torchvision, which brings torch._dynamo; Ray Data; Ray Train; DeepSpeed; scipy.optimize,
# 0.4 s) are imported after the checks, where the job uses them.
LATE_IMPORTS = ("open_clip", "torchvision", "ray.data", "ray.train", "deepspeed", "scipy.optimize")


@pytest.mark.parametrize("case", ["shard: missing input", "embed: missing weights file", "embed: unknown open_clip model",
                                  "train: missing sidecars", "evaluate: missing dataset", "segment: missing model file",
                                  "main: your data without a teacher"])
def test_a_mistake_is_reported_before_the_slow_libraries_are_imported(case, tmp_path):
    import subprocess
    import sys

    job, argv, words = MISTAKES[case]
    command = ["-m", "trainer.train"] if job == "train" else [str(Path(__file__).parents[1] / "pipelines" / f"{job}.py")]
    done = subprocess.run([sys.executable, "-X", "importtime", *command, *argv(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and words in done.stderr, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "common.config" in imported  # the probe sees imports at all
    assert not imported & set(LATE_IMPORTS), sorted(imported & set(LATE_IMPORTS))
