"""Cards of the data and model steps: what a person checks in the Metaflow UI after a run.

Each function appends components to ``current.card`` of its step; with ``card=None`` (outside
Metaflow) it does nothing, so the step logic stays testable without a run.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from recmodel.ingest.summary import window_table


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def data_card(card: Any, summary: dict) -> None:
    """Counts per extraction stage and per split window, and the split times."""
    if card is None:
        return
    from metaflow.cards import Markdown, Table

    card.append(
        Markdown(
            f"# Extracted sessions\n\nSource: `{summary.get('source')}` · "
            f"{_fmt(summary.get('n_events'))} listen+ events, "
            f"{_fmt(summary.get('n_users'))} users, "
            f"{_fmt(summary.get('n_items'))} tracks, "
            f"{_fmt(summary.get('n_test_users'))} test users"
        )
    )
    rows = [
        [
            r["window"],
            r["start"] or "",
            r["end"] or "",
            *(_fmt(r[c]) for c in ("events", "users", "tracks", "requests")),
        ]
        for r in window_table(summary)
    ]
    card.append(Markdown(f"## Split windows\n\n{summary.get('split_rule', '')}".rstrip()))
    card.append(
        Table(
            rows, headers=["window", "from", "to", "listen+ events", "users", "tracks", "requests"]
        )
    )
    dropped = summary.get("dropped", {})
    card.append(Markdown("## Dropped events"))
    card.append(Table([[k, _fmt(v)] for k, v in dropped.items()], headers=["reason", "events"]))


def q_card(card: Any, summary: dict, q: np.ndarray) -> None:
    """The shape of Q: entropy, head mass and the rank-frequency curve."""
    if card is None:
        return
    from metaflow.cards import Image, Markdown, Table

    card.append(Markdown("# Q: item frequencies that negatives are drawn from"))
    card.append(
        Table(
            [[k, _fmt(v)] for k, v in summary.items() if not isinstance(v, (list, dict))],
            headers=["statistic", "value"],
        )
    )
    card.append(Image(_rank_plot(q), label="q by popularity rank (log-log)"))


def _rank_plot(q: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ranked = np.sort(q)[::-1]
    ax.loglog(np.arange(1, len(ranked) + 1), ranked)
    ax.set_xlabel("popularity rank")
    ax.set_ylabel("q")
    ax.set_title("Item frequency distribution Q")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def results_card(card: Any, title: str, results: dict) -> None:
    """One row per model: status, fit time, size and its test metrics as logged."""
    if card is None:
        return
    from metaflow.cards import Markdown, Table

    card.append(
        Markdown(
            f"# {title}\n\nTest metrics as the step of each model computed them; the report "
            "recomputes every number from the recommendations table."
        )
    )
    rows = []
    for name, entry in results.items():
        metrics = entry.get("metrics", {})
        rows.append(
            [
                name,
                entry.get("status", ""),
                _fmt(entry.get("fit_seconds")),
                _fmt(entry.get("model_size")),
                _fmt(metrics.get("ndcg@10")),
                _fmt(metrics.get("recall@100")),
                entry.get("error") or "",
            ]
        )
    card.append(
        Table(rows, headers=["model", "status", "fit s", "size", "NDCG@10", "Recall@100", "error"])
    )


def ranker_card(card: Any, quality: dict) -> None:
    """The ranker's own quality on held-out rows and its feature importances."""
    if card is None:
        return
    from metaflow.cards import Markdown, Table

    ndcg = quality.get("ndcg@10", {})
    lines = [
        f"- **source**: {quality.get('source')}",
        f"- **held-out AUC**: {_fmt(quality.get('auc'))}",
        f"- **requests / candidates**: {_fmt(quality.get('n_requests'))} / "
        f"{_fmt(quality.get('n_candidates'))}",
    ]
    if isinstance(ndcg, dict):
        lines += [f"- **NDCG@10 of candidates ordered by {k}**: {_fmt(v)}" for k, v in ndcg.items()]
    fit = quality.get("fit_rows")
    if fit:
        lines.append(
            f"- **rows the boosters were fit on**: folds {', '.join(_fmt(n) for n in fit['folds'])}, "
            f"serving {_fmt(fit['serving'])} of {_fmt(fit['candidates'])} "
            f"(`ranker.max_train_rows` = {_fmt(fit['max_train_rows'])})"
        )
    card.append(Markdown("# Ranker\n\n" + "\n".join(lines)))
    dropped = quality.get("features_dropped") or {}
    if dropped:
        card.append(Markdown("## Features left out\n\nNothing to learn from them in this data:"))
        card.append(Table([[k, v] for k, v in dropped.items()], headers=["feature", "why"]))
    importance = quality.get("importance") or {}
    rows = sorted(importance.items(), key=lambda kv: -kv[1])
    if rows:
        card.append(
            Table([[k, _fmt(v)] for k, v in rows], headers=["feature", "permutation importance"])
        )


def inputs_card(
    card: Any, config: dict, inputs: dict, checks: dict, tags: list[str], warm_start: str | None
) -> None:
    """What the run is: its data, preset, tags and every setting it runs with."""
    if card is None:
        return
    from metaflow.cards import Markdown, Table

    if inputs.get("kind") == "synthetic":
        syn = config.get("synthetic", {})
        data = (
            f"built-in synthetic listening logs (seed {syn.get('seed')}, "
            f"{_fmt(syn.get('n_users'))} users, {_fmt(syn.get('n_tracks'))} tracks, "
            f"{_fmt(syn.get('days'))} days)"
        )
    else:
        data = f"`{inputs.get('kind')}` events `{inputs.get('events')}`"
        data += f", items `{inputs['items']}`" if inputs.get("items") else ", no item table"
    lines = [
        f"- **data**: {data}",
        f"- **preset**: `{config.get('name')}`",
        f"- **tags**: {', '.join(f'`{t}`' for t in tags)}",
        f"- **warm start**: {warm_start or 'none (trained from scratch)'}",
    ]
    if inputs.get("ranker_scores"):
        lines.append(f"- **ranker scores**: `{inputs['ranker_scores']}` (a production ranker)")
    warnings = checks.get("warnings", [])
    lines.append(f"- **input warnings**: {len(warnings)}")
    card.append(Markdown("# Configuration and inputs\n\n" + "\n".join(lines)))
    if warnings:
        card.append(Table([[w] for w in warnings], headers=["warning"]))
    card.append(Markdown("## Settings\n\nThe effective configuration (preset and overrides)."))
    rows = [
        [section, " · ".join(f"{key} {_setting(value)}" for key, value in values.items())]
        for section, values in config.items()
        if isinstance(values, dict)
    ]
    card.append(Table(rows, headers=["section", "settings"]))


def _setting(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_setting(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return _fmt(value) if value != "" else '""'


def champion_card(card: Any, decision: dict, serving: dict, files: dict) -> None:
    """The champion gate (the verdict, the rule, the runs, both models on the same users), the
    serving export and where the report is."""
    if card is None:
        return
    from metaflow.cards import Markdown

    card.append(Markdown(f"# Champion gate: {_verdict(decision)}\n\n{decision['reason']}"))
    card.append(Markdown("\n".join(_gate_lines(decision))))
    if decision.get("compared"):
        _comparison(card, decision)
    _export(card, serving, files)


def _comparison(card: Any, decision: dict) -> None:
    """Both models' metrics on this run's test users."""
    from metaflow.cards import Markdown, Table

    metric = decision["metric"]
    candidate, champion = decision["candidate"], decision["champion"]
    rows = [
        [
            name,
            _fmt(candidate[name]),
            _fmt(champion[name]),
            f"{candidate[name] - champion[name]:+.4f}",
        ]
        for name in candidate
        if name in champion
    ]
    card.append(
        Markdown(
            f"## Both models on this run's {_fmt(decision['reach'].get('n_users'))} test users\n\n"
            f"The decision uses {metric}; the other metrics are for reading."
        )
    )
    card.append(Table(rows, headers=["metric", "candidate", "champion", "candidate - champion"]))


def _verdict(decision: dict) -> str:
    if not decision.get("eligible", True):
        return "not eligible (never tagged champion)"
    return "promoted" if decision["promote"] else "rejected"


def _gate_lines(decision: dict) -> list[str]:
    """The rule, the runs, the paired interval and what the champion could not reach."""
    metric = decision["metric"]
    lines = [
        f"- **rule**: {decision['rule']}",
        f"- **candidate run**: `{decision.get('candidate_run')}`",
        f"- **champion run**: `{decision.get('champion_run') or 'none'}`",
    ]
    if not decision.get("compared"):
        return lines + ["- **compared**: no (see the reason above)"]
    lo, hi = decision["interval"]
    reach = decision["reach"]
    lines += [
        f"- **{metric}, candidate - champion**: {decision['delta']:+.4f}, 95% interval "
        f"[{lo:+.4f}, {hi:+.4f}], p = {decision['p_value']:.3g}; margin {decision['margin']:g}",
        f"- **test users / target pairs**: {_fmt(reach.get('n_users'))} / "
        f"{_fmt(reach.get('n_targets'))}",
        f"- **targets unreachable for the champion** (tracks it does not know): "
        f"{_fmt(reach.get('unreachable_targets'))}; tracks of this run it does not know: "
        f"{_fmt(reach.get('unknown_tracks'))}",
        f"- **listeners it could not embed** (given popular tracks): "
        f"{_fmt(reach.get('fallback_users'))}",
        f"- **champion loaded from**: `{reach.get('champion_source')}`",
    ]
    own = decision.get("champion_own_week")
    if own is not None:
        lines.append(
            f"- **the champion's {metric} on its own test week**: {_fmt(own)} (another week: "
            "not comparable, for reference only)"
        )
    return lines


def _export(card: Any, serving: dict, files: dict) -> None:
    """The serving export's files and hashes, and where the report is."""
    from metaflow.cards import Markdown, Table

    shape = ", ".join(
        f"{k} {_fmt(serving[k])}" for k in ("n_items", "dim", "max_len") if k in serving
    )
    card.append(
        Markdown(
            f"## Serving export\n\nDirectory: `{serving.get('directory')}`\n\n{shape}; "
            f"written with torch {serving.get('torch_version', '?')}. How a request is served: "
            f"{serving.get('recipe', '')}"
        )
    )
    sha = serving.get("sha256", {})
    rows = [[name, uri, sha.get(name, "")[:16]] for name, uri in serving.get("files", {}).items()]
    card.append(Table(rows, headers=["file", "where", "sha256 (first 16)"]))
    card.append(Markdown(f"## Report\n\n`{files.get('markdown')}`"))
