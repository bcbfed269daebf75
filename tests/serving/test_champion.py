"""Champion gating: the decision rule, protocol keys, run lookup and tags."""

import math
import os
import textwrap
from datetime import datetime, timedelta

import metaflow
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recmodel.serving import champion
from recmodel.serving.champion import (
    CHAMPION_TAG,
    REJECTED_TAG,
    Decision,
    apply,
    current_champion,
    decide,
    decide_reports,
    protocol_key,
    resolve_run,
    revoke,
)


def test_no_champion_promotes():
    assert decide({"ndcg@10": 0.25}, None) == Decision(
        True, "no champion yet", None, "ndcg@10", 0.25, None
    )


def test_improvement_promotes_with_exact_delta():
    decision = decide({"ndcg@10": 0.5}, {"ndcg@10": 0.25})
    assert decision == Decision(True, "ndcg@10 improved by +0.25", 0.25, "ndcg@10", 0.5, 0.25)


def test_regression_at_the_tolerance_promotes_and_beyond_it_rejects():
    at = decide({"ndcg@10": 0.25}, {"ndcg@10": 0.5}, tolerance=0.25)
    assert at.promote and at.delta == -0.25 and at.reason == "ndcg@10 within tolerance: -0.25"
    beyond = decide({"ndcg@10": 0.25}, {"ndcg@10": 0.5}, tolerance=0.125)
    assert not beyond.promote and beyond.delta == -0.25
    assert beyond.reason == "ndcg@10 regressed by 0.25 (> tolerance 0.125)"


def test_other_metric_is_compared():
    decision = decide(
        {"ndcg@10": 0.0, "recall@100": 0.75},
        {"ndcg@10": 1.0, "recall@100": 0.5},
        metric="recall@100",
    )
    assert decision.promote and decision.delta == 0.25 and decision.metric == "recall@100"


@pytest.mark.parametrize(
    "candidate",
    [{}, {"ndcg@10": float("nan")}, {"ndcg@10": None}, {"ndcg@10": "0.3"}, {"ndcg@10": True}],
)
def test_candidate_without_a_finite_metric_never_promotes(candidate):
    for champ in (None, {"ndcg@10": 0.0}):
        decision = decide(candidate, champ)
        assert not decision.promote and decision.reason == "candidate has no finite ndcg@10"


def test_champion_without_the_metric_is_replaced():
    decision = decide({"ndcg@10": 0.1}, {"ndcg@10": float("inf")})
    assert decision.promote and decision.delta is None
    assert decision.reason == "champion has no finite ndcg@10"


@pytest.mark.parametrize("tolerance", [-0.001, float("nan"), float("inf")])
def test_bad_tolerance_is_rejected(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        decide({"ndcg@10": 0.1}, {"ndcg@10": 0.1}, tolerance=tolerance)


unit = st.floats(0.0, 1.0, allow_nan=False)


@given(candidate=unit, champ=unit, tolerance=st.floats(0.0, 0.1, allow_nan=False))
def test_a_regression_beyond_tolerance_never_replaces_the_champion(candidate, champ, tolerance):
    decision = decide({"ndcg@10": candidate}, {"ndcg@10": champ}, tolerance=tolerance)
    assert decision.promote == (candidate - champ >= -tolerance)  # the rule, written plainly
    assert decision.delta == candidate - champ
    better = decide(
        {"ndcg@10": min(1.0, candidate + 0.01)}, {"ndcg@10": champ}, tolerance=tolerance
    )
    assert better.promote or not decision.promote  # a better candidate never does worse


def report(ndcg=0.3, start="2024-03-01T00:00:00+00:00", days=(6, 4, 5), **protocol):
    """A ``report`` artifact with temporal windows of ``days`` (finetune, val, test)."""
    t0 = datetime.fromisoformat(start)
    edges = [t0 + timedelta(days=sum(days[:i])) for i in range(4)]
    windows = {
        name: [edges[i].isoformat(), edges[i + 1].isoformat()]
        for i, name in enumerate(("finetune", "val", "test"))
    }
    windows["pretrain"] = [(t0 - timedelta(days=30)).isoformat(), t0.isoformat()]
    base = {
        "split": "temporal",
        "filter_seen": False,
        "listen_threshold_pct": 50.0,
        "gap_minutes": 30.0,
        "max_test_users": "all",
        "windows": windows,
        "n_test_users": 100,
        "n_targets": 400,
    }
    return {
        "protocol": {**base, **protocol},
        "metrics": {"sasrec_two_stage": {"ndcg@10": ndcg}, "als": {"ndcg@10": 0.9}},
    }


def test_protocol_key_exact():
    assert protocol_key(report()) == (
        ("split", "temporal"),
        ("filter_seen", False),
        ("listen_threshold_pct", 50.0),
        ("gap_minutes", 30.0),
        ("max_test_users", "all"),
        ("finetune_minutes", 6 * 1440),
        ("val_minutes", 4 * 1440),
        ("test_minutes", 5 * 1440),
    )


def test_sliding_windows_compare_unless_strict():
    week_later = report(start="2024-03-08T00:00:00+00:00", n_test_users=120)
    assert protocol_key(week_later) == protocol_key(report())
    assert protocol_key(week_later, strict=True) != protocol_key(report(), strict=True)
    assert protocol_key(report(), strict=True) == protocol_key(report(), strict=True)


@pytest.mark.parametrize(
    "change",
    [
        {"filter_seen": True},
        {"split": "leave_last_out"},
        {"listen_threshold_pct": 80.0},
        {"days": (6, 4, 7)},
    ],
)
def test_protocol_changes_change_the_key(change):
    assert protocol_key(report(**change)) != protocol_key(report())


def test_decide_reports_compares_the_production_model():
    decision = decide_reports(report(ndcg=0.25), report(ndcg=0.5))
    assert not decision.promote and decision.delta == -0.25  # als's 0.9 plays no part
    assert decide_reports(report(ndcg=0.5), report(ndcg=0.25)).promote
    assert decide_reports(report(ndcg=0.25), None).reason == "no champion yet"


def test_changed_protocol_promotes_and_says_why():
    decision = decide_reports(report(ndcg=0.1, filter_seen=True, days=(6, 4, 7)), report(0.5))
    assert decision.promote and decision.delta is None and decision.champion is None
    assert decision.reason == (
        "protocol changed (filter_seen, test_minutes): no comparable champion"
    )
    strict = decide_reports(
        report(0.1, start="2024-03-08T00:00:00+00:00"), report(0.5), strict=True
    )
    assert strict.promote and strict.reason.startswith("protocol changed (finetune_bounds")


def test_changed_protocol_still_rejects_a_candidate_without_the_metric():
    broken = report(filter_seen=True)
    broken["metrics"] = {"als": {"ndcg@10": 0.9}}  # the production model failed
    decision = decide_reports(broken, report())
    assert not decision.promote and decision.reason == "candidate has no finite ndcg@10"


class FakeRun:
    def __init__(self, number, tags=(), successful=True):
        self.pathspec = f"F/{number}"
        self.created_at = datetime(2024, 1, 1) + timedelta(hours=number)
        self.tags, self.successful = set(tags), successful

    def add_tag(self, tag):
        self.tags.add(tag)

    def remove_tag(self, tag):
        self.tags.discard(tag)


class FakeFlow:
    """``metaflow.Flow`` over a fixed list of runs, filtering by tags as the client does."""

    runs_by_flow: dict = {}

    def __init__(self, name):
        if name not in self.runs_by_flow:
            raise metaflow.exception.MetaflowNotFound(name)
        self._runs = self.runs_by_flow[name]

    def runs(self, *tags):
        return [r for r in self._runs if set(tags) <= r.tags]

    @property
    def latest_successful_run(self):
        done = [r for r in self._runs if r.successful]
        return max(done, key=lambda r: r.created_at) if done else None


@pytest.fixture
def fake_flows(monkeypatch):
    runs = [
        FakeRun(1, {CHAMPION_TAG, "project_branch:prod"}),
        FakeRun(2, {REJECTED_TAG}),
        FakeRun(3, {CHAMPION_TAG, "project_branch:test"}),
        FakeRun(4, {CHAMPION_TAG, "project_branch:prod"}, successful=False),
        FakeRun(5),
    ]
    monkeypatch.setattr(FakeFlow, "runs_by_flow", {"F": runs, "Empty": []})
    monkeypatch.setattr(metaflow, "Flow", FakeFlow)
    monkeypatch.setattr(metaflow, "Run", lambda pathspec: f"Run({pathspec})")
    return runs


def test_current_champion_is_the_newest_successful_champion(fake_flows):
    assert current_champion("F").pathspec == "F/3"
    assert current_champion("F", ["project_branch:prod"]).pathspec == "F/1"  # 4 failed
    assert current_champion("F", ["project_branch:dev"]) is None
    assert current_champion("Empty") is None
    assert current_champion("Missing") is None


def test_resolve_run(fake_flows):
    assert resolve_run("latest", "F").pathspec == "F/5"
    assert resolve_run("champion", "F").pathspec == "F/3"
    assert resolve_run("12", "F") == "Run(F/12)"
    assert resolve_run("G/7", "F") == "Run(G/7)"
    with pytest.raises(LookupError, match="no successful run"):
        resolve_run("latest", "Empty")
    with pytest.raises(LookupError, match="no champion"):
        resolve_run("champion", "Empty")


def test_apply_and_revoke_tags(fake_flows):
    apply(fake_flows[4], decide({"ndcg@10": 0.2}, None))
    assert CHAMPION_TAG in fake_flows[4].tags and current_champion("F").pathspec == "F/5"
    revoke(fake_flows[4])
    assert fake_flows[4].tags == {REJECTED_TAG} and current_champion("F").pathspec == "F/3"
    apply(fake_flows[1], decide({}, None))
    assert fake_flows[1].tags == {REJECTED_TAG}


GATED_FLOW = textwrap.dedent("""
    from metaflow import FlowSpec, Parameter, current, step

    from recmodel.serving import champion


    class GatedFlow(FlowSpec):
        ndcg = Parameter("ndcg", type=float, default=0.3)

        @step
        def start(self):
            self.report = {"protocol": {"split": "temporal"},
                           "metrics": {"sasrec_two_stage": {"ndcg@10": self.ndcg}}}
            self.next(self.end)

        @step
        def end(self):
            decision = champion.gate(self.report, current.flow_name, current.run_id)
            self.champion_decision = decision.to_dict()


    if __name__ == "__main__":
        GatedFlow()
""")


@pytest.mark.slow
@pytest.mark.flow
def test_gate_tags_real_runs(tmp_path):
    """Three retrains through metaflow.Runner: better, worse, then a rollback."""
    from metaflow import Run, Runner

    flow = tmp_path / "gated_flow.py"
    flow.write_text(GATED_FLOW)
    env = {
        k: os.environ[k]
        for k in ("METAFLOW_USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")
    }
    ids = []
    for ndcg in (0.3, 0.2, 0.298):
        with Runner(str(flow), show_output=False, env=env).run(ndcg=ndcg) as result:
            assert result.status == "successful", result.stderr
            ids.append(result.run.id)
    runs = [Run(f"GatedFlow/{i}") for i in ids]
    decisions = [run["end"].task["champion_decision"].data for run in runs]
    assert [d["promote"] for d in decisions] == [True, False, True]
    assert decisions[1]["champion_run"] == runs[0].pathspec
    assert math.isclose(decisions[1]["delta"], -0.1)
    assert decisions[2]["reason"] == "ndcg@10 within tolerance: -0.002"
    assert [CHAMPION_TAG in r.user_tags for r in runs] == [True, False, True]
    assert REJECTED_TAG in runs[1].user_tags
    assert current_champion("GatedFlow").id == ids[2]
    revoke(runs[2])
    assert current_champion("GatedFlow").id == ids[0]
    assert champion.resolve_run("champion", "GatedFlow").id == ids[0]
