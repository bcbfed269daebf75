"""Finetuning by pairwise distillation of the ranker, its requests, and the distillation metrics."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

import recmodel.distill.finetune
from recmodel.core.columns import Columns, Window
from recmodel.core.config import (
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    QConfig,
    RankerConfig,
    TrainConfig,
)
from recmodel.distill.finetune import finetune_retriever
from recmodel.distill.metrics import distillation_metrics, rerank, top_overlap
from recmodel.distill.requests import (
    HOLDOUT_SHARE,
    Requests,
    holdout_mask,
    pair_agreement,
    request_targets,
    requests_from_scores,
    split_requests,
)
from recmodel.ranker.candidates import finetune_requests
from recmodel.ranker.model import build_ranker_scores
from recmodel.ranker.splits import WindowLeakError, user_folds
from recmodel.retriever.checkpoint import load_retriever
from recmodel.retriever.model import Retriever
from recmodel.retriever.progress import TrainingError
from recmodel.retriever.validation import evaluate_retriever, validation_set
from tests.helpers.ranker_data import FakeRetriever, dataset_from_events, toy_dataset, toy_items
from tests.helpers.retriever_data import one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
MODEL = ModelConfig(
    d_model=16, n_blocks=1, n_heads=2, max_len=10, dropout=0.0, id_dim=16, meta_dim=4
)
TRAIN = TrainConfig(seed=0, warmup_steps=2, n_negatives=16, eval_users=0, device="cpu")
FINETUNE = FinetuneConfig(
    epochs=4, batch_size=8, lr=1e-2, sparse_lr=3e-2, softmax_weight=0.0, patience=10
)
Q, EVAL = QConfig(), EvalConfig(ks=(10,))


def _scores(rows):
    """A ranker_scores table from ``(user, item, request_ts, score)`` rows."""
    u, i, t, s = zip(*rows, strict=True)
    return pa.table(
        {
            Columns.USER_IDX: pa.array(u, pa.int64()),
            Columns.ITEM_IDX: pa.array(i, pa.int32()),
            Columns.REQUEST_TS: pa.array(t, pa.int64()),
            Columns.SCORE: pa.array(s, pa.float64()),
        }
    )


# -- requests ----------------------------------------------------------------------------------


def test_requests_group_rows_by_user_and_time_in_any_order():
    table = _scores([(5, 3, 100, 0.5), (2, 7, 50, 1.0), (5, 1, 100, 2.0), (5, 4, 300, -1.0)])
    req = requests_from_scores(table)
    assert req.users.tolist() == [2, 5, 5] and req.request_ts.tolist() == [50, 100, 300]
    assert req.items.tolist() == [[7, 0], [1, 3], [4, 0]]
    np.testing.assert_array_equal(req.scores, [[1.0, 0.0], [2.0, 0.5], [-1.0, 0.0]])
    assert req.mask.tolist() == [[True, False], [True, True], [True, False]]


def test_request_targets_are_finetune_listens_at_or_after_the_request():
    events = [
        (0, 1, 10, 0),
        (0, 2, 100, 1),
        (0, 3, 150, 1),
        (0, 4, 500, 2),
        (1, 2, 20, 0),
        (1, 5, 120, 1),
    ]
    ds = dataset_from_events(np.array(events), 2, toy_items(6))
    req = Requests(
        np.array([0, 1]),
        np.array([140, 120]),
        np.zeros((2, 1), np.int64),
        np.zeros((2, 1), np.float32),
        np.ones((2, 1), bool),
    )
    targets = request_targets(ds, req)
    assert [targets.row(0).tolist(), targets.row(1).tolist()] == [[3], [5]]


def test_pair_agreement_matches_a_loop():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 3, (5, 6)).astype(np.float32)  # many ties in z (count one half)
    r = rng.integers(0, 4, (5, 6)).astype(np.float32)  # ties in r make no pair
    mask = rng.random((5, 6)) < 0.8
    agree, pairs = 0.0, 0
    for b in range(5):
        for i in range(6):
            for j in range(6):
                if mask[b, i] and mask[b, j] and r[b, i] > r[b, j]:
                    pairs += 1
                    agree += 1.0 if z[b, i] > z[b, j] else 0.5 if z[b, i] == z[b, j] else 0.0
    got = pair_agreement(torch.from_numpy(z), torch.from_numpy(r), torch.from_numpy(mask))
    assert (float(got[0]), int(got[1])) == (pytest.approx(agree), pairs)


def test_holdout_is_a_stable_user_split_independent_of_the_ranker_folds():
    users = np.arange(20_000)
    held = holdout_mask(users)
    assert held.mean() == pytest.approx(HOLDOUT_SHARE, abs=0.01)
    np.testing.assert_array_equal(holdout_mask(users[::-3]), held[::-3])
    folds = user_folds(users, 2)
    assert held[folds == 0].mean() == pytest.approx(held[folds == 1].mean(), abs=0.02)
    req = Requests(
        np.repeat(users[:50], 2),
        np.zeros(100, np.int64),
        np.zeros((100, 1), np.int64),
        np.zeros((100, 1), np.float32),
        np.ones((100, 1), bool),
    )
    train, test = split_requests(req)
    assert len(train) + len(test) == 100 and not set(train.users) & set(test.users)


# -- finetuning --------------------------------------------------------------------------------


def _retriever(ds, seed=0):
    torch.manual_seed(seed)
    return Retriever(ds.items, MODEL).eval()


def _item_order_scores(ds, n_candidates=12, seed=0):
    """A ranker that prefers the same items for every user: a fixed random score per item."""
    rng = np.random.default_rng(seed)
    value = rng.normal(size=ds.n_items + 1)
    users, request_ts = finetune_requests(ds)
    rows = []
    for u, t in zip(users, request_ts, strict=True):
        for i in rng.choice(np.arange(1, ds.n_items + 1), n_candidates, replace=False):
            rows.append((int(u), int(i), int(t), float(value[i])))
    return _scores(rows)


@pytest.fixture(scope="module")
def toy():
    # One thread, as in every test of this module: runs compared bit for bit share the order
    # of their floating-point sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = toy_dataset(n_users=80, n_items=30)
        start = _retriever(ds)
        scores = _item_order_scores(ds)
        result = finetune_retriever(
            start, ds, scores, FINETUNE, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
        )
    finally:
        torch.set_num_threads(threads)
    return ds, start, scores, result


def test_finetune_moves_the_retriever_toward_the_rankers_order(toy):
    ds, start, _, result = toy
    history = result.history
    assert history[0]["epoch"] == 0 and "loss" not in history[0]  # the start: nothing trained
    assert len(history) == FINETUNE.epochs + 1
    # Held-out users' requests: never trained on, yet ordered more like the ranker.
    assert history[-1]["heldout_agreement"] > history[0]["heldout_agreement"] + 0.15
    assert history[-1]["agreement"] > history[1]["agreement"]
    assert history[-1]["pair_loss"] < history[1]["pair_loss"]


def test_finetune_returns_the_best_validated_model_never_worse_than_the_start(toy):
    ds, start, _, result = toy
    scores = [h["ndcg@10"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores))
    valset = validation_set(ds, 0, 0)
    got = evaluate_retriever(result.model, valset, (10,), 65_536)["ndcg@10"]
    assert got == pytest.approx(max(scores)) and got >= scores[0]
    again = load_retriever(result.checkpoint, result.model_config, ds.items)
    for name, tensor in result.model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)


def test_finetune_leaves_the_pretrained_model_untouched(toy):
    ds, start, _, _ = toy
    fresh = _retriever(ds)
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor)


def test_finetune_keeps_the_start_when_every_epoch_validates_worse(toy, monkeypatch):
    ds, start, scores, _ = toy
    falling = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(
        recmodel.distill.finetune, "evaluate_retriever", lambda *args: {"ndcg@10": next(falling)}
    )
    cfg = FinetuneConfig(epochs=4, batch_size=8, lr=1e-2, sparse_lr=3e-2, patience=2)
    result = finetune_retriever(
        start, ds, scores, cfg, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
    )
    assert result.best_epoch == 0 and len(result.history) == 1 + cfg.patience
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], tensor)


def test_finetune_never_reads_the_test_window(toy):
    ds, start, scores, result = toy
    items = ds.item_idx.copy()
    test = ds.window == Window.TEST
    items[test] = (items[test] % ds.n_items) + 1
    events = np.stack([ds.user_idx, items, ds.ts, ds.window], axis=1)
    other = dataset_from_events(events, ds.n_users, ds.items)
    again = finetune_retriever(
        start, other, scores, FINETUNE, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
    )

    def strip(history):
        timings = ("seconds", "_per_s")
        return [{k: v for k, v in h.items() if not k.endswith(timings)} for h in history]

    # Losses, agreements and validation metrics of every epoch: the whole run is unchanged.
    assert strip(again.history) == strip(result.history)
    assert again.checkpoint == result.checkpoint


def test_finetune_rejects_requests_outside_the_finetune_window(toy):
    ds, start, scores, _ = toy
    late = scores.set_column(
        2, Columns.REQUEST_TS, pa.array(np.full(scores.num_rows, ds.ts.max()), pa.int64())
    )
    with pytest.raises(WindowLeakError, match="validation/test event"):
        finetune_retriever(start, ds, late, FINETUNE, TRAIN, ds.item_counts, Q, EVAL, device="cpu")


def test_finetune_with_the_softmax_term_runs_and_records_both_losses(toy):
    ds, start, scores, _ = toy
    cfg = FinetuneConfig(epochs=1, batch_size=16, softmax_weight=0.5, pair_weighting="rank_gap")
    result = finetune_retriever(
        start, ds, scores, cfg, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
    )
    record = result.history[1]
    assert record["softmax_loss"] > 0 and record["pair_loss"] > 0
    assert record["loss"] == pytest.approx(
        record["pair_loss"] + 0.5 * record["softmax_loss"], rel=1e-5
    )


# -- distillation metrics ----------------------------------------------------------------------


def test_top_overlap_and_rerank_exact():
    held = Requests(
        np.array([0, 1]),
        np.zeros(2, np.int64),
        np.array([[5, 6, 7], [8, 9, 0]]),
        np.array([[0.1, 0.3, 0.2], [1.0, 2.0, 0.0]], dtype=np.float32),
        np.array([[True, True, True], [True, True, False]]),
    )
    retrieved = np.array([[6, 1, 2], [3, 4, 8]])
    assert top_overlap(held, retrieved) == pytest.approx((1 / 3 + 1 / 2) / 2)
    items = np.array([[1, 2, 3], [4, 5, -1]])
    scores = np.array([[0.2, 0.9, 0.2], [np.nan, 1.0, np.nan]])
    assert rerank(items, scores).tolist() == [[2, 1, 3], [5, 4, -1]]


def test_distillation_metrics_on_held_out_requests(toy):
    ds, start, _, result = toy
    ranker = build_ranker_scores(
        ds,
        FakeRetriever(ds.n_users, ds.n_items),
        RankerConfig(n_candidates=8, n_popular_candidates=4, max_iter=10),
    )
    out = distillation_metrics(
        {"pretrain": start}, ds, ranker.scores, ranker=ranker.ranker, n_candidates=8
    )
    _, held = split_requests(requests_from_scores(ranker.scores))
    assert out["n_requests"] == len(held) > 0 and out["holdout_share"] == HOLDOUT_SHARE
    metrics = out["pretrain"]
    for name in (
        "pair_agreement",
        "ranker_top10_in_top100",
        "retriever_ndcg@10",
        "two_stage_ndcg@10",
    ):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["ranker_top10_in_top100"] == 1.0  # 30 items: the top-100 is the catalog
    plain = distillation_metrics(
        {"pretrain": start}, ds, ranker.scores, ranker=None, n_candidates=8
    )
    assert math.isnan(plain["pretrain"]["two_stage_ndcg@10"])
    assert plain["pretrain"]["pair_agreement"] == metrics["pair_agreement"]


class OracleRanker:
    """Scores 1 for a request's finetune-window listens, 0 otherwise (a perfect re-ranker)."""

    def __init__(self, ds, requests):
        targets = request_targets(ds, requests)
        self.liked = {int(u): set(targets.row(r).tolist()) for r, u in enumerate(requests.users)}

    def score_topk(self, dataset, users, items, first_user=0, recent_counts=None):
        return np.array(
            [
                [float(i in self.liked[int(u) + first_user]) for i in row]
                for u, row in zip(users, items, strict=True)
            ]
        )


def test_two_stage_ndcg_is_the_retrievers_top_k_reranked(toy):
    ds, start, scores, _ = toy
    _, held = split_requests(requests_from_scores(scores))
    k = 15
    out = distillation_metrics(
        {"m": start}, ds, scores, ranker=OracleRanker(ds, held), n_candidates=k
    )["m"]
    ids, _ = start.recommend(ds.history(Window.FINETUNE), held.users, k)
    targets = request_targets(ds, held)
    total, n = 0.0, 0
    for r in range(len(held)):
        liked = set(targets.row(r).tolist())
        if not liked:
            continue
        hits = sum(1 for i in ids[r] if i in liked)  # the oracle puts every hit first
        dcg = sum(1 / math.log2(j + 2) for j in range(min(hits, 10)))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(liked), 10)))
        total, n = total + dcg / idcg, n + 1
    assert out["two_stage_ndcg@10"] == pytest.approx(total / n)
    assert out["two_stage_ndcg@10"] >= out["retriever_ndcg@10"]


def test_a_non_finite_loss_is_the_trainers_error_naming_the_batch(toy, monkeypatch):
    ds, start, scores, _ = toy

    def broken(z, r, mask, weighting):
        return torch.full((), float("nan"), requires_grad=True)

    monkeypatch.setattr(recmodel.distill.finetune, "pairwise_logit_loss", broken)
    with pytest.raises(TrainingError, match=r"nan at step 1 \(epoch 1, batch 0 of \d+\).*users"):
        finetune_retriever(
            start, ds, scores, FINETUNE, TRAIN, ds.item_counts, Q, EVAL, device="cpu"
        )
