"""Each step's summary: strict JSON, under the UI's 4 KB, with what a reader looks for first."""

import json
import logging

from recmodel.core.files import read_json
from recmodel.core.plain import UI_ARTIFACT_LIMIT
from recmodel.core.presets import load_preset
from recmodel.steps.common import RunTables, record_queries
from recmodel.steps.data import run_tags
from recmodel.steps.summaries import (
    end_summary,
    extract_summary,
    headline_text,
    models_summary,
    ranker_summary,
    report_summary,
    start_summary,
    to_summary,
    training_summary,
)
from tests.helpers import REPORT_MODELS


def _read(text: str) -> dict:
    assert len(text.encode()) < UI_ARTIFACT_LIMIT
    return json.loads(text)  # strict: NaN would not parse as JSON in the UI


def test_start_summary_names_preset_data_tags_and_settings():
    config = load_preset("tiny").to_dict()
    inputs = {"kind": "synthetic", "events": "", "items": "", "ranker_scores": ""}
    tags = run_tags(config, inputs)
    assert tags == ["preset:tiny", "source:synthetic"]
    out = _read(start_summary(config, inputs, {"warnings": []}, None, tags))
    assert out["preset"] == "tiny" and out["tags"] == tags
    assert out["data"] == {
        "kind": "synthetic",
        "seed": 7,
        "n_users": 300,
        "n_tracks": 1500,
        "days": 40,
    }
    assert out["settings"]["finetune"]["epochs"] == 1 and out["settings"]["eval"]["ks"] == [
        10,
        50,
        100,
    ]
    own = {"kind": "yambda", "events": "/data/listens.parquet", "items": "", "ranker_scores": ""}
    assert _read(start_summary(config, own, {"warnings": ["w"]}, "F/1", tags))["data"] == {
        "kind": "yambda",
        "events": "/data/listens.parquet",
    }


def test_extract_summary_has_the_windows_and_counts(tmp_path):
    import pyarrow as pa

    ref = RunTables(root=str(tmp_path)).write(pa.table({"x": [1, 2, 3]}), "events")
    summary = {
        "source": "synthetic",
        "n_events": 10,
        "n_users": 3,
        "n_items": 4,
        "n_test_users": 2,
        "stages": {"final": {"test": {"events": 5, "users": 2, "items": 3}}},
        "split_times": {"t_test": {"iso": "2024-02-01T00:00:00+00:00"}},
        "dropped": {"skips": 3, "duplicates": 0},
        "split_rule": "by share of listen+ events",
    }
    out = _read(extract_summary(summary, {"events": ref}))
    assert out["events"] == 10 and out["table_rows"] == {"events": 3}
    assert out["windows"]["test"] == "2024-02-01 00:00 to ?: 5 listen+ events, 2 users, 3 tracks"
    assert out["dropped"] == {"skips": 3}


def test_training_summary_counts_trained_epochs_only():
    entry = {
        "status": "ok",
        "metrics": {"ndcg@10": 0.17, "recall@100": 0.33, "coverage@10": 0.3},
        "history": [
            {"epoch": 0, "ndcg@10": 0.13},
            {"epoch": 1, "loss": 5.26, "pair_loss": 1.4, "softmax_loss": 7.7, "ndcg@10": 0.166},
        ],
        "best_epoch": 1,
        "fit_seconds": 1.37,
        "model_size": 59856,
    }
    out = _read(training_summary({"sasrec_two_stage": entry}, {"distillation": {"n": 3}}))
    assert out["epochs_trained"] == 1 and out["best_epoch_val_ndcg@10"] == 0.166
    assert out["last_loss"] == {"loss": 5.26, "pair_loss": 1.4, "softmax_loss": 7.7}
    assert "coverage@10" not in out and out["distillation"] == {"n": 3}


def test_models_summary_keeps_failures_short():
    results = {
        "als": {"status": "failed", "error": "ValueError: bad\n" + "trace " * 500},
        "popularity": {"status": "ok", "metrics": {"ndcg@10": 0.1, "recall@100": 0.2}},
    }
    out = _read(models_summary(results, "as computed here"))
    assert out["models"]["als"] == {"status": "failed", "error": "ValueError: bad"}
    assert out["models"]["popularity"]["ndcg@10"] == 0.1


def test_ranker_summary_names_the_strongest_features():
    quality = {"auc": 0.81, "importance": {f"f{i}": i / 10 for i in range(9)}, "n_requests": 5}
    out = _read(ranker_summary(quality, {"rows": 100}))
    assert out["top_features"] == ["f8", "f7", "f6", "f5", "f4"] and out["score_rows"] == 100


def _report(models=REPORT_MODELS) -> dict:
    metrics = {
        m: {"ndcg@10": 0.1 + i / 100, "recall@100": 0.3 + i / 100} for i, m in enumerate(models)
    }
    intervals = {
        m: {k: [v - 0.01234567, v + 0.01234567] for k, v in row.items()}
        for m, row in metrics.items()
    }
    comparisons = {
        m: {"ndcg@10": {"diff": 0.1 - i / 100, "significant": i % 2 == 0}}
        for i, m in enumerate(models)
        if m != "sasrec_two_stage"
    }
    return {
        "protocol": {"n_test_users": 1234, "catalog_size": 999, "filter_seen": False},
        "metrics": metrics,
        "intervals": intervals,
        "comparisons": comparisons,
        "winners": {"ndcg@10": models[-1], "recall@100": models[-1]},
        "reference_model": "sasrec_two_stage",
        "failed": {},
    }


def test_report_summary_is_the_headline_of_nine_models_under_the_limit():
    out = _read(report_summary(_report(), {"markdown": "/runs/1/report.md"}))
    assert list(out["models"]) == list(REPORT_MODELS)
    assert out["models"]["als"] == {
        "ndcg@10": "0.1400 [0.1277, 0.1523]",
        "recall@100": "0.3400 [0.3277, 0.3523]",
    }
    assert out["best"] == {"ndcg@10": "two_stage_ranked", "recall@100": "two_stage_ranked"}
    verdicts = out["reference_significantly"]
    assert (
        "popularity" in verdicts["better_than"] and "user_popular" in verdicts["not_different_from"]
    )


def test_headline_text_lists_every_model_and_the_winners():
    text = headline_text(report_summary(_report(), {"markdown": "/runs/1/report.md"}))
    lines = text.splitlines()
    assert lines[0] == "Results on 1,234 test users (mean [95% bootstrap interval]):"
    assert all(any(line.startswith(m) for line in lines) for m in REPORT_MODELS)
    assert "best NDCG@10: two_stage_ranked; best Recall@100: two_stage_ranked" in lines
    assert lines[-1] == "report: /runs/1/report.md"


def test_end_summary_shows_any_decision_and_the_export():
    serving = {"directory": "/runs/1/serving", "n_items": 12, "dim": 8, "files": {"a": "b"}}
    decision = {"promote": True, "reason": "no champion yet", "delta": None}
    out = _read(end_summary(serving, decision, {"markdown": "/r.md"}))
    assert out["champion_decision"] == decision and out["serving"]["directory"] == "/runs/1/serving"


def test_an_oversized_summary_is_logged_not_raised(caplog):
    with caplog.at_level(logging.WARNING):
        text = to_summary({"x": "y" * UI_ARTIFACT_LIMIT})
    assert json.loads(text)["x"] and "exceeds the UI" in caplog.text


def test_the_executed_sql_accumulates_in_one_document(tmp_path):
    first = [{"file": "sql/01.sql", "sql": "select 1", "params": {"t": float("nan")}, "rows": 2}]
    ref = record_queries(None, first, RunTables(root=str(tmp_path / "a")))
    assert ref["queries"] == 1 and ref["files"] == ["sql/01.sql (2 rows)"]
    second = [{"file": "sql/q.sql", "sql": "select 2", "params": {}, "rows": 5}]
    later = record_queries(ref, second, RunTables(root=str(tmp_path / "b")))
    assert [q["file"] for q in read_json(later)] == ["sql/01.sql", "sql/q.sql"]
    assert read_json(later)[0]["params"] == {"t": None}
    old_run = record_queries(first, [], RunTables(root=str(tmp_path / "c")))  # a list artifact
    assert read_json(old_run) == read_json(ref)
