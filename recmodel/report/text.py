"""Words and tables of the comparison report, shared by report.md and the Metaflow card.

Everything here reads only the ``report`` artifact dict, so the Markdown file, the card and a
report rebuilt later from the artifact say exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BETTER, WORSE, SAME = "▲", "▼", "="
DASH = "—"
MAX_ERROR_CHARS = 160  # an error in a table cell is cut here; the full text follows the table


def ranking_metrics(ks: tuple[int, ...]) -> list[str]:
    """Per-user metrics that get intervals and significance tests, in table order."""
    ks = tuple(sorted(ks))
    return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + [f"hitrate@{ks[0]}"]


def table_metrics(ks: tuple[int, ...]) -> list[str]:
    """Every metric column of the results table, in order."""
    return ranking_metrics(ks) + [f"coverage@{max(ks)}", f"pop_pct@{min(ks)}"]


def pretty_metric(metric: str) -> str:
    """``"ndcg@10"`` -> ``"NDCG@10"``; a name without a label is kept as it is."""
    name, _, k = metric.partition("@")
    label = {
        "recall": "Recall",
        "ndcg": "NDCG",
        "hitrate": "HitRate",
        "coverage": "Coverage",
        "pop_pct": "Popularity pct",
    }.get(name, name)
    return f"{label}@{k}" if k else label


# -- protocol ----------------------------------------------------------------------------------


def protocol_markdown(protocol: dict[str, Any]) -> str:
    """The protocol as a bullet list: known keys in a fixed order with words, then the rest."""
    lines, done = [], set()
    for key, (label, fmt) in _PROTOCOL_FIELDS.items():
        if protocol.get(key) is not None:
            lines.append(f"- **{label}**: {fmt(protocol[key], protocol)}")
            done.add(key)
    done |= {"bootstrap_seed", "confidence", "window_table"}  # written elsewhere
    lines += [f"- **{key}**: {_plain(value)}" for key, value in protocol.items() if key not in done]
    text = "## Protocol\n\n" + "\n".join(lines)
    if protocol.get("window_table"):
        text += "\n\n" + window_markdown(protocol["window_table"])
    return text


WINDOW_HEADERS = ["window", "from", "to", "listen+ events", "users", "requests"]


def window_markdown(rows: list[dict[str, Any]]) -> str:
    """The split windows with their counts (requests: users with history before the window)."""
    cells = [
        [
            row["window"],
            str(row.get("start") or ""),
            str(row.get("end") or ""),
            f"{row['events']:,}",
            f"{row['users']:,}",
            "" if row.get("requests") is None else f"{row['requests']:,}",
        ]
        for row in rows
    ]
    return pipe_table(WINDOW_HEADERS, cells)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return (
            " → ".join(_plain(v) for v in value)
            if len(value) == 2
            else ", ".join(_plain(v) for v in value)
        )
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _filtering(value: Any, _: dict) -> str:
    if value:
        return "already-heard tracks are removed from every model's recommendations"
    return "not filtered: already-heard tracks may be recommended (music is re-listened)"


def _intervals(value: Any, protocol: dict) -> str:
    level = round(100 * protocol.get("confidence", 0.95))
    return (
        f"{level}% percentile bootstrap over test users, {value:,} replicates, "
        f"seed {protocol.get('bootstrap_seed', 0)}; differences by paired bootstrap"
    )


_Formatter = Callable[[Any, dict], str]


def _ranker_rows(fit: dict[str, Any]) -> str:
    """The candidate rows the ranker's boosters saw: all, or a sample of whole users."""
    total = f"{fit['candidates']:,} candidate rows"
    if fit["serving"] >= fit["candidates"]:
        return f"every one of its {total}"
    folds = ", ".join(f"{n:,}" for n in fit["folds"])
    return (
        f"a seeded sample of users (`ranker.max_train_rows` = {fit['max_train_rows']:,}): "
        f"{fit['serving']:,} of {total} (the fold models: {folds}); every request is scored"
    )


_PROTOCOL_FIELDS: dict[str, tuple[str, _Formatter]] = {
    "split": ("Split", lambda v, _: str(v)),
    "protocol": ("Split", lambda v, _: str(v)),
    "split_by": ("Windows cut", lambda v, _: str(v)),
    "windows": ("Windows", lambda v, _: _plain(v)),
    "split_times": ("Split times", lambda v, _: _plain(v)),
    "gap_minutes": ("Gap", lambda v, _: f"{v:g} min between the windows"),
    "gap_seconds": ("Gap", lambda v, _: f"{v / 60:g} min between the windows"),
    "gap": ("Gap", lambda v, _: str(v)),
    "filter_seen": ("Filtering", _filtering),
    "n_test_users": (
        "Test users",
        lambda v, _: (
            f"{v:,} (users with a listen+ in the test window); every model is judged on all of them"
        ),
    ),
    "n_targets": ("Targets", lambda v, _: f"{v:,} distinct (user, track) pairs"),
    "n_target_events": ("Target events", lambda v, _: f"{v:,} listen+ events in the test window"),
    "catalog_size": ("Catalog", lambda v, _: f"{v:,} tracks; top-k over the full catalog"),
    "ks": ("Cut-offs k", lambda v, _: ", ".join(str(k) for k in v)),
    "bootstrap_samples": ("Intervals", _intervals),
    "reference_model": ("Reference model", lambda v, _: f"`{v}`"),
    "ranker_fit_rows": ("Ranker fit on", lambda v, _: _ranker_rows(v)),
}


# -- results table -----------------------------------------------------------------------------


def results_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the results table: one row per model, failed ones included."""
    metrics = table_metrics(tuple(data["protocol"]["ks"]))
    headers = ["Model", *map(pretty_metric, metrics), "Train time", "Model size"]
    rows = []
    for model in data["models"]:
        name = f"{model} (reference)" if model == data["reference_model"] else model
        if model in data["failed"]:
            error = _one_line(data["failed"][model])
            state = error if error.startswith("skipped:") else f"failed: {error}"
            rows.append([name, state] + [DASH] * (len(headers) - 2))
            continue
        cells = [_metric_cell(data, model, metric) for metric in metrics]
        training = data["training"].get(model, {})
        rows.append(
            [name, *cells, _seconds(training.get("fit_seconds")), _size(training.get("model_size"))]
        )
    return headers, rows


def pipe_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    aligns = ["---"] + ["--:"] * (len(headers) - 1)
    return "\n".join([line(headers), "|" + "|".join(aligns) + "|", *map(line, rows)])


def mark(data: dict[str, Any], model: str, metric: str) -> str:
    """▲/▼/= for the reference against ``model`` on ``metric``; empty without a test."""
    test = data["comparisons"].get(model, {}).get(metric)
    if test is None:
        return ""
    if not test["significant"]:
        return SAME
    return BETTER if test["diff"] > 0 else WORSE


def _metric_cell(data: dict[str, Any], model: str, metric: str) -> str:
    value = data["metrics"][model].get(metric)
    if value is None:
        return DASH
    if metric.startswith("pop_pct"):
        return f"{value:.1f}"
    text = f"{value:.4f}"
    interval = data["intervals"].get(model, {}).get(metric)
    if interval is not None:
        text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    sign = mark(data, model, metric)
    return f"{text} {sign}" if sign else text


def _one_line(error: str) -> str:
    lines = (error or "").strip().splitlines()
    first = lines[0] if lines else "unknown error"
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 1] + "…"


def _seconds(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _size(value: int | None) -> str:
    if value is None:
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(int(value))


# -- text around the table ---------------------------------------------------------------------


def legend_markdown(data: dict[str, Any]) -> str:
    """How to read the table: intervals, marks, coverage and popularity."""
    protocol, ref = data["protocol"], data["reference_model"]
    ks = tuple(protocol["ks"])
    level = round(100 * protocol.get("confidence", 0.95))
    marks = (
        f"Marks compare `{ref}` with the model of the row by a paired bootstrap over the "
        f"same test users ({level}%): {BETTER} `{ref}` is significantly better, {WORSE} "
        f"significantly worse, {SAME} no significant difference."
        if data["comparisons"]
        else f"No significance marks: the reference model `{ref}` has no results."
    )
    return "\n".join(
        [
            f"Each metric cell: mean over the {protocol['n_test_users']:,} test users "
            f"[{level}% bootstrap interval]; a user without recommendations counts as zero.",
            "",
            marks,
            "",
            f"{pretty_metric(f'coverage@{max(ks)}')}: distinct recommended tracks / catalog size. "
            f"{pretty_metric(f'pop_pct@{min(ks)}')}: "
            f"mean popularity percentile of the top-{min(ks)} tracks (100 = most played before the "
            "test window; higher = stronger popularity bias).",
        ]
    )


def summary_markdown(data: dict[str, Any]) -> str:
    """Headline: where the reference stands on the first NDCG, and the best model per metric."""
    ref, ks = data["reference_model"], tuple(data["protocol"]["ks"])
    metric = f"ndcg@{min(ks)}"
    lines = ["## Summary", ""]
    if ref in data["metrics"]:
        lines.append(f"{pretty_metric(metric)} of `{ref}`: {_metric_cell(data, ref, metric)}.")
        groups = {BETTER: [], SAME: [], WORSE: []}
        for other in data["comparisons"]:
            groups[mark(data, other, metric)].append(f"`{other}`")
        for sign, words in (
            (BETTER, "Significantly better than"),
            (SAME, "Not significantly different from"),
            (WORSE, "Significantly worse than"),
        ):
            lines.append(f"- {words}: {', '.join(groups[sign]) or 'none'}")
    else:
        state = "failed" if ref in data["failed"] else "absent from this run"
        lines.append(f"The reference model `{ref}` is {state}: no significance tests.")
    best = [f"{pretty_metric(m)} `{w}`" for m, w in data["winners"].items()]
    lines += ["", "Best per metric: " + ("; ".join(best) if best else "no model has results")]
    return "\n".join(lines)


def failed_markdown(data: dict[str, Any]) -> str:
    """Full error text of each failed model (empty string when none failed)."""
    if not data["failed"]:
        return ""
    parts = ["## Failed or skipped models", ""]
    for model, error in data["failed"].items():
        parts += [f"**{model}**", "", "```", (error or "unknown error").strip(), "```", ""]
    return "\n".join(parts).rstrip()


def settings_markdown(data: dict[str, Any]) -> str:
    """The settings each model ran with, how they were chosen, and each fit rule once."""
    settings = data.get("settings") or {}
    rows, rules = [], {}
    for model in data["models"]:
        entry = settings.get(model)
        if not entry:
            continue
        params = ", ".join(f"{k}={_plain(v)}" for k, v in entry.get("params", {}).items())
        chosen = []
        if entry.get("searched"):
            best = entry.get("best_validation_ndcg@10")
            on = f" on {entry['tuned_on']}" if entry.get("tuned_on") else ""
            chosen.append(
                f"{entry['searched']} settings scored{on}"
                + ("" if best is None else f", best NDCG@10 {best:.4f}")
            )
        if entry.get("best_epoch") is not None:
            chosen.append(f"epoch {entry['best_epoch']} kept")
        rows.append([f"`{model}`", params or "—", "; ".join(chosen) or "—"])
        if entry.get("rule"):
            rules.setdefault(entry["rule"], []).append(f"`{model}`")
    if not rows:
        return ""
    parts = ["## Settings", "", pipe_table(["model", "settings", "on validation"], rows)]
    if rules:
        parts += ["", "How each model was fit:", ""]
        parts += [f"- {', '.join(models)}: {rule}" for rule, models in rules.items()]
    return "\n".join(parts)


def notes_markdown(data: dict[str, Any]) -> str:
    """Things a reader must know to trust the numbers (empty string when there are none)."""
    n_users = data["protocol"]["n_test_users"]
    notes = [
        f"- `{model}`: {count:,} of {n_users:,} test users got no recommendation (counted as zero)"
        for model, count in data["users_without_recommendations"].items()
        if count
    ]
    notes += [
        f"- `{model}`: {count:,} recommendation rows for users outside the test set were ignored"
        for model, count in data["rows_outside_test"].items()
        if count
    ]
    return "## Notes\n\n" + "\n".join(notes) if notes else ""
