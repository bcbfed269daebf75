"""Champion gating: which run serves, and the tags that say so.

The champion of a flow is its newest successful run tagged ``champion`` among the runs that
carry the given tags (e.g. ``project_branch:prod``). :func:`gate` judges a finished run against
it on the run's own test users (the rule: :mod:`recmodel.serving.decision`) and tags the run
``champion`` or ``rejected``. Tags are history: an earlier champion keeps its tag, and a
rollback is :func:`revoke` on the bad champion, which makes the one before it current again;
:func:`promote_by_hand` is the other manual path (both: ``python -m recmodel champion``).

A run with ``eval.champion_eligible = false`` (the ``tiny`` preset, a smoke test) is judged and
reported like any other but never tagged; its decision says why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from recmodel.core.config import EvalConfig
from recmodel.serving.decision import Champion, Decision, judge, not_eligible
from recmodel.serving.gate import CandidateWeek

log = logging.getLogger(__name__)

CHAMPION_TAG = "champion"
REJECTED_TAG = "rejected"
BY_HAND_TAG = "promoted_by_hand"  # with ``champion``: a person promoted the run


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


def started_at(run: Any) -> datetime:
    """When ``run`` started: the creation of its ``start`` task.

    Not ``run.created_at``: a local metadata store rewrites that time whenever the run's tags
    change, so a rollback or a promotion by hand would reorder the champions.
    """
    try:
        return run["start"].task.created_at
    except KeyError:  # no start step recorded
        return run.created_at


def current_champion(flow_name: str, tags: Sequence[str] = ()) -> Any:
    """The latest started successful run tagged ``champion`` (and every tag of ``tags``), or None.

    Runs are looked up in the current Metaflow namespace (``metaflow.namespace``).
    """
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        runs = list(Flow(flow_name).runs(CHAMPION_TAG, *tags))
    except MetaflowNotFound:
        return None
    for run in sorted(runs, key=started_at, reverse=True):
        if run.successful:
            return run
    return None


def apply(run: Any, decision: Decision) -> None:
    """Tag ``run`` (a ``metaflow.Run``) ``champion`` or ``rejected``; nothing if not eligible."""
    if not decision.eligible:
        log.info("%s is not tagged: %s", run.pathspec, decision.reason)
        return
    tag = CHAMPION_TAG if decision.promote else REJECTED_TAG
    run.add_tag(tag)
    log.info("%s tagged %s: %s", run.pathspec, tag, decision.reason)


def revoke(run: Any) -> None:
    """Roll back: ``run`` stops being a champion; the previous champion is current again."""
    run.remove_tag(CHAMPION_TAG)
    run.add_tag(REJECTED_TAG)
    log.info("%s is no longer a champion", run.pathspec)


def promote_by_hand(run: Any, flow_name: str) -> None:
    """Make ``run`` its branch's current champion whatever its gate said.

    The run is tagged ``champion`` and ``promoted_by_hand`` (and loses ``rejected``).

    Raises:
        ValueError: the run did not succeed, or a newer run of its branch is champion (the
            newest champion is the current one: revoke that one first).
    """
    if not run.successful:
        raise ValueError(f"{run.pathspec} did not succeed: it cannot become champion")
    branch = [tag for tag in run.tags if tag.startswith(("project:", "project_branch:"))]
    current = current_champion(flow_name, branch)
    if current is not None and started_at(current) > started_at(run):
        raise ValueError(
            f"{current.pathspec} is a newer champion; revoke it first "
            f"(python -m recmodel champion --revoke {current.id})"
        )
    run.remove_tag(REJECTED_TAG)
    run.add_tag(CHAMPION_TAG)
    run.add_tag(BY_HAND_TAG)
    log.info("%s promoted by hand", run.pathspec)


def branch_tags() -> list[str]:
    """``project:``/``project_branch:`` tags of the running flow under ``@project``, else []."""
    from metaflow import current

    project, branch = getattr(current, "project_name", None), getattr(current, "branch_name", None)
    return [f"project:{project}", f"project_branch:{branch}"] if project and branch else []


def gate(
    week: CandidateWeek,
    candidate_recs: pa.Table,
    protocol: dict[str, Any],
    flow_name: str,
    run_id: str,
    cfg: EvalConfig,
    *,
    tags: Sequence[str] = (),
    preset: str = "",
) -> Decision:
    """Judge a finished run against the current champion, tag it, and return the decision.

    Args:
        week, candidate_recs, protocol, cfg: see :func:`judge`.
        flow_name, run_id: the candidate run (usually ``current.flow_name``, ``current.run_id``).
        tags: restrict champions to runs with these tags (see :func:`branch_tags`).
        preset: the run's preset name, for the reason of a run that is not eligible.
    """
    from metaflow import Run

    from recmodel.core.tables import load_artifact

    run = current_champion(flow_name, tags)
    champion = None
    if run is not None:
        champion = Champion(
            run.pathspec, lambda name: load_artifact(name, run, flow=flow_name, as_table=False)
        )
    decision = judge(week, candidate_recs, protocol, champion, cfg)
    decision = dataclasses.replace(decision, candidate_run=f"{flow_name}/{run_id}")
    if not cfg.champion_eligible:
        decision = not_eligible(decision, preset)
    apply(Run(f"{flow_name}/{run_id}"), decision)
    return decision
