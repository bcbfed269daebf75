"""Each step's ``summary`` artifact: a small JSON text of what a person looks for first.

The Metaflow UI shows an artifact of at most 4 KB by default and pretty-prints only strings that
parse as JSON, so every step stores one such string, well under the limit: the chosen settings,
the windows and their counts, each model's headline metrics, the champion decision. The full
detail stays in the step's other artifacts and in the files beside the run's tables.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from recmodel.core.plain import UI_ARTIFACT_LIMIT, to_json
from recmodel.core.tables import TableRef
from recmodel.ingest.summary import window_table

log = logging.getLogger(__name__)

HEADLINE = ("ndcg@10", "recall@100")  # the metrics a reader compares first
STEP_METRICS = "test metrics as the step of each model computed them; the report recomputes them"
TOP_FEATURES = 5  # ranker features named in its summary


def to_summary(value: dict[str, Any]) -> str:
    """``value`` as compact JSON; a text over the UI's limit is logged (it still displays as
    "too large", never breaks the run)."""
    text = to_json(value)
    if len(text.encode()) >= UI_ARTIFACT_LIMIT:
        log.warning("summary of %d bytes exceeds the UI's %d", len(text), UI_ARTIFACT_LIMIT)
    return text


def shards_summary(round_index: int, records: list[dict], shard: int | None = None) -> str:
    """A round of the sharded extraction (-1: the plan before it): which files ran on which
    shard, with their rows and seconds."""
    return to_summary(
        {
            "round": round_index + 1 if round_index >= 0 else "before the rounds",
            "shard": shard,
            "files": [
                f"{q['file']}: {q['rows']:,} rows, {q['seconds']:.2f} s"
                + ("" if q.get("shard") is None or shard is not None else f" (shard {q['shard']})")
                for q in records[-24:]
            ],
        }
    )


def start_summary(
    config: dict, inputs: dict, checks: dict, warm_start_run: str | None, tags: list[str]
) -> str:
    """The preset, the data and the settings that decide what the run computes."""
    extract, train, finetune = config["extract"], config["train"], config["finetune"]
    return to_summary(
        {
            "preset": config.get("name"),
            "data": _data_source(config, inputs),
            "tags": tags,
            "warm_start_run": warm_start_run,
            "warnings": len(checks.get("warnings", [])),
            "settings": {
                "protocol": extract["protocol"],
                "windows_by": extract.get("split_by"),
                "model": {k: config["model"][k] for k in ("d_model", "n_blocks", "max_len")},
                "pretrain": {
                    k: train[k] for k in ("epochs", "batch_size", "logq", "negatives", "device")
                },
                "finetune": {
                    k: finetune[k] for k in ("epochs", "softmax_weight", "pair_weighting")
                },
                "eval": {k: config["eval"][k] for k in ("ks", "filter_seen", "max_test_users")},
            },
        }
    )


def _data_source(config: dict, inputs: dict) -> dict[str, Any]:
    if inputs.get("kind") == "synthetic":
        syn = config.get("synthetic", {})
        keys = ("seed", "n_users", "n_tracks", "days")
        return {"kind": "synthetic", **{k: syn.get(k) for k in keys}}
    keys = ("kind", "events", "items", "ranker_scores")
    return {k: inputs.get(k) for k in keys if inputs.get(k)}


def extract_summary(summary: dict, tables: dict) -> str:
    """Counts after extraction, each window with its bounds and counts, and what was dropped."""
    windows = {
        row["window"]: f"{_day(row['start'])} to {_day(row['end'])}: {row['events']:,} listen+ "
        f"events, {row['users']:,} users, {row['tracks']:,} tracks"
        for row in window_table(summary)
    }
    return to_summary(
        {
            "source": summary.get("source"),
            **{k: summary.get(f"n_{k}") for k in ("events", "users", "items", "test_users")},
            "windows_cut": summary.get("split_rule"),
            "windows": windows,
            "dropped": {k: v for k, v in summary.get("dropped", {}).items() if v},
            "table_rows": {name: TableRef.of(ref).rows for name, ref in tables.items()},
            "seconds": summary.get("seconds"),
        }
    )


def _day(iso: str | None) -> str:
    """``2024-01-30T03:18:00+00:00`` -> ``2024-01-30 03:18`` (UTC, as extraction writes it)."""
    return "?" if not iso else iso[:16].replace("T", " ")


def q_summary(summary: dict) -> str:
    """The shape of Q (entropy, head mass, ...)."""
    return to_summary({k: v for k, v in summary.items() if not isinstance(v, dict | list)})


def _headline(entry: dict) -> dict[str, Any]:
    metrics = entry.get("metrics", {})
    out = {"status": entry.get("status", "ok")}
    if entry.get("error"):
        out["error"] = str(entry["error"]).strip().splitlines()[0][:200]
    out.update({k: metrics[k] for k in HEADLINE if k in metrics})
    if entry.get("fit_seconds") is not None:
        out["fit_seconds"] = entry["fit_seconds"]
    return out


def models_summary(results: dict, note: str) -> str:
    """Each model's status and test metrics as its step computed them."""
    return to_summary({"note": note, "models": {m: _headline(e) for m, e in results.items()}})


def nodes_summary(step: str, nodes: int) -> str:
    """The machines a pretraining step starts on."""
    return to_summary({"step": step, "nodes": nodes})


def training_summary(results: dict, extra: dict | None = None, node: Any = None) -> str:
    """A trained model: epochs trained, the best epoch, losses and metrics; the headline of any
    other row the step adds (finetune's ``two_stage_ranked``).

    ``node`` (a :class:`recmodel.retriever.launch.Node`): on a group of machines the summary says
    which one this is; the nodes after the first publish nothing of their own.
    """
    if node is not None and node.count > 1:
        where = {"node": f"{node.index + 1} of {node.count}"}
        if not results:
            return to_summary({**where, "published_by": "node 1 (the same weights)"})
        extra = {**where, **(extra or {})}
    name = next((n for n, e in results.items() if "history" in e), next(iter(results)))
    entry = results[name]
    others = {other: _headline(e) for other, e in results.items() if other != name}
    history = entry.get("history", [])
    trained = [row for row in history if "loss" in row]
    best = next((row for row in history if row.get("epoch") == entry.get("best_epoch")), {})
    return to_summary(
        {
            "model": name,
            **_headline(entry),
            "epochs_trained": len(trained),
            "best_epoch": entry.get("best_epoch"),
            "best_epoch_val_ndcg@10": best.get("ndcg@10"),
            "last_loss": {k: v for k, v in trained[-1].items() if "loss" in k} if trained else {},
            "model_size": entry.get("model_size"),
            **{k: entry[k] for k in ("logq", "resumed_from") if entry.get(k) is not None},
            "warm_start": bool(entry.get("warm_start")),
            **({"also": others} if others else {}),
            **(extra or {}),
        }
    )


def ranker_summary(quality: dict, scores: dict) -> str:
    """The ranker's held-out quality, its sizes and its strongest features."""
    importance = quality.get("importance") or {}
    top = sorted(importance, key=lambda k: -importance[k])[:TOP_FEATURES]
    keys = ("source", "auc", "ndcg@10", "n_requests", "n_candidates", "positive_rate", "seconds")
    return to_summary(
        {
            **{k: quality[k] for k in keys if k in quality},
            "score_rows": scores.get("rows"),
            "top_features": top,
            "features_dropped": sorted(quality.get("features_dropped") or {}),
            "fit_rows": quality.get("fit_rows"),
        }
    )


def report_summary(report: dict, files: dict) -> str:
    """The headline: each model's NDCG@10 and Recall@100 with 95% intervals, the winners.

    A metric reads ``"0.1744 [0.1387, 0.2065]"``: the mean over test users and its interval,
    one line per metric where the UI pretty-prints the JSON.
    """
    protocol = report.get("protocol", {})
    metrics, intervals = report.get("metrics", {}), report.get("intervals", {})
    models = {
        model: {
            k: _with_interval(values[k], intervals.get(model, {}).get(k))
            for k in HEADLINE
            if k in values
        }
        for model, values in metrics.items()
    }
    comparisons = report.get("comparisons", {})
    return to_summary(
        {
            "test_users": protocol.get("n_test_users"),
            "catalog": protocol.get("catalog_size"),
            "filter_seen": protocol.get("filter_seen"),
            "metrics": "mean [95% bootstrap interval] over the test users",
            "models": models,
            "best": {k: report.get("winners", {}).get(k) for k in HEADLINE},
            "reference": report.get("reference_model"),
            "reference_significantly": _verdicts(comparisons, HEADLINE[0]),
            "failed": sorted(report.get("failed", {})),
            "report_md": files.get("markdown"),
        }
    )


def _with_interval(mean: float, interval: list | None) -> str:
    if interval is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _verdicts(comparisons: dict, metric: str) -> dict[str, list[str]]:
    """Which models the reference beats, ties or loses to on ``metric`` (paired bootstrap)."""
    out: dict[str, list[str]] = {"better_than": [], "not_different_from": [], "worse_than": []}
    for model, tests in comparisons.items():
        test = tests.get(metric)
        if test is None:
            continue
        key = "not_different_from"
        if test.get("significant"):
            key = "better_than" if test["diff"] > 0 else "worse_than"
        out[key].append(model)
    return out


DECISION_KEYS = (
    "promote", "eligible", "compared", "reason", "metric", "delta", "interval", "p_value",
    "margin", "champion_run",
)  # fmt: skip


def end_summary(serving: dict, decision: Any, files: dict) -> str:
    """Where the serving export is, and the champion decision as it was made."""
    if isinstance(decision, dict):  # the verdict and why; the card has the rest
        decision = {k: decision[k] for k in DECISION_KEYS if k in decision}
    return to_summary(
        {
            "champion_decision": decision,
            "serving": {
                "directory": serving.get("directory"),
                **{k: serving.get(k) for k in ("n_items", "dim", "max_len")},
            },
            "report_md": files.get("markdown"),
        }
    )


def headline_text(summary: str) -> str:
    """The report step's summary as the lines printed at the end of a run."""
    data = json.loads(summary)
    width = max([len(m) for m in data["models"]] + [5])
    lines = [
        f"Results on {data['test_users']:,} test users (mean [95% bootstrap interval]):",
        f"{'model':<{width}}  {'NDCG@10':<26}  Recall@100",
    ]
    for model, values in data["models"].items():
        cells = [values.get(k, "-") for k in HEADLINE]
        lines.append(f"{model:<{width}}  {cells[0]:<26}  {cells[1]}")
    best = data.get("best", {})
    lines.append(
        f"best NDCG@10: {best.get('ndcg@10') or '-'}; best Recall@100: "
        f"{best.get('recall@100') or '-'}"
    )
    if data.get("failed"):
        lines.append(f"failed: {', '.join(data['failed'])}")
    lines.append(f"report: {data.get('report_md')}")
    return "\n".join(lines)
