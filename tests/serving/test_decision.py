"""The gate's rule against a plain computation, its protocol check, and every path of judge."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recmodel.core.config import EvalConfig
from recmodel.report.data import ModelEval, compare
from recmodel.serving import decision as decision_module
from recmodel.serving.decision import (
    Champion,
    decide,
    judge,
    not_eligible,
    protocol_mismatch,
    rule_text,
)
from tests.serving.test_gate import toy_champion, toy_week


def test_rule_exact_at_and_beyond_the_margin():
    at = decide({"diff": -0.01, "lo": -0.015, "hi": -0.005}, "ndcg@10", 0.005)
    assert at == (
        True,
        "ndcg@10 candidate - champion -0.0100, interval [-0.0150, -0.0050]; "
        "upper end >= -0.005: promoted",
    )
    beyond = decide({"diff": -0.01, "lo": -0.015, "hi": -0.0051}, "ndcg@10", 0.005)
    assert beyond == (
        False,
        "ndcg@10 candidate - champion -0.0100, interval [-0.0150, -0.0051]; "
        "upper end < -0.005: rejected",
    )
    # An interval too wide to tell: not shown to be worse, so promoted.
    assert decide({"diff": -0.01, "lo": -0.03, "hi": 0.01}, "ndcg@10", 0.005)[0]


def test_a_tie_promotes_even_without_a_margin():
    assert decide({"diff": 0.0, "lo": 0.0, "hi": 0.0}, "recall@100", 0.0)[0]


@pytest.mark.parametrize("margin", [-0.001, float("nan"), float("inf")])
def test_bad_margin_is_rejected(margin):
    with pytest.raises(ValueError, match="margin"):
        decide({"diff": 0.0, "lo": 0.0, "hi": 0.0}, "ndcg@10", margin)


def test_rule_text_names_the_metric_the_margin_and_the_level():
    assert rule_text("ndcg@10", 0.005) == (
        "reject when the upper end of the 95% paired bootstrap interval of candidate - "
        "champion on ndcg@10, over the candidate's test users, is below -0.005 "
        "(significantly worse by more than the margin); promote otherwise"
    )


def plain_interval(a: np.ndarray, b: np.ndarray, n_samples: int, seed: int) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of resampled mean differences, one replicate at a time."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_samples):
        idx = np.minimum((rng.random(len(a)) * len(a)).astype(np.int64), len(a) - 1)
        means.append(float(np.mean(a[idx] - b[idx])))
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def per_user(values) -> ModelEval:
    return ModelEval({}, {"ndcg@10": np.asarray(values, dtype=np.float64)}, np.zeros(0), 0, 0)


gains = st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=2, max_size=30)


@settings(max_examples=25, deadline=None)
@given(candidate=gains, champion=gains, margin=st.sampled_from([0.0, 0.005, 0.05]))
def test_the_decision_is_the_plain_rule_on_the_reports_paired_bootstrap(
    candidate, champion, margin
):
    n = min(len(candidate), len(champion))
    a, b = np.array(candidate[:n]), np.array(champion[:n])
    cfg = EvalConfig(bootstrap_samples=200, seed=4)
    test = compare(per_user(a), per_user(b), ["ndcg@10"], cfg)["ndcg@10"]
    lower, upper = plain_interval(a, b, 200, 4)
    assert test["lo"] == pytest.approx(lower, abs=1e-12)
    assert test["hi"] == pytest.approx(upper, abs=1e-12)
    assert decide(test, "ndcg@10", margin)[0] == (upper >= -margin)


TEMPORAL = {
    "split": "temporal",
    "windows": {"test": ["2024-03-08T00:00:00+00:00", "2024-03-15T00:00:00+00:00"]},
}


def protocol(test_start: str, split: str = "temporal") -> dict:
    return {"split": split, "windows": {"test": [test_start, "2024-12-31T00:00:00+00:00"]}}


@pytest.mark.parametrize(
    "champion, expected",
    [
        (protocol("2024-03-01T00:00:00+00:00"), None),  # trained a week earlier
        (protocol("2024-03-08T00:00:00+00:00"), None),  # the same data
        (
            protocol("2024-03-09T00:00:00+00:00"),
            "different protocol: the champion trained on events up to "
            "2024-03-09T00:00:00+00:00, inside this run's test window (from "
            "2024-03-08T00:00:00+00:00)",
        ),
        (
            {"split": "leave_last_out"},
            "different protocol (split leave_last_out -> temporal): the gate needs a temporal "
            "test window on both runs",
        ),
        ({"split": "temporal"}, "different protocol: a run's report has no test window"),
    ],
)
def test_protocol_mismatch(champion, expected):
    assert protocol_mismatch(TEMPORAL, champion) == expected


CFG = EvalConfig(ks=(3,), gate_metric="hitrate@3", bootstrap_samples=200, seed=1)


def candidate_recs(lists: dict[str, list[int]]) -> pa.Table:
    rows = [(u, item, r) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    users, items, ranks = zip(*rows, strict=True)
    return pa.table(
        {
            "model": ["sasrec_two_stage"] * len(rows),
            "user_id": list(users),
            "item_id": list(items),
            "score": [0.0] * len(rows),
            "rank": list(ranks),
        }
    )


def champion_run(report=None, fail: str = "") -> Champion:
    """A champion run ``F/1`` that stores ``report`` and nothing else (``fail``: not even it)."""

    def artifact(name):
        if name == fail:
            raise LookupError(f"artifact {name!r} not found in F/1")
        return {"report": report or {"protocol": TEMPORAL, "metrics": {}}}[name]

    return Champion("F/1", artifact)


@pytest.fixture
def toy_loader(monkeypatch):
    """The champion's served model is the toy of test_gate."""
    monkeypatch.setattr(decision_module, "load_served", lambda artifact: toy_champion())


def test_better_on_one_listener_and_equal_on_the_others_promotes_exactly(toy_loader):
    # The toy champion's first tracks (test_gate): a 30, b 20 (b is given popular tracks),
    # c 20. Targets a: 30, 50 | b: 70, 20 | c: 10, so its hitrate@1 is [1, 1, 0]; the
    # candidate's first tracks below hit all three (a's 50 is a track the champion does not
    # know). Every per-user difference is >= 0: every bootstrap mean is too.
    cfg = EvalConfig(ks=(1,), gate_metric="hitrate@1", bootstrap_samples=200, seed=1)
    report = {"protocol": TEMPORAL, "metrics": {"sasrec_two_stage": {"hitrate@1": 0.4}}}
    recs = candidate_recs({"a": [50], "b": [70], "c": [10]})
    result = judge(toy_week(), recs, TEMPORAL, champion_run(report=report), cfg)
    assert result.compared and result.promote and result.champion_run == "F/1"
    assert result.candidate == {"recall@1": 1.0, "ndcg@1": 1.0, "hitrate@1": 1.0}
    assert result.champion["hitrate@1"] == pytest.approx(2 / 3)
    assert result.delta == pytest.approx(1 / 3) and result.interval[0] >= 0.0
    assert result.champion_own_week == 0.4  # its own week's figure, for reference only
    assert result.reach == {
        "n_users": 3,
        "n_targets": 5,
        "unknown_tracks": 2,
        "fallback_users": 1,
        "unreachable_targets": 2,
        "champion_source": "toy",
    }


def test_worse_on_two_of_three_listeners_cannot_be_told_from_a_tie(toy_loader):
    recs = candidate_recs({"a": [10], "b": [10], "c": [10]})  # hits c only
    result = judge(toy_week(), recs, TEMPORAL, champion_run(), CFG)
    # A resample of three listeners can draw c alone (a tie) often enough for the upper end.
    assert result.compared and result.promote
    assert result.delta == pytest.approx(-2 / 3) and result.interval[1] >= -CFG.gate_margin
    assert result.reason.endswith("upper end >= -0.005: promoted")


def test_worse_on_every_listener_rejects(toy_loader):
    # In its top 10 the toy champion has every track it shares with this run (30, 10, 20):
    # it hits a (30), b (20) and c (10). The candidate's single tracks miss all three.
    cfg = EvalConfig(ks=(10,), gate_metric="hitrate@10", bootstrap_samples=200, seed=1)
    recs = candidate_recs({"a": [10], "b": [30], "c": [20]})
    result = judge(toy_week(), recs, TEMPORAL, champion_run(), cfg)
    assert result.compared and not result.promote
    assert result.delta == pytest.approx(-1.0) and result.interval == [-1.0, -1.0]
    assert result.reason.endswith("upper end < -0.005: rejected")


def test_no_champion_yet_promotes():
    result = judge(toy_week(), candidate_recs({"a": [10]}), TEMPORAL, None, CFG)
    assert (result.promote, result.reason, result.compared) == (
        True,
        "no champion yet: promoted",
        False,
    )


def test_a_candidate_without_the_production_model_is_rejected():
    recs = candidate_recs({"a": [10]}).set_column(0, "model", pa.array(["als"]))
    result = judge(toy_week(), recs, TEMPORAL, champion_run(), CFG)
    assert (
        not result.promote and result.reason == "candidate has no sasrec_two_stage recommendations"
    )


@pytest.mark.parametrize(
    "champion, reason",
    [
        (
            champion_run(fail="report"),
            "champion cannot be scored (its report cannot be read: LookupError: artifact "
            "'report' not found in F/1): promoted without a comparison",
        ),
        (
            champion_run(report={"protocol": {"split": "leave_last_out"}}),
            "champion cannot be scored (different protocol (split leave_last_out -> temporal): "
            "the gate needs a temporal test window on both runs): promoted without a comparison",
        ),
    ],
)
def test_a_champion_that_cannot_be_judged_is_not_compared(champion, reason):
    result = judge(toy_week(), candidate_recs({"a": [10]}), TEMPORAL, champion, CFG)
    assert (result.promote, result.compared, result.reason) == (True, False, reason)
    assert result.champion_run == "F/1" and result.interval is None


def test_a_deleted_champion_says_why_for_its_export_and_its_checkpoint():
    result = judge(toy_week(), candidate_recs({"a": [10]}), TEMPORAL, champion_run(), CFG)
    assert result.promote and not result.compared
    assert result.reason.startswith(
        "champion cannot be scored (serving: KeyError: 'serving'; finetune_checkpoint: KeyError"
    )


def test_a_smoke_test_is_never_promoted_and_says_why():
    promoted = judge(toy_week(), candidate_recs({"a": [10]}), TEMPORAL, None, CFG)
    result = not_eligible(promoted, "tiny")
    assert (result.promote, result.eligible) == (False, False)
    assert result.reason == (
        "not eligible: preset 'tiny' never becomes champion (eval.champion_eligible = false); "
        "the gate alone: no champion yet: promoted"
    )
    assert result.to_dict()["eligible"] is False
