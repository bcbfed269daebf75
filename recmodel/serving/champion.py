"""Champion gating: a retrain replaces the serving model only when it is not worse.

The champion of a flow is its newest successful run tagged ``champion`` among the runs that
carry the given tags (e.g. ``project_branch:prod``). A finished candidate is compared with it on
one metric of the production model and tagged ``champion`` or ``rejected``. Tags are history:
an earlier champion keeps its tag, and a rollback is :func:`revoke` on the bad champion, which
makes the one before it current again.

Metrics are comparable only under the same test protocol. :func:`protocol_key` holds what
changes the meaning of a metric: split kind, seen-item filtering, the listen+ threshold, the
gap, the test-user cap and the lengths of the finetune, validation and test windows. Window
*bounds* are left out by default: a scheduled retrain slides them forward with the data, and
its test week is then compared with the champion's test week (the tolerance absorbs the
week-to-week noise). ``strict=True`` also requires the same bounds and test users, for
experiments on one fixed snapshot. When the keys differ the candidate is promoted (there is no
comparable champion) and the reason says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

PRODUCTION_MODEL = "sasrec_two_stage"  # the model a promoted run serves
DEFAULT_METRIC = "ndcg@10"
DEFAULT_TOLERANCE = 0.005  # absolute: a drop of at most this much still promotes
CHAMPION_TAG = "champion"
REJECTED_TAG = "rejected"
PROTOCOL_FIELDS = ("split", "filter_seen", "listen_threshold_pct", "gap_minutes", "max_test_users")
LENGTH_WINDOWS = ("finetune", "val", "test")  # pretrain grows with the log: not part of the key
STRICT_FIELDS = ("n_test_users", "n_targets")
PROTOCOL_CHANGED = "protocol changed"


@dataclass(frozen=True)
class Decision:
    """Whether a candidate replaces the champion, and why.

    Attributes:
        promote: tag the candidate ``champion``.
        reason: one line for people (logs, the run's tags, the card).
        delta: candidate minus champion on ``metric``; None without a comparable champion.
        metric: the metric compared.
        candidate, champion: the two values (None where absent).
        champion_run: pathspec of the champion compared with, if any.
    """

    promote: bool
    reason: str
    delta: float | None
    metric: str = DEFAULT_METRIC
    candidate: float | None = None
    champion: float | None = None
    champion_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _value(metrics: dict | None, metric: str) -> float | None:
    """The metric as a float, or None when it is missing or not a finite number."""
    value = (metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def decide(
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    *,
    metric: str = DEFAULT_METRIC,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Decision:
    """Promote unless the candidate is worse than the champion by more than ``tolerance``.

    A candidate without a finite ``metric`` is never promoted; a champion without one (or no
    champion) is replaced by any candidate that has it.

    Raises:
        ValueError: ``tolerance`` is negative or not finite.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    cand, champ = _value(candidate_metrics, metric), _value(champion_metrics, metric)
    if cand is None:
        return Decision(False, f"candidate has no finite {metric}", None, metric, None, champ)
    if champion_metrics is None:
        return Decision(True, "no champion yet", None, metric, cand, None)
    if champ is None:
        return Decision(True, f"champion has no finite {metric}", None, metric, cand, None)
    delta = cand - champ
    if delta < -tolerance:
        reason = f"{metric} regressed by {-delta:.4g} (> tolerance {tolerance:g})"
        return Decision(False, reason, delta, metric, cand, champ)
    verdict = "improved by" if delta > 0 else "within tolerance:"
    return Decision(True, f"{metric} {verdict} {delta:+.4g}", delta, metric, cand, champ)


def _minutes(bounds: Sequence[str | None]) -> int | None:
    start, end = bounds
    if start is None or end is None:
        return None
    span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(span.total_seconds() / 60)


def protocol_key(report: dict[str, Any], *, strict: bool = False) -> tuple:
    """What must match for two reports' metrics to be compared (a hashable tuple).

    Args:
        report: the ``report`` artifact (its ``protocol`` dict).
        strict: also require the same window bounds and the same number of test users and
            targets (the same test set), not only the same window lengths.
    """
    protocol = report.get("protocol", {})
    key: list[tuple[str, Any]] = [(name, protocol.get(name)) for name in PROTOCOL_FIELDS]
    windows = protocol.get("windows") or {}
    key += [
        (f"{name}_minutes", _minutes(windows[name])) for name in LENGTH_WINDOWS if name in windows
    ]
    if strict:
        key += [(f"{name}_bounds", tuple(windows[name])) for name in sorted(windows)]
        key += [(name, protocol.get(name)) for name in STRICT_FIELDS]
    return tuple(key)


def decide_reports(
    candidate_report: dict[str, Any],
    champion_report: dict[str, Any] | None,
    *,
    model: str = PRODUCTION_MODEL,
    metric: str = DEFAULT_METRIC,
    tolerance: float = DEFAULT_TOLERANCE,
    strict: bool = False,
) -> Decision:
    """:func:`decide` on ``model``'s metrics of two ``report`` artifacts, if comparable."""
    candidate = candidate_report.get("metrics", {}).get(model, {})
    if champion_report is None:
        return decide(candidate, None, metric=metric, tolerance=tolerance)
    changed = _changed(
        protocol_key(champion_report, strict=strict), protocol_key(candidate_report, strict=strict)
    )
    if changed:
        decision = decide(candidate, None, metric=metric, tolerance=tolerance)
        reason = f"{PROTOCOL_CHANGED} ({', '.join(changed)}): no comparable champion"
        return dataclasses.replace(decision, reason=reason) if decision.promote else decision
    champion = champion_report.get("metrics", {}).get(model, {})
    return decide(candidate, champion, metric=metric, tolerance=tolerance)


def _changed(old: tuple, new: tuple) -> list[str]:
    """Names of the protocol fields whose values differ between two keys."""
    before, after = dict(old), dict(new)
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def resolve_run(spec: str, flow_name: str) -> Any:
    """A ``metaflow.Run`` from ``latest`` (latest successful), ``champion``, an id or a pathspec.

    Raises:
        LookupError: ``latest`` or ``champion`` finds no run.
        metaflow.exception.MetaflowNotFound: no run has that id in the current namespace.
    """
    from metaflow import Flow, Run

    if spec == "latest":
        run = Flow(flow_name).latest_successful_run
        if run is None:
            raise LookupError(f"{flow_name} has no successful run")
        return run
    if spec == CHAMPION_TAG:
        run = current_champion(flow_name)
        if run is None:
            raise LookupError(f"{flow_name} has no champion run")
        return run
    return Run(spec if "/" in spec else f"{flow_name}/{spec}")


def current_champion(flow_name: str, tags: Sequence[str] = ()) -> Any:
    """The newest successful run tagged ``champion`` (and every tag of ``tags``), or None.

    Runs are looked up in the current Metaflow namespace (``metaflow.namespace``).
    """
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        runs = list(Flow(flow_name).runs(CHAMPION_TAG, *tags))
    except MetaflowNotFound:
        return None
    for run in sorted(runs, key=lambda r: r.created_at, reverse=True):
        if run.successful:
            return run
    return None


def apply(run: Any, decision: Decision) -> None:
    """Tag ``run`` (a ``metaflow.Run``) ``champion`` or ``rejected`` as ``decision`` says."""
    tag = CHAMPION_TAG if decision.promote else REJECTED_TAG
    run.add_tag(tag)
    log.info("%s tagged %s: %s", run.pathspec, tag, decision.reason)


def revoke(run: Any) -> None:
    """Roll back: ``run`` stops being a champion; the previous champion is current again."""
    run.remove_tag(CHAMPION_TAG)
    run.add_tag(REJECTED_TAG)
    log.info("%s is no longer a champion", run.pathspec)


def branch_tags() -> list[str]:
    """``project:``/``project_branch:`` tags of the running flow under ``@project``, else []."""
    from metaflow import current

    project, branch = getattr(current, "project_name", None), getattr(current, "branch_name", None)
    return [f"project:{project}", f"project_branch:{branch}"] if project and branch else []


def gate(
    report: dict[str, Any],
    flow_name: str,
    run_id: str,
    *,
    tags: Sequence[str] = (),
    **options: Any,
) -> Decision:
    """Compare a finished run's ``report`` with the champion's, tag the run, return why.

    Args:
        report: the candidate run's ``report`` artifact.
        flow_name, run_id: the candidate run (usually ``current.flow_name``, ``current.run_id``).
        tags: restrict champions to runs with these tags (see :func:`branch_tags`).
        options: ``model``, ``metric``, ``tolerance``, ``strict`` of :func:`decide_reports`.
    """
    from metaflow import Run

    from recmodel.core.tables import load_artifact

    champion = current_champion(flow_name, tags)
    champion_report = None if champion is None else load_artifact("report", champion)
    decision = decide_reports(report, champion_report, **options)
    if champion is not None:
        decision = dataclasses.replace(decision, champion_run=champion.pathspec)
    apply(Run(f"{flow_name}/{run_id}"), decision)
    return decision
