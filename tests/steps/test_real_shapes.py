"""Logs shaped like the real ones the pipeline meets, through every step of the flow.

Each shape is written by the generator (its shape options, :mod:`recmodel.synthetic.shapes`)
to files that the run reads as a user's own data (``--events``, with or without ``--items``),
on the tiny preset with no other override than the size, as the external checks run the
default preset. A shape the pipeline cannot serve must stop in ``extract_sessions`` with the
message that names the window, its counts and the setting that fixes it.
"""

import math

import pytest

from recmodel.core.errors import InputError
from recmodel.core.presets import load_preset, with_overrides
from recmodel.synthetic.generator import generate
from tests.helpers.pipeline import run_steps

SMALL = {"n_users": 160, "n_tracks": 700, "n_artists": 70}
FAST = {"train": {"epochs": 1}, "finetune": {"epochs": 1}, "eval": {"bootstrap_samples": 50}}
MODELS = {
    "popularity", "user_popular", "user_recent", "itemknn", "als", "sasrec_no_logq",
    "sasrec_pretrain", "sasrec_two_stage", "two_stage_ranked",
}  # fmt: skip


def write_log(tmp_path, **shape):
    cfg = with_overrides(load_preset("tiny"), {"synthetic": {**SMALL, **shape}}).synthetic
    return generate(cfg, tmp_path / "log")


def run(tmp_path, paths, with_items=True, overrides=FAST):
    return run_steps(
        tmp_path / "run",
        "tiny",
        overrides,
        events=str(paths.events),
        items=str(paths.items) if with_items else "",
    )


def assert_complete(out):
    report = out["report"]
    assert set(report["metrics"]) == MODELS, report.get("failed")
    assert not report["failed"]
    for metrics in report["metrics"].values():
        assert all(math.isfinite(v) for v in metrics.values())
    rows = {r["window"]: r for r in report["protocol"]["window_table"]}
    assert all(rows[w]["requests"] >= 10 for w in ("finetune", "val", "test"))
    assert out["serving"]["n_items"] == out["data_summary"]["n_items"]


@pytest.mark.slow
def test_bursts_months_apart_with_artist_ids_only(tmp_path):
    """Last.fm-like: five 5-day bursts over eight months, the artist the only metadata."""
    paths = write_log(
        tmp_path, days=25.0, bursts=5, burst_gap_days=50.0, item_fields=("artist_id",)
    )
    out = run(tmp_path, paths)
    assert_complete(out)
    dropped = out["ranker_quality"]["features_dropped"]
    assert {"user_genre_count", "tempo_dist", "acoustic_cos"} <= set(dropped)
    assert "user_artist_count" in out["ranker_quality"]["features_used"]


@pytest.mark.slow
def test_events_without_an_items_file(tmp_path):
    paths = write_log(tmp_path)
    out = run(tmp_path, paths, with_items=False)
    assert_complete(out)
    cardinalities = out["finetune_checkpoint"]["model_config"]["cardinalities"]
    assert set(cardinalities.values()) == {1}  # every code "unknown": the tower is ids alone
    assert "user_item_decay_7d" in out["ranker_quality"]["features_used"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "fields", [("genre",), ("artist_id", "album_id"), ("tempo", "embedding")], ids=str
)
def test_partial_metadata(tmp_path, fields):
    out = run(tmp_path, write_log(tmp_path, item_fields=fields, missing_share=0.6))
    assert_complete(out)


@pytest.mark.slow
def test_a_rating_like_log_without_relistening(tmp_path):
    """MovieLens-like: each item once per user, no play signal, few events per user."""
    paths = write_log(tmp_path, relisten=False, play_signal=False, sessions_per_user_per_day=0.15)
    out = run(tmp_path, paths)
    assert_complete(out)
    assert out["data_summary"]["stages"]["skip"]["events"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [
        {"relisten": False, "play_signal": False, "sessions_per_user_per_day": 0.15},
        {"days": 25.0, "bursts": 5, "burst_gap_days": 50.0, "item_fields": ()},
    ],
    ids=["ratings", "bursts-without-items"],
)
def test_pretraining_over_user_shards_on_real_shapes(tmp_path, shape):
    """The pretraining steps read the log as user shards (of a third of it, or less)."""
    paths = write_log(tmp_path, **{k: v for k, v in shape.items() if k != "item_fields"})
    with_items = shape.get("item_fields", None) != ()
    sharded = {**FAST, "train": {**FAST["train"], "shard_events": paths.n_events // 4}}
    out = run(tmp_path, paths, with_items, sharded)
    assert_complete(out)
    for model in ("sasrec_pretrain", "sasrec_no_logq"):
        assert out["model_results"][model]["user_shards"] >= 2, model


@pytest.mark.slow
def test_a_long_tail_catalog(tmp_path):
    """Half as many tracks as events: most tracks are heard once or twice."""
    paths = write_log(tmp_path, n_tracks=20_000, n_artists=2_000, zipf_exponent=0.6)
    assert paths.n_events < 2.5 * 20_000
    out = run(tmp_path, paths)
    assert_complete(out)


@pytest.mark.slow
def test_a_one_day_log(tmp_path):
    paths = write_log(tmp_path, days=1.0, n_users=600, sessions_per_user_per_day=3.0)
    out = run(tmp_path, paths)
    assert_complete(out)
    times = out["data_summary"]["split_times"]
    assert times["t_max"]["epoch"] - times["t_min"]["epoch"] <= 86_400


@pytest.mark.slow
def test_users_present_in_one_window_only_fail_in_extraction(tmp_path):
    """Every user active for a few hours only: no window has users with history before it."""
    paths = write_log(tmp_path, user_span_days=0.1, new_user_share=1.0)
    with pytest.raises(InputError) as info:
        run(tmp_path, paths)
    message = str(info.value)
    assert "window [" in message and "with history before it" in message
    assert "extract.min_window_users=10" in message and "Fix: raise extract." in message
