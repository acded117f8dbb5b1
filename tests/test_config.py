"""Training configuration from TOML plus command-line overrides."""
import argparse
from pathlib import Path

import pytest

from merc.cli.train import add_config_arguments
from merc.models.train.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"


def test_file_values_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('corpus = "iemocap"\nlayers = 4\nlr = 0.001\n')
    config = load_config(path, {"layers": 3, "seed": None})
    assert (config.corpus, config.layers, config.lr, config.seed) == ("iemocap", 3, 0.001, 0)


def test_unknown_key_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("layerz = 4\n")
    with pytest.raises(ValueError, match=r"c\.toml.*layerz"):
        load_config(path, {})


def test_every_field_has_a_documented_option():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--finetune", "true", "--drop-audio", "0.5", "--layers", "3"])
    assert args.finetune is True and args.drop_audio == 0.5 and args.layers == 3
    assert "modality dropout" in parser.format_help()


@pytest.mark.parametrize("name", ["meld.toml", "iemocap.toml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name, {})
    assert isinstance(config, TrainConfig)
