"""Repeat and new targets: every model's metrics on each kind, and the references' tests.

In music most test listens are re-listens. A target is a *repeat* when the user played the
track before the test window and *new* otherwise; a model that only replays favourites wins on
the first kind and fails on the second. Each kind is judged on the users that have at least
one target of that kind, against those targets only.
"""

from __future__ import annotations

from typing import Any

from recmodel.core.config import EvalConfig
from recmodel.report.data import TARGET_KINDS, ModelEval, compare, intervals

REFERENCES = ("two_stage_ranked", "sasrec_two_stage")  # the system as served, the retriever
KIND_METRICS = ("ndcg@10", "recall@100")


def by_target_kind(evals: dict[str, ModelEval], cfg: EvalConfig) -> dict[str, Any]:
    """Per kind of target (repeat, new): users, each model's means and 95% intervals, and the
    paired tests of the references against every other model."""
    out: dict[str, Any] = {}
    for kind in TARGET_KINDS:
        kind_evals = {m: e.by_kind[kind] for m, e in evals.items() if kind in e.by_kind}
        if not kind_evals or not next(iter(kind_evals.values())).summary.get("n_users"):
            continue  # no user has a target of this kind
        metrics = [m for m in next(iter(kind_evals.values())).per_user if m in KIND_METRICS]
        out[kind] = {
            "n_users": int(next(iter(kind_evals.values())).summary.get("n_users", 0)),
            "metrics": {m: {k: e.summary[k] for k in metrics} for m, e in kind_evals.items()},
            "intervals": {m: intervals(e, metrics, cfg) for m, e in kind_evals.items()},
            "comparisons_by_reference": {
                r: {
                    m: compare(kind_evals[r], e, metrics, cfg)
                    for m, e in kind_evals.items()
                    if m != r
                }
                for r in REFERENCES
                if r in kind_evals
            },
        }
    return out


def kinds_markdown(data: dict[str, Any]) -> str:
    """A table of NDCG@10 and Recall@100 on repeat and new targets (empty without kinds)."""
    kinds = data.get("by_target_kind") or {}
    if not kinds:
        return ""
    header = ["model"] + [f"{m} {k}" for k in kinds for m in KIND_METRICS]
    models = [m for m in data["models"] if all(m in kinds[k]["metrics"] for k in kinds)]
    rows = []
    for model in models:
        cells = [model]
        for kind in kinds:
            values = kinds[kind]["metrics"][model]
            cells += [f"{values[m]:.4f}" if m in values else "" for m in KIND_METRICS]
        rows.append(cells)
    users = ", ".join(f"{kinds[k]['n_users']:,} users with {k} targets" for k in kinds)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "## Repeat and new targets\n\n" + f"{users}.\n\n" + "\n".join(lines)
