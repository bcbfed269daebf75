"""The time model against measurements it was not calibrated on (docs/scale.md)."""

import pytest

from recmodel.core.footprint import Sizes
from recmodel.core.presets import load_preset, with_overrides
from recmodel.core.resources import STEPS
from recmodel.core.timing import (
    CPU_THREAD_FLOPS,
    GPU_FLOPS,
    LAPTOP,
    YAMBDA_1000,
    Machine,
    epoch_seconds,
    extract_seconds,
    step_seconds,
    training_flops,
)

HELD_OUT = 0.30  # the model must land within 30% of a measurement it was not fitted on
# On the development machine (2 cores), Yambda's shape at 1/100: 47,594,454 raw events, 9,656
# users, 93,290 tracks, 35,708,419 final events. Extraction: benchmarks/calibrate_time.py, the
# median of 3 runs, in the run that fitted the constants on 1/10,000 and 1/1,000.
YAMBDA_100 = Sizes(47_594_454, 9_656, 93_290)
EXTRACTION_100 = {1: 42.7, 10: 59.3}  # shards -> seconds
# One epoch: benchmarks/bench_scale.py --yambda 100, the training seconds of the history.
EPOCH_100 = 855.1
FINAL_100 = 35_708_419


def test_extraction_predicts_the_held_out_47m_event_runs():
    for shards, measured in EXTRACTION_100.items():
        cfg = with_overrides(load_preset("default"), {"extract": {"shards": shards}})
        predicted = extract_seconds(cfg, YAMBDA_100, LAPTOP)
        assert predicted == pytest.approx(measured, rel=HELD_OUT), shards


def test_one_epoch_predicts_the_held_out_47m_event_run():
    cfg = load_preset("default")
    # The run's own final events (the model's 0.757 share of the raw events gives 36.0M).
    sizes = Sizes(round(FINAL_100 / 0.757), YAMBDA_100.users, YAMBDA_100.tracks)
    assert epoch_seconds(cfg, sizes, LAPTOP) == pytest.approx(EPOCH_100, rel=HELD_OUT)


def test_the_calibrations_reproduce_their_sources():
    """One epoch at 1/1,000 took 83.2 s; gpu.py's case ran 773,341 positions/s on an H200."""
    cfg = load_preset("default")
    at_1000 = Sizes(round(3_750_023 / 0.757), 970, 9_343)
    assert epoch_seconds(cfg, at_1000, LAPTOP) == pytest.approx(83.2, rel=0.01)
    model = {"d_model": 512, "n_blocks": 4, "n_heads": 8, "max_len": 200}
    gpu_case = with_overrides(
        cfg, {"model": model, "train": {"n_negatives": 8_192, "negatives": "shared"}}
    )
    assert GPU_FLOPS / training_flops(gpu_case, 256) == pytest.approx(773_341, rel=0.01)
    assert CPU_THREAD_FLOPS < GPU_FLOPS / 1_000


def test_training_flops_count_in_batch_negatives():
    shared = load_preset("default")
    both = with_overrides(shared, {"train": {"negatives": "both"}})
    in_batch = with_overrides(shared, {"train": {"negatives": "in_batch"}})
    positions = shared.train.batch_size * shared.model.max_len
    extra = 3 * 2 * shared.model.d_model * positions
    assert training_flops(both, shared.train.batch_size) == pytest.approx(
        training_flops(shared, shared.train.batch_size) + extra
    )
    assert training_flops(in_batch, shared.train.batch_size) < training_flops(
        both, shared.train.batch_size
    )


def test_every_step_is_predicted_and_training_is_an_upper_bound():
    """At 1/1,000 the other steps reproduce the whole run they come from; the training steps
    count every configured epoch, where early stopping ran fewer."""
    cfg = load_preset("default")
    sizes = Sizes(4_855_225, 970, 9_343)
    predicted = step_seconds(cfg, sizes, {}, synthetic=False)
    assert set(predicted) == set(STEPS)
    for step in ("pretrain", "pretrain_no_logq"):
        assert YAMBDA_1000[step] <= predicted[step] <= 2 * YAMBDA_1000[step], step
    for step in ("baselines", "materialize_ranker_scores", "finetune", "end"):
        assert predicted[step] == pytest.approx(YAMBDA_1000[step], rel=0.05), step


def test_gpus_and_threads_divide_the_training_time():
    cfg = load_preset("large")
    sizes = Sizes(500_000_000, 100_000, 3_000_000)
    one, eight = Machine("1 GPU", 16, 1), Machine("8 GPUs", 64, 8)
    assert epoch_seconds(cfg, sizes, one) == pytest.approx(8 * epoch_seconds(cfg, sizes, eight))
    four_nodes = with_overrides(cfg, {"train": {"nodes": 4}})
    assert epoch_seconds(cfg, sizes, one) == pytest.approx(
        4 * epoch_seconds(four_nodes, sizes, one)
    )
    two_threads = with_overrides(cfg, {"extract": {"threads": 2}})
    assert extract_seconds(two_threads, sizes, one) > 3 * extract_seconds(cfg, sizes, one)
