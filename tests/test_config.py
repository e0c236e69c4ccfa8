from pathlib import Path

import pytest

from engine.config import Config, ConfigError, config_to_dict, load_config
from tests.helpers import REPO


def test_defaults_carry_the_paper_recipe():
    config = load_config()
    assert config.model.image_size == (384, 128) and config.model.grid == (24, 8)
    assert config.model.context_length == 77 and config.model.vocab_size == 49408
    assert (config.loss.temperature, config.nam.mask_prob, config.nam.tap_layer) == (0.02, 0.15, 10)
    assert (config.optim.lr, config.train.batch_size, config.train.epochs) == (1e-5, 64, 30)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path):
    assert isinstance(load_config(path), Config)


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 16\nmodel:\n  image_size: [64, 32]\n")
    config = load_config(path, ["train.batch_size=8", "optim.lr=3", "model.pretrained=/x/ViT-B-16.pt"])
    assert config.train.batch_size == 8
    assert config.model.image_size == (64, 32)
    assert config.optim.lr == 3.0 and isinstance(config.optim.lr, float)
    assert config.model.pretrained == "/x/ViT-B-16.pt"
    assert config_to_dict(config)["model"]["image_size"] == [64, 32]


def test_exponent_without_a_dot_is_a_float():
    # PyYAML follows YAML 1.1, which reads "1e-3" as a string; a learning rate typed that way must still work.
    config = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=5E-2"])
    assert config.optim.lr == 1e-3 and config.optim.weight_decay == 0.05
    with pytest.raises(ConfigError, match="optim.lr must be float"):
        load_config(None, ["optim.lr=1e-3x"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "train.batch_size must be > 0 (got 0)"),
        ("train.bogus=1", "unknown config key 'train.bogus'"),
        ("bogus.key=1", "unknown config key 'bogus'"),
        ("train.epochs=ten", "train.epochs must be int"),
        ("train.epochs=1.5", "train.epochs must be int"),
        ("nam.masking=random", "nam.masking must be one of nam, em, none"),
        ("model.image_size=[100, 64]", "divisible by model.patch_size"),
        ("nam.tap_layer=13", "nam.tap_layer 13 exceeds"),
        ("train.zero_stage=3", "train.zero_stage must be 0, 1 or 2"),
        ("train.batch_size", "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_field(override: str, message: str):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(scalar)
