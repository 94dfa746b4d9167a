import dataclasses

import pytest

from common.config import ConfigError, parse_config
from formats.images import ResizeSpec
from pipelines.shard import ShardConfig


def test_flags_yaml_and_overrides_map_onto_one_dataclass(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("input: a\noutput: b\nimage_size: 64\ndedup: true\n")
    cfg = parse_config(ShardConfig, ["--config", str(yaml_file), "--image-size", "128", "encode_quality=80",
                                     "extensions=jpg,PNG"])
    assert (cfg.input, cfg.output, cfg.image_size, cfg.encode_quality, cfg.dedup) == ("a", "b", 128, 80, True)
    assert cfg.extensions == (".jpg", ".png")
    assert parse_config(ShardConfig, ["--input", "a", "--output", "b", "--dedup"]).dedup is True
    assert parse_config(ShardConfig, ["--input", "a", "--output", "b", "--dedup", "false"]).dedup is False


@pytest.mark.parametrize("argv,message", [
    (["--input", "a"], "missing required config value output"),
    (["--input", "a", "--output", "b", "imagesize=3"], "unknown config key imagesize"),
    (["--input", "a", "--output", "b", "--resize-mode", "stretch"], "resize_mode must be one of"),
    (["--input", "a", "--output", "b", "--image-size", "big"], "image_size: expected int"),
    (["--input", "a", "--output", "b", "--dedup", "maybe"], "dedup: expected true or false"),
    (["--input", "a", "--output", "b", "--encode-quality", "0"], "encode_quality must be in 1..100"),
    (["--input", "a", "--output", "b", "--output-format", "png"], "the codec 'png' is --encode-format"),
    (["--input", "a", "--output", "b", "--input-format", "json"], "input_format must be one of"),
])
def test_bad_configs_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(ShardConfig, argv)


def test_a_profile_lies_under_every_value_the_user_gives(tmp_path):
    profile = tmp_path / "quick.yaml"
    profile.write_text("input: p\noutput: p\nimage_size: 32\nencode_quality: 50\nsamples_per_shard: 7\n")
    user = tmp_path / "user.yaml"
    user.write_text("encode_quality: 60\n")
    profiles = {"quick": str(profile)}
    cfg = parse_config(ShardConfig, ["--quick"], profiles=profiles)
    assert (cfg.input, cfg.image_size, cfg.encode_quality, cfg.samples_per_shard) == ("p", 32, 50, 7)
    cfg = parse_config(ShardConfig, ["--profile", "quick", "--config", str(user), "--image-size", "64",
                                     "samples_per_shard=9"], profiles=profiles)
    assert (cfg.input, cfg.image_size, cfg.encode_quality, cfg.samples_per_shard) == ("p", 64, 60, 9)


def test_yaml_sections_merge_key_by_key():
    from common.config import _merge

    assert _merge({"a": 1, "s": {"x": 1, "y": 2}}, {"s": {"y": 3}, "b": 4}) == {"a": 1, "s": {"x": 1, "y": 3}, "b": 4}


@pytest.mark.parametrize("text,message", [
    ("input: [unclosed\n", "is not valid YAML"),
    ("- a list\n", "must hold a mapping"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        parse_config(ShardConfig, ["--config", str(path)])
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="No such file"):
        parse_config(ShardConfig, ["--config", str(tmp_path / "missing.yaml")])


def test_flags_are_never_guessed_from_a_prefix():
    with pytest.raises(SystemExit):  # argparse's usage error (exit status 2), not --timeout-s
        parse_config(ShardConfig, ["--input", "a", "--output", "b", "--timeout", "3"])


def test_configs_are_frozen_and_shard_settings_reach_the_worker():
    cfg = parse_config(ShardConfig, ["--input", "a", "--output", "b", "--image-size", "64", "--shard-retries", "5"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 3
    spec = cfg.worker_spec(key_digits=3)
    assert spec.resize.image_size == 64 and spec.shard_retries == 5 and type(spec.resize) is ResizeSpec


def test_the_main_jobs_quick_profile_never_overwrites_the_user():
    from pipelines.main import PROFILES, MainConfig

    quick = parse_config(MainConfig, ["--quick"], profiles=PROFILES)
    assert (quick.num_train, quick.teacher_epochs, quick.train_overrides) == (3000, 4, ("loss.semantic_weight=4",))
    mine = parse_config(MainConfig, ["--quick", "--num-train", "100", "--teacher-epochs", "2"], profiles=PROFILES)
    assert (mine.num_train, mine.teacher_epochs, mine.num_val) == (100, 2, quick.num_val)
    assert parse_config(MainConfig, [], profiles=PROFILES).teacher_epochs == 12


def _every_key(cls, prefix=""):
    """(dotted key, its default as help shows it) for every leaf field of a config tree."""
    from common.config import _default, _field_types, _shown

    for f in dataclasses.fields(cls):
        kind = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _every_key(kind, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, _shown(_default(f))


def _job_configs():
    from pipelines.embed import EmbedConfig
    from pipelines.evaluate import EvalConfig
    from pipelines.main import MainConfig
    from pipelines.segment import SegmentConfig
    from trainer.config import TrainConfig

    return [ShardConfig, EmbedConfig, EvalConfig, SegmentConfig, MainConfig, TrainConfig]


@pytest.mark.parametrize("cls", _job_configs(), ids=lambda c: c.__name__)
def test_help_lists_every_key_with_its_default(cls, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # one line per key: argparse wraps at hyphens too
    with pytest.raises(SystemExit) as exited:
        parse_config(cls, ["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out.split("options:", 1)[1]  # past the usage line, which names flags too
    keys = list(_every_key(cls))
    assert len(keys) >= 5
    for key, shown in keys:
        flag = key if "." in key else "--" + key.replace("_", "-")
        lines = text.splitlines()
        at = next((i for i, ln in enumerate(lines) if ln.split()[:1] == [flag]), None)
        assert at is not None, f"{flag} is not in --help"
        entry = lines[at] + " ".join(ln for ln in lines[at + 1:at + 2] if ln.startswith(" " * 8))  # help may start below
        assert entry.rstrip().endswith(f"({shown})"), entry
    if any("." in k for k, _ in keys):
        assert "section.key=value" in text


def test_print_config_writes_yaml_that_config_reads_back(tmp_path, capsys):
    argv = ["--input", "a", "--output", "b", "--image-size", "96", "extensions=jpg,png"]
    with pytest.raises(SystemExit) as exited:
        parse_config(ShardConfig, argv + ["--print-config"])
    assert exited.value.code == 0
    saved = tmp_path / "c.yaml"
    saved.write_text(capsys.readouterr().out)
    assert parse_config(ShardConfig, ["--config", str(saved)]) == parse_config(ShardConfig, argv)


def test_img2datasets_spellings_reach_the_same_fields_and_stay_out_of_help(capsys, monkeypatch):
    cfg = parse_config(ShardConfig, ["--url_list", "urls.parquet", "--output_folder", "out", "--url_col", "link",
                                     "--caption_col", "text", "--encode_format", "webp", "--output_format",
                                     "webdataset", "--input_format", "parquet"])
    assert (cfg.input, cfg.output, cfg.url_col, cfg.caption_col, cfg.encode_format, cfg.input_format) == \
        ("urls.parquet", "out", "link", "text", "webp", "parquet")
    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit):
        parse_config(ShardConfig, ["--help"])
    text = capsys.readouterr().out
    assert "--url-col" in text and "--url_col" not in text and "--output_folder" not in text


def test_a_jobs_own_settings_lead_its_help_and_shared_ones_are_validated_once(capsys, monkeypatch):
    from pipelines.evaluate import EvalConfig
    from pipelines.segment import SegmentConfig

    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit):
        parse_config(SegmentConfig, ["--help"])
    text = capsys.readouterr().out.split("options:", 1)[1]
    assert text.index("--checkpoint") < text.index("--window") < text.index("--num-cpus")
    # the shared base's checks hold in both jobs
    for argv in (["--dataset", "generic", "--data-root", "d", "--output", "o"], ["--images", "i", "--output", "o",
                                                                                  "--unsupervised", "3"]):
        cls = EvalConfig if "--dataset" in argv else SegmentConfig
        for bad, message in (("--classfree-decision=up", "classfree_decision must be one of flat, levels"),
                             ("--scales=0", "scales must be positive")):
            with pytest.raises(ConfigError, match=message):
                parse_config(cls, ["--checkpoint", "m.pt", *argv, bad])
