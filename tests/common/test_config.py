import pytest

from common.config import ConfigError, parse_config
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
])
def test_bad_configs_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(ShardConfig, argv)
