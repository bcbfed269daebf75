"""The gate's rule and its judgement of one candidate, on the candidate's own test week.

Two test weeks do not give comparable metrics: seasonality, a holiday, a release or a logging
change moves every model's. So the champion's served retriever is scored on the candidate
run's own test users and targets (:mod:`recmodel.serving.gate`), both models' per-user metrics
come from the report's code (:mod:`recmodel.report.data`), and the paired bootstrap of
candidate − champion on ``eval.gate_metric`` (the report's samples, seed and 95% level)
decides:

    reject when the upper end of the interval is below ``-eval.gate_margin``; promote otherwise

that is, the candidate replaces the champion unless the data show it to be worse by more than
the margin: a retrain is fresher (it knows this week's tracks), so the doubt goes to it. A tie
(the same model) promotes: its interval is ``[0, 0]``.

**Without a comparison.** The first run of a branch is promoted ("no champion yet"). A champion
that cannot be scored is not compared with, and the candidate is promoted with the reason in
the decision: its files are deleted or unreadable, its model or track ids do not fit this code
or this catalog, or its test protocol differs (a split other than temporal on either run, or a
champion that trained on events of the candidate's test window).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recmodel.core.columns import Columns
from recmodel.core.config import EvalConfig
from recmodel.report.data import ALPHA, compare, evaluate_model, prepare_inputs
from recmodel.report.text import ranking_metrics
from recmodel.serving.gate import CHAMPION_MODEL, CandidateWeek, champion_recommendations
from recmodel.serving.served import ModelUnavailable, load_served

log = logging.getLogger(__name__)

PRODUCTION_MODEL = "sasrec_two_stage"  # the model a promoted run serves
NO_CHAMPION = "no champion yet"


@dataclass(frozen=True)
class Decision:
    """Whether a candidate replaces the champion, and why (``to_dict``: the artifact).

    Attributes:
        promote: tag the candidate ``champion`` (never when it is not ``eligible``).
        reason: one line for people (logs, the card).
        rule: the rule, with the metric and the margin.
        metric, margin: ``eval.gate_metric`` and ``eval.gate_margin``.
        candidate_run, champion_run: pathspecs of the runs compared (None where absent).
        compared: both models were scored on the same users.
        eligible: the run may become champion (``eval.champion_eligible``).
        delta: mean per-user candidate − champion on ``metric``.
        interval: ``[lo, hi]`` paired bootstrap interval of ``delta``.
        p_value: two-sided paired bootstrap p-value.
        candidate, champion: each model's metrics on the same users.
        champion_own_week: the champion's ``metric`` on its own test week, for reference only.
        reach: test users and targets, and what the champion could not reach or embed.
    """

    promote: bool
    reason: str
    rule: str
    metric: str
    margin: float
    candidate_run: str | None = None
    champion_run: str | None = None
    compared: bool = False
    eligible: bool = True
    delta: float | None = None
    interval: list[float] | None = None
    p_value: float | None = None
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)
    champion_own_week: float | None = None
    reach: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Champion:
    """The run a candidate is compared with: its pathspec and a loader of its artifacts."""

    pathspec: str
    artifact: Callable[[str], Any]


def rule_text(metric: str, margin: float) -> str:
    """The rule in one line, as the decision and the card state it."""
    level = round(100 * (1 - ALPHA))
    return (
        f"reject when the upper end of the {level}% paired bootstrap interval of "
        f"candidate - champion on {metric}, over the candidate's test users, is below "
        f"-{margin:g} (significantly worse by more than the margin); promote otherwise"
    )


def decide(test: dict[str, float], metric: str, margin: float) -> tuple[bool, str]:
    """The rule on a paired test ``{"diff", "lo", "hi"}`` of candidate − champion.

    Raises:
        ValueError: ``margin`` is negative or not finite.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    promote = test["hi"] >= -margin
    verdict = f">= -{margin:g}: promoted" if promote else f"< -{margin:g}: rejected"
    return promote, (
        f"{metric} candidate - champion {test['diff']:+.4f}, interval "
        f"[{test['lo']:+.4f}, {test['hi']:+.4f}]; upper end {verdict}"
    )


def score_week(
    week: CandidateWeek,
    candidate_recs: pa.Table,
    served: Any,
    cfg: EvalConfig,
    model: str = PRODUCTION_MODEL,
) -> dict[str, Any]:
    """Both models on the candidate's test users: metrics, the paired test and the reach.

    Args:
        week: the candidate's test users, queries and targets.
        candidate_recs: the candidate's long recommendations table (rows of ``model`` used).
        served: the champion's :class:`recmodel.serving.served.ServedModel`.
        cfg: cut-offs, bootstrap settings and the gate metric.
        model: the candidate's gated model.
    """
    inputs = prepare_inputs(week.targets, week.items)
    ks = tuple(sorted(cfg.ks))
    shown = ranking_metrics(ks)
    candidate = evaluate_model(candidate_recs, model, inputs, ks)
    table, reach = champion_recommendations(served, week, max(ks))
    champion = evaluate_model(table, CHAMPION_MODEL, inputs, ks)
    test = compare(candidate, champion, [cfg.gate_metric], cfg)[cfg.gate_metric]
    return {
        "test": test,
        "candidate": {m: candidate.summary[m] for m in shown},
        "champion": {m: champion.summary[m] for m in shown},
        "reach": {
            "n_users": inputs.n_users,
            "n_targets": inputs.n_targets,
            **reach,
            "champion_source": served.source,
        },
    }


def protocol_mismatch(candidate: dict[str, Any], champion: dict[str, Any]) -> str | None:
    """Why the champion cannot be judged on the candidate's test week, or None.

    Both runs must split by time, and the champion's training (everything before its own test
    window) must end no later than the candidate's test window starts: otherwise it may have
    been trained on the very events it would be judged on.
    """
    splits = (candidate.get("split"), champion.get("split"))
    if splits != ("temporal", "temporal"):
        return (
            f"different protocol (split {splits[1]} -> {splits[0]}): the gate needs a temporal "
            "test window on both runs"
        )
    test_start = (candidate.get("windows") or {}).get("test", [None])[0]
    trained_until = (champion.get("windows") or {}).get("test", [None])[0]
    if test_start is None or trained_until is None:
        return "different protocol: a run's report has no test window"
    if datetime.fromisoformat(trained_until) > datetime.fromisoformat(test_start):
        return (
            f"different protocol: the champion trained on events up to {trained_until}, "
            f"inside this run's test window (from {test_start})"
        )
    return None


def judge(
    week: CandidateWeek,
    candidate_recs: pa.Table,
    protocol: dict[str, Any],
    champion: Champion | None,
    cfg: EvalConfig,
    model: str = PRODUCTION_MODEL,
) -> Decision:
    """The decision for one candidate against ``champion`` (None: there is none yet).

    Args:
        week, candidate_recs, cfg, model: see :func:`score_week`.
        protocol: the candidate's ``report["protocol"]``.
        champion: the current champion.
    """
    metric, margin = cfg.gate_metric, cfg.gate_margin
    base = Decision(False, "", rule_text(metric, margin), metric, margin)
    rows = candidate_recs.filter(pc.equal(candidate_recs.column(Columns.MODEL), model))
    if rows.num_rows == 0:
        return dataclasses.replace(base, reason=f"candidate has no {model} recommendations")
    if champion is None:
        return dataclasses.replace(base, promote=True, reason=f"{NO_CHAMPION}: promoted")
    base = dataclasses.replace(base, champion_run=champion.pathspec)
    try:
        own = _own_report(champion)
        why = protocol_mismatch(protocol, own.get("protocol", {}))
        if why is not None:
            raise ModelUnavailable(why)
        numbers = score_week(week, rows, load_served(champion.artifact), cfg, model)
    except ModelUnavailable as exc:
        log.warning("champion %s cannot be scored: %s", champion.pathspec, exc)
        reason = f"champion cannot be scored ({exc}): promoted without a comparison"
        return dataclasses.replace(base, promote=True, reason=reason)
    promote, reason = decide(numbers["test"], metric, margin)
    test = numbers["test"]
    return dataclasses.replace(
        base,
        promote=promote,
        reason=reason,
        compared=True,
        delta=test["diff"],
        interval=[test["lo"], test["hi"]],
        p_value=test["p_value"],
        candidate=numbers["candidate"],
        champion=numbers["champion"],
        champion_own_week=own.get("metrics", {}).get(model, {}).get(metric),
        reach=numbers["reach"],
    )


def _own_report(champion: Champion) -> dict[str, Any]:
    """The champion's ``report`` artifact (its protocol and its own week's metrics)."""
    try:
        return champion.artifact("report")
    except Exception as exc:  # a deleted run or datastore: said in the decision, not hidden
        raise ModelUnavailable(f"its report cannot be read: {type(exc).__name__}: {exc}") from exc


def not_eligible(decision: Decision, preset: str) -> Decision:
    """``decision`` for a run that may never become champion (``eval.champion_eligible``)."""
    reason = (
        f"not eligible: preset {preset!r} never becomes champion (eval.champion_eligible = "
        f"false); the gate alone: {decision.reason}"
    )
    return dataclasses.replace(decision, promote=False, eligible=False, reason=reason)
