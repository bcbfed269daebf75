"""The gate on generated logs: a drift week, an easy week and a retrain on the same data.

One synthetic log (the tiny preset's generator) and two variants of it in which only the test
window changes: a **drift week**, where half of the test window's plays go to random tracks (a
logging change: every model scores lower), and an **easy week**, where a fifth of them replay
the listener's last track before the window (models that follow the listener score higher). The
windows before the test are the same, so are the models trained on them; only the week they are
judged on moves, which is what makes week-to-week comparisons of a metric wrong.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.presets import load_preset
from recmodel.core.tables import read_table
from recmodel.serving.decision import Champion, Decision, judge
from recmodel.steps.common import config_of
from recmodel.steps.publish import candidate_week
from recmodel.synthetic.generator import generate
from tests.helpers.pipeline import run_steps

pytestmark = pytest.mark.slow

MODEL, METRIC = "sasrec_two_stage", "ndcg@10"
WEAK = {"train": {"epochs": 1}, "finetune": {"epochs": 0}}  # half the pretraining, no finetune
# One epoch at a twentieth of the learning rate and no finetune: a model that barely learned.
UNTRAINED = {"train": {"epochs": 1, "lr": 1e-4, "sparse_lr": 1e-3}, "finetune": {"epochs": 0}}
DRIFT_SHARE, EASY_SHARE = 0.5, 0.2


class Runs:
    """Generated logs and the in-process runs on them, each made once for the module."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = generate(load_preset("tiny").synthetic, root / "raw")
        self.events = pq.read_table(self.paths.events)
        self.logs = {"usual": Path(self.paths.events)}
        self.done: dict[tuple[str, str, int], dict] = {}

    def run(self, log: str, config: str = "tiny", copy: int = 0) -> dict:
        """The run of ``config`` on ``log``; ``copy`` > 0 trains the same run again."""
        key = (log, config, copy)
        if key not in self.done:
            if log not in self.logs:
                self.logs[log] = self._variant(log)
            overrides = {"tiny": {}, "weak": WEAK, "untrained": UNTRAINED}[config]
            self.done[key] = run_steps(
                self.root / f"{log}-{config}-{len(self.done)}",
                "tiny",
                overrides=overrides,
                events=str(self.logs[log]),
                items=str(self.paths.items),
            )
        return self.done[key]

    def _variant(self, log: str) -> Path:
        """The usual log with its test window's plays moved (``drift`` or ``easy``)."""
        assert log in ("drift", "easy"), log
        start = self.run("usual")["report"]["protocol"]["windows"]["test"][0]
        t_test = int(datetime.fromisoformat(start).timestamp())
        ts = self.events.column("timestamp").to_numpy()
        users = self.events.column("user_id").to_numpy()
        items = self.events.column("item_id").to_numpy().copy()
        rng = np.random.default_rng(1)
        share = DRIFT_SHARE if log == "drift" else EASY_SHARE
        moved = (ts >= t_test) & (rng.random(len(items)) < share)
        if log == "drift":
            catalog = pq.read_table(self.paths.items).column("item_id").to_numpy()
            items[moved] = rng.choice(catalog, int(moved.sum()))
        else:
            last = last_track_before(users, ts, items, t_test)
            known = moved & np.isin(users, list(last))
            items[known] = [last[u] for u in users[known]]
        column = self.events.column_names.index("item_id")
        path = self.root / f"{log}.parquet"
        pq.write_table(self.events.set_column(column, "item_id", pa.array(items)), path)
        return path


def last_track_before(users, ts, items, t_test) -> dict[int, int]:
    """Each listener's last track before ``t_test``."""
    order = np.lexsort((ts, users))
    order = order[ts[order] < t_test]
    return {int(u): int(i) for u, i in zip(users[order], items[order], strict=True)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("weeks"))


def artifacts_of(run: dict, **replaced) -> Champion:
    stored = {name: run[name] for name in ("serving", "finetune_checkpoint", "tables", "report")}
    return Champion("TwoStageFlow/champion", {**stored, **replaced}.__getitem__)


def gate(candidate: dict, champion: Champion) -> Decision:
    """The ``end`` step's judgement of ``candidate`` against ``champion``, without Metaflow."""
    return judge(
        candidate_week(candidate["config"], candidate["tables"]),
        read_table(candidate["recommendations"]),
        candidate["report"]["protocol"],
        champion,
        config_of(candidate["config"]).eval,
    )


def own_week(run: dict, model: str = MODEL) -> float:
    return run["report"]["metrics"][model][METRIC]


def test_a_better_candidate_is_promoted_after_a_drift_week(runs):
    champion, candidate = runs.run("usual", "weak"), runs.run("drift")
    usual = runs.run("usual")["report"]["metrics"]
    drift = candidate["report"]["metrics"]
    assert all(drift[m][METRIC] < usual[m][METRIC] for m in usual)  # every model scores lower
    # The old comparison of two weeks: the candidate looks worse than the champion's figure.
    assert own_week(candidate) < own_week(champion) - 0.005
    decision = gate(candidate, artifacts_of(champion))
    assert decision.compared and decision.promote, decision.reason
    assert decision.interval[0] > 0  # better on the same listeners, significantly
    assert decision.candidate[METRIC] == pytest.approx(own_week(candidate), abs=1e-12)
    assert decision.champion_own_week == own_week(champion)


def test_a_worse_candidate_is_rejected_after_an_easy_week(runs):
    champion, candidate = runs.run("usual"), runs.run("easy", "untrained")
    # The old comparison of two weeks: the candidate looks much better than the champion.
    assert own_week(candidate) > own_week(champion) + 0.005
    decision = gate(candidate, artifacts_of(champion))
    assert decision.compared and not decision.promote, decision.reason
    assert decision.interval[1] < -decision.margin  # worse by more than the margin, significantly
    assert decision.champion[METRIC] > own_week(champion)  # the easy week lifts the champion too


def test_a_retrain_on_the_same_data_with_the_same_seed_ties_and_is_promoted(runs):
    champion, candidate = runs.run("usual"), runs.run("usual", copy=1)
    decision = gate(candidate, artifacts_of(champion))
    assert decision.promote and decision.compared and decision.reason.endswith("promoted")
    assert (decision.delta, decision.interval) == (0.0, [0.0, 0.0])
    assert decision.candidate == decision.champion
    assert decision.reach["unknown_tracks"] == 0 and decision.reach["fallback_users"] == 0


def test_the_champion_on_another_week_scores_as_its_model_trained_there(runs):
    """The slow reference: the same training windows give the same model, so the champion's
    export scored on the drift week must equal the report of a run trained on the drift log."""
    decision = gate(runs.run("drift"), artifacts_of(runs.run("usual", "weak")))
    reference = runs.run("drift", "weak")["report"]["metrics"][MODEL]
    for metric, value in decision.champion.items():
        assert value == pytest.approx(reference[metric], abs=1e-12), metric


def test_without_its_export_the_champion_is_scored_from_its_checkpoint(runs):
    champion, candidate = runs.run("usual"), runs.run("usual", copy=1)
    gone = {"files": {"manifest.json": str(runs.root / "deleted" / "manifest.json")}}
    decision = gate(candidate, artifacts_of(champion, serving=gone))
    assert decision.reach["champion_source"] == "finetune_checkpoint"
    assert decision.promote and decision.candidate == decision.champion
