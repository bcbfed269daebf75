"""Champion runs and their tags: lookup, promotion, rejection, rollback, by hand."""

import os
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import metaflow
import pytest

from recmodel.serving import champion
from recmodel.serving.champion import (
    BY_HAND_TAG,
    CHAMPION_TAG,
    REJECTED_TAG,
    apply,
    current_champion,
    promote_by_hand,
    resolve_run,
    revoke,
)
from recmodel.serving.decision import Decision, rule_text

ROOT = Path(__file__).resolve().parents[2]


def decision(promote: bool, eligible: bool = True) -> Decision:
    return Decision(
        promote, "why", rule_text("ndcg@10", 0.005), "ndcg@10", 0.005, eligible=eligible
    )


class FakeRun:
    def __init__(self, number, tags=(), successful=True):
        self.pathspec, self.id = f"F/{number}", str(number)
        self.created_at = datetime(2024, 1, 1) + timedelta(hours=number)
        self.tags, self.successful = set(tags), successful

    def __getitem__(self, step):
        """Its ``start`` step, whose task was created with the run."""
        if step != "start":
            raise KeyError(step)
        return SimpleNamespace(task=SimpleNamespace(created_at=self.created_at))

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
    apply(fake_flows[4], decision(True))
    assert CHAMPION_TAG in fake_flows[4].tags and current_champion("F").pathspec == "F/5"
    revoke(fake_flows[4])
    assert fake_flows[4].tags == {REJECTED_TAG} and current_champion("F").pathspec == "F/3"
    apply(fake_flows[1], decision(False))
    assert fake_flows[1].tags == {REJECTED_TAG}


def test_a_run_that_is_not_eligible_gets_no_tag(fake_flows):
    apply(fake_flows[4], decision(False, eligible=False))
    assert fake_flows[4].tags == set()


def test_promote_by_hand_makes_a_rejected_run_its_branchs_champion(fake_flows):
    fake_flows[1].tags.add("project_branch:prod")  # F/2, rejected, newer than prod's F/1
    promote_by_hand(fake_flows[1], "F")
    assert fake_flows[1].tags == {CHAMPION_TAG, BY_HAND_TAG, "project_branch:prod"}
    assert current_champion("F", ["project_branch:prod"]).pathspec == "F/2"


def test_promote_by_hand_refuses_an_older_run_and_a_failed_one(fake_flows):
    with pytest.raises(ValueError, match="F/3 is a newer champion; revoke it first"):
        promote_by_hand(fake_flows[1], "F")  # F/2 is older than F/3 (no branch tags)
    with pytest.raises(ValueError, match="F/4 did not succeed"):
        promote_by_hand(fake_flows[3], "F")
    assert fake_flows[1].tags == {REJECTED_TAG}


GATED_FLOW = textwrap.dedent("""
    from metaflow import FlowSpec, Parameter, Run, current, step

    from recmodel.serving import champion
    from recmodel.serving.decision import Decision, decide, rule_text


    class GatedFlow(FlowSpec):
        lo = Parameter("lo", type=float, default=0.0)  # lower end of the paired interval
        eligible = Parameter("eligible", type=bool, default=True)

        @step
        def start(self):
            self.next(self.end)

        @step
        def end(self):
            test = {"diff": self.lo + 0.01, "lo": self.lo, "hi": self.lo + 0.02}
            promote, reason = decide(test, "ndcg@10", 0.005)
            decision = Decision(promote, reason, rule_text("ndcg@10", 0.005), "ndcg@10", 0.005,
                                eligible=self.eligible)
            champion.apply(Run(f"{current.flow_name}/{current.run_id}"), decision)
            self.champion_decision = decision.to_dict()


    if __name__ == "__main__":
        GatedFlow()
""")


@pytest.mark.slow
@pytest.mark.flow
def test_tags_of_real_runs(tmp_path):
    """Four retrains through metaflow.Runner: promoted, rejected, not eligible, promoted; then
    a rollback and a promotion by hand."""
    from metaflow import Run, Runner

    flow = tmp_path / "gated_flow.py"
    flow.write_text(GATED_FLOW)
    env = {
        k: os.environ[k]
        for k in ("METAFLOW_USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")
    }
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, whatever is installed
    ids = []
    # intervals [lo, lo + 0.02]: [-0.04, -0.02] is worse by more than the margin
    for lo, eligible in ((0.0, True), (-0.04, True), (0.03, False), (-0.004, True)):
        options = {"lo": lo, "eligible": eligible}
        with Runner(str(flow), show_output=False, env=env).run(**options) as result:
            assert result.status == "successful", result.stderr
            ids.append(result.run.id)
    runs = [Run(f"GatedFlow/{i}") for i in ids]
    decisions = [run["end"].task["champion_decision"].data for run in runs]
    assert [d["promote"] for d in decisions] == [True, False, True, True]
    assert [CHAMPION_TAG in r.user_tags for r in runs] == [True, False, False, True]
    assert REJECTED_TAG in runs[1].user_tags and REJECTED_TAG not in runs[2].user_tags
    assert current_champion("GatedFlow").id == ids[3]
    revoke(runs[3])
    assert current_champion("GatedFlow").id == ids[0]
    assert champion.resolve_run("champion", "GatedFlow").id == ids[0]
    promote_by_hand(Run(f"GatedFlow/{ids[1]}"), "GatedFlow")
    assert current_champion("GatedFlow").id == ids[1]
    assert BY_HAND_TAG in Run(f"GatedFlow/{ids[1]}").user_tags
    # Tag changes must not reorder runs (a local metadata store rewrites a run's created_at).
    revoke(Run(f"GatedFlow/{ids[1]}"))
    promote_by_hand(Run(f"GatedFlow/{ids[0]}"), "GatedFlow")  # tags the older run again
    promote_by_hand(Run(f"GatedFlow/{ids[1]}"), "GatedFlow")  # still the newer one
    assert current_champion("GatedFlow").id == ids[1]
