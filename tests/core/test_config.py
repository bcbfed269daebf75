"""Settings: presets and overrides are checked once, in start, with the key in every message."""

import dataclasses
import logging

import pytest

from recmodel.core.config import (
    ConfigError,
    PipelineConfig,
    Section,
    memory_bytes,
    within,
)
from recmodel.core.presets import from_dict, load_preset, with_overrides


@pytest.mark.parametrize("name", ["tiny", "default", "large"])
def test_builtin_presets_load(name):
    cfg = load_preset(name)
    assert cfg.name == name
    assert cfg.model.d_model % cfg.model.n_heads == 0


def test_preset_keys_override_defaults_and_lists_become_tuples():
    cfg = from_dict({"train": {"epochs": 3, "lr": 1}, "baselines": {"als_factors": [8, 16]}})
    assert cfg.train.epochs == 3
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # TOML writes 1 for 1.0
    assert cfg.train.batch_size == PipelineConfig().train.batch_size
    assert cfg.baselines.als_factors == (8, 16)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # unknown names, with the closest valid one
        ({"trian": {"epochs": 3}}, r"unknown section 'trian'; did you mean 'train'\?"),
        ({"train": {"epoch": 3}}, r"unknown key in \[train\] 'epoch'; did you mean 'epochs'\?"),
        ({"extract": {"test_days_": 3}}, r"'test_days_'; did you mean 'test_days'\?"),
        ({"zzz": {}}, r"unknown section 'zzz'; known: baselines"),
        # a section that is not a table
        ({"train": 3}, r"\[train\] must be a table of settings, got 3 \(int\)"),
        ({"model": [1, 2]}, r"\[model\] must be a table"),
        # types: no silent casts
        ({"train": {"epochs": "3"}}, r"train.epochs must be an integer, got '3' \(str\)"),
        ({"train": {"lr": "fast"}}, r"train.lr must be a number, got 'fast' \(str\)"),
        ({"train": {"epochs": 2.5}}, r"train.epochs must be an integer, got 2.5"),
        ({"train": {"epochs": True}}, r"train.epochs must be an integer, got True"),
        ({"eval": {"filter_seen": 1}}, r"eval.filter_seen must be true or false, got 1"),
        ({"eval": {"ks": 10}}, r"eval.ks must be a list of an integers, got 10"),
        ({"eval": {"ks": [10, "50"]}}, r"eval.ks must be an integer, got '50'"),
        ({"train": {"logq": 1}}, r"train.logq must be a string, got 1"),
        # ranges and choices
        ({"eval": {"bootstrap_samples": 0}}, r"eval.bootstrap_samples must be >=1, got 0"),
        ({"eval": {"gate_margin": -0.01}}, r"eval.gate_margin must be >=0, got -0.01"),
        (
            {"eval": {"gate_metric": "coverage@100"}},
            r"eval.gate_metric must be recall@k, ndcg@k or hitrate@k with k in eval.ks "
            r"\[10, 50, 100\]; got 'coverage@100'",
        ),
        ({"eval": {"gate_metric": "ndcg@20"}}, r"k in eval.ks \[10, 50, 100\]; got 'ndcg@20'"),
        ({"train": {"lr": -1}}, r"train.lr must be >0, got -1.0"),
        ({"train": {"lr": float("nan")}}, r"train.lr must be >0, got nan"),
        ({"q": {"uniform_mix": 1.5}}, r"q.uniform_mix must be \[0,1\], got 1.5"),
        ({"eval": {"ks": [10, 0]}}, r"eval.ks must be >=1, got \(10, 0\)"),
        ({"eval": {"ks": []}}, r"eval.ks must be >=1, got \(\)"),
        ({"train": {"logq": "sometimes"}}, r"train.logq must be one of all, none, negatives_only"),
        ({"extract": {"split_by": "weeks"}}, r"extract.split_by must be one of events, days"),
        ({"model": {"n_heads": 3}}, r"model.d_model must be divisible by model.n_heads"),
        ({"extract": {"test_share": 0.5, "val_share": 0.3, "finetune_share": 0.2}}, r"below 0.9"),
        ({"extract": {"memory_limit": "1MB"}}, r"memory_limit '1MB' is below 100MB"),
        ({"extract": {"memory_limit": "lots"}}, r"memory_limit 'lots' is not a size"),
        ({"extract": {"cut_time": "yesterday"}}, r"cut_time 'yesterday' is not an ISO time"),
        (
            {"synthetic": {"item_fields": ["artist"]}},
            r"synthetic.item_fields: unknown \['artist'\]",
        ),
    ],
)
def test_a_bad_setting_names_its_key_and_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data, where="--overrides")


def test_every_number_of_every_section_has_a_range():
    """A new numeric setting without a range would slip past the checks in start."""
    for field in dataclasses.fields(PipelineConfig):
        if field.name == "name":
            continue
        section = type(field.default_factory())
        assert issubclass(section, Section)
        numeric = {
            f.name
            for f in dataclasses.fields(section)
            if str(f.type) in ("int", "float", "tuple[int, ...]", "tuple[float, ...]")
            and f.name != "seed"
        }
        assert numeric <= set(section.LIMITS), (section.__name__, numeric - set(section.LIMITS))


def test_overrides_are_checked_like_a_preset():
    cfg = with_overrides(load_preset("tiny"), {"train": {"epochs": 1}})
    assert cfg.train.epochs == 1 and cfg.name == "tiny"
    assert cfg.model == load_preset("tiny").model  # the rest of the preset stays
    with pytest.raises(ConfigError, match=r"--overrides: model.d_model must be divisible"):
        with_overrides(cfg, {"model": {"n_heads": 3}})
    with pytest.raises(ConfigError, match=r"--overrides: \[train\] must be a table"):
        with_overrides(cfg, {"train": 3})
    with pytest.raises(ConfigError, match=r"--overrides: expected a JSON object"):
        with_overrides(cfg, [1, 2])
    assert with_overrides(cfg, '{"train": {"epochs": 2}}').train.epochs == 2  # JSON text
    with pytest.raises(ConfigError, match=r"--overrides: not valid JSON"):
        with_overrides(cfg, '{"train": ')


def test_missing_preset_lists_builtin_ones():
    with pytest.raises(ConfigError, match="built-in presets: .*tiny"):
        load_preset("nonexistent")


def test_preset_from_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nd_model = 16\nn_heads = 4\n")
    cfg = load_preset(str(path))
    assert (cfg.name, cfg.model.d_model) == ("mine", 16)


def test_a_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train]\nepochs = = 3\n")
    with pytest.raises(ConfigError, match=r"preset file '.*broken.toml' is not valid TOML"):
        load_preset(str(path))


def test_a_bad_value_in_a_preset_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 0\n")
    with pytest.raises(ConfigError, match=r"preset file '.*mine.toml': train.epochs must be >=1"):
        load_preset(str(path))


def test_limits_and_sizes():
    assert within(0.5, "(0,1)") and not within(0.0, "(0,1)") and within(0.0, "[0,1)")
    assert within(1, ">=1") and not within(0, ">0") and within(-1, "<0")
    assert memory_bytes("4GB") == 4e9 and memory_bytes("512 MiB") == 512 * 2**20
    assert memory_bytes("4 gigabytes") is None


def test_only_the_smoke_test_preset_never_becomes_champion():
    presets = ("tiny", "default", "large")
    assert [load_preset(n).eval.champion_eligible for n in presets] == [False, True, True]


def test_a_renamed_setting_of_a_past_run_still_reads(caplog):
    with caplog.at_level(logging.WARNING, logger="recmodel.core.presets"):
        cfg = from_dict({"eval": {"gate_tolerance": 0.02}})
    assert cfg.eval.gate_margin == 0.02
    assert "[eval] gate_tolerance is now called gate_margin" in caplog.text
