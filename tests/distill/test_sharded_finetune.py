"""Finetuning, its distillation metrics and the served two-stage ranking over user shards: the
same queries, weights, metrics and rankings as with every event in memory."""

import numpy as np
import pytest
import torch

from recmodel.core.columns import Window
from recmodel.core.config import RankerConfig
from recmodel.core.dataset_io import load_dataset
from recmodel.core.user_shards import open_user_shards
from recmodel.distill.finetune import finetune_retriever
from recmodel.distill.metrics import distillation_metrics
from recmodel.distill.requests import request_inputs, request_parts, requests_from_scores
from recmodel.ranker.features import recent_item_counts, run_recent_counts
from recmodel.ranker.model import build_ranker_scores
from tests.distill.test_finetune import EVAL, FINETUNE, TRAIN, Q, _item_order_scores, _retriever
from tests.helpers.ranker_data import FakeRetriever, toy_dataset
from tests.helpers.retriever_data import one_thread
from tests.helpers.shard_tables import write_tables

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # runs compared bit for bit share their sums' order
    try:
        paths = write_tables(toy_dataset(n_users=80, n_items=30), tmp_path_factory.mktemp("t"), 60)
        ds = load_dataset(paths["events"], paths["items"], paths["users"])
        start = _retriever(ds)
        scores = _item_order_scores(ds)
        ranker = build_ranker_scores(
            ds,
            FakeRetriever(ds.n_users, ds.n_items),
            RankerConfig(n_candidates=8, n_popular_candidates=4, max_iter=10),
        )
    finally:
        torch.set_num_threads(threads)
    return ds, paths, start, scores, ranker


def shards_of(ds, paths, n_shards):
    shards = open_user_shards(
        paths["events"], paths["items"], paths["users"], -(-len(ds.ts) // n_shards)
    )
    assert shards.n_shards == n_shards
    return shards


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_request_inputs_read_by_shard_equal_those_in_memory(toy, n_shards):
    ds, paths, start, scores, _ = toy
    requests = requests_from_scores(scores)
    expected = request_inputs(ds, requests, start)
    got = request_inputs(shards_of(ds, paths, n_shards), requests, start)
    np.testing.assert_array_equal(got.windows, expected.windows)
    np.testing.assert_array_equal(got.profiles.items, expected.profiles.items)
    np.testing.assert_array_equal(got.profiles.features, expected.profiles.features)
    for field in ("indptr", "items", "ts"):
        np.testing.assert_array_equal(getattr(got.targets, field), getattr(expected.targets, field))
    assert expected.windows.shape == (len(requests), start.cfg.max_len)
    # Against the histories themselves: the last max_len plays before the finetune window.
    history = ds.history(Window.FINETUNE)
    for r in range(0, len(requests), 9):
        row = history.row(int(requests.users[r]))[-start.cfg.max_len :]
        assert got.windows[r, -len(row) :].tolist() == row.tolist()
    parts = list(request_parts(shards_of(ds, paths, n_shards), requests))
    firsts = [first for _, first, _ in parts]
    assert firsts == sorted(firsts) and sum(len(local) for *_, local in parts) == len(requests)


@pytest.mark.parametrize("n_shards", [2, 5])
def test_finetuning_over_shards_trains_the_same_weights(toy, n_shards):
    ds, paths, start, scores, _ = toy
    run = lambda source: finetune_retriever(  # noqa: E731
        start, source, scores, FINETUNE, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected, got = run(ds), run(shards_of(ds, paths, n_shards))
    finally:
        torch.set_num_threads(threads)

    def strip(history):
        return [
            {k: v for k, v in h.items() if not k.endswith(("seconds", "_per_s"))} for h in history
        ]

    assert strip(got.history) == strip(expected.history)
    assert got.checkpoint == expected.checkpoint and got.best_epoch == expected.best_epoch


@pytest.mark.parametrize("n_shards", [2, 5])
def test_distillation_metrics_over_shards_equal_those_in_memory(toy, n_shards):
    ds, paths, start, _, ranker = toy
    args = dict(ranker=ranker.ranker, n_candidates=8)
    expected = distillation_metrics({"pretrain": start}, ds, ranker.scores, **args)
    got = distillation_metrics(
        {"pretrain": start}, shards_of(ds, paths, n_shards), ranker.scores, **args
    )
    assert got["pretrain"] == pytest.approx(expected["pretrain"], rel=1e-9)
    assert {k: v for k, v in got.items() if k != "pretrain"} == {
        k: v for k, v in expected.items() if k != "pretrain"
    }
    assert expected["n_requests"] > 0 and 0 < expected["pretrain"]["two_stage_ndcg@10"] <= 1


@pytest.mark.parametrize("n_shards", [2, 5])
def test_the_served_ranking_by_shard_equals_the_ranking_in_memory(toy, n_shards):
    ds, paths, start, _, ranker = toy
    cfg = RankerConfig(n_candidates=8, n_popular_candidates=4, max_iter=10)
    users = ds.users_with_events(Window.TEST)
    items, scores = ranker.ranker.rank(ds, start, users, cfg, Window.TEST, 10)
    shards = shards_of(ds, paths, n_shards)
    recent = run_recent_counts(shards, Window.TEST)
    np.testing.assert_array_equal(recent, recent_item_counts(ds.history(Window.TEST), ds.n_items))
    parts = [
        ranker.ranker.rank(part, start, mine, cfg, Window.TEST, 10, recent)
        for part, mine in shards.parts_of(users)
    ]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), items)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), scores, rtol=1e-9)


@pytest.mark.parametrize("n_shards", [2, 5])
def test_the_rankers_scores_over_shards_equal_those_in_memory(toy, n_shards, tmp_path):
    ds, paths, start, _, _ = toy
    cfg = RankerConfig(n_candidates=8, n_popular_candidates=4, max_iter=10)
    expected = build_ranker_scores(ds, start, cfg)
    got = build_ranker_scores(shards_of(ds, paths, n_shards), start, cfg, spill_dir=str(tmp_path))
    assert got.scores.num_rows == expected.scores.num_rows > 0
    for column in expected.scores.column_names:
        assert got.scores[column].equals(expected.scores[column]), column
    assert got.quality == expected.quality and got.quality["auc"] > 0.5
    np.testing.assert_array_equal(got.ranker.base.users, expected.ranker.base.users)
    assert got.features is None and expected.features.shape[0] == expected.scores.num_rows
    assert list(tmp_path.iterdir()) == []  # the shards' feature file is gone
    # The served ranking of either ranker is the same.
    users = ds.users_with_events(Window.TEST)
    a = expected.ranker.rank(ds, start, users, cfg, Window.TEST, 10)
    b = got.ranker.rank(ds, start, users, cfg, Window.TEST, 10)
    np.testing.assert_array_equal(a[0], b[0])
