import pytest

from recmodel.core.config import ConfigError, PipelineConfig
from recmodel.core.presets import from_dict, load_preset


@pytest.mark.parametrize("name", ["tiny", "default", "large"])
def test_builtin_presets_load(name):
    cfg = load_preset(name)
    assert cfg.name == name
    assert cfg.model.d_model % cfg.model.n_heads == 0


def test_preset_keys_override_defaults_and_lists_become_tuples():
    cfg = from_dict({"train": {"epochs": 3}, "baselines": {"als_factors": [8, 16]}})
    assert cfg.train.epochs == 3
    assert cfg.train.batch_size == PipelineConfig().train.batch_size
    assert cfg.baselines.als_factors == (8, 16)


def test_unknown_key_is_an_error_naming_the_section():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[train\]: epoch"):
        from_dict({"train": {"epoch": 3}})


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown section"):
        from_dict({"trian": {}})


def test_invalid_value_is_rejected():
    with pytest.raises(ConfigError, match="train.logq"):
        from_dict({"train": {"logq": "sometimes"}})


def test_missing_preset_lists_builtin_ones():
    with pytest.raises(ConfigError, match="built-in presets: .*tiny"):
        load_preset("nonexistent")


def test_preset_from_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nd_model = 16\nn_heads = 4\n")
    cfg = load_preset(str(path))
    assert (cfg.name, cfg.model.d_model) == ("mine", 16)


def test_replace_validates():
    cfg = PipelineConfig().replace(train={"epochs": 1})
    assert cfg.train.epochs == 1
    with pytest.raises(ConfigError):
        cfg.replace(model={"n_heads": 3})
