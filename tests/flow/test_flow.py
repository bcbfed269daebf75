"""One end-to-end run of TwoStageFlow on the tiny preset, shared by every test in this file."""

import base64
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "flows" / "two_stage.py"
MODELS = (
    "popularity",
    "user_popular",
    "user_recent",
    "itemknn",
    "als",
    "sasrec_no_logq",
    "sasrec_pretrain",
    "sasrec_two_stage",
    "two_stage_ranked",
)


@pytest.fixture(scope="session")
def run():
    from metaflow import Runner

    env = {
        "METAFLOW_USER": os.environ["METAFLOW_USER"],
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"],
        "METAFLOW_HOME": os.environ["METAFLOW_HOME"],
    }
    with Runner(str(FLOW), show_output=False, env=env, cwd=str(ROOT)).run(preset="tiny") as r:
        assert r.status == "successful", r.stderr
        return r.run


def test_every_step_ran(run):
    steps = {step.id for step in run}
    assert steps == {
        "start",
        "extract_sessions",
        "estimate_q",
        "pretrain",
        "pretrain_no_logq",
        "baselines",
        "materialize_ranker_scores",
        "finetune",
        "join",
        "report",
        "end",
    }


def test_start_stores_the_effective_config(run):
    config = run["start"].task["config"].data
    assert config["name"] == "tiny"
    assert config["model"]["max_len"] == 20
    assert run["start"].task["inputs"].data["kind"] == "synthetic"


def test_extraction_artifacts(run):
    from recmodel.core.tables import read_table

    task = run["extract_sessions"].task
    queries = task["sql_queries"].data
    assert queries and all(q["sql"].strip() and "params" in q for q in queries)
    summary = task["data_summary"].data
    assert summary["n_users"] > 0 and summary["n_items"] > 0
    targets = read_table(task["test_targets"].data)
    assert {"user_id", "item_id"} <= set(targets.column_names)
    assert targets.num_rows > 0


def test_q_table(run):
    from recmodel.core.tables import read_table

    q = read_table(run["estimate_q"].task["item_frequency"].data).to_pydict()
    assert set(q) >= {"item_idx", "count", "q", "log_q"}
    assert math.isclose(sum(q["q"]), 1.0, rel_tol=1e-6)
    assert min(q["q"]) > 0


def test_checkpoints_and_history(run):
    end = run["end"].task
    for name in ("pretrain_checkpoint", "finetune_checkpoint"):
        ckpt = end[name].data
        assert ckpt["safetensors"][:8] and ckpt["model_config"]["d_model"] == 32
    history = end["train_history"].data
    assert {"sasrec_pretrain", "sasrec_no_logq", "sasrec_two_stage"} <= set(history)
    assert all(row["loss"] == row["loss"] for row in history["sasrec_pretrain"])  # no NaN


def test_ranker_scores_table(run):
    from recmodel.core.tables import read_table

    scores = read_table(run["end"].task["ranker_scores"].data)
    assert {"user_id", "item_id", "request_ts", "score"} <= set(scores.column_names)
    assert scores.num_rows > 0


def test_recommendations_cover_every_model(run):
    from recmodel.core.tables import load_artifact

    recs = load_artifact("recommendations", run=run)
    assert set(recs.column("model").to_pylist()) == set(MODELS)
    assert max(recs.column("rank").to_pylist()) == 100


def test_report(run):
    report = run["end"].task["report"].data
    assert set(report["metrics"]) == set(MODELS)
    for metrics in report["metrics"].values():
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
        assert 0.0 <= metrics["recall@100"] <= 1.0
    assert report["protocol"]["filter_seen"] is False
    assert "distillation" in report


def _card_payload(html: str) -> str:
    """The card's components, which Metaflow embeds in the page as base64 JSON."""
    encoded = re.search(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html).group(1)
    return base64.b64decode(encoded).decode()


def test_report_card_renders(run, tmp_path):
    out = tmp_path / "report.html"
    cmd = [sys.executable, str(FLOW), "card", "get", f"{run.id}/report", "--id", "report", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env=os.environ.copy())
    payload = _card_payload(out.read_text())
    assert "Model comparison on the same test users" in payload
    assert all(model in payload for model in MODELS)


def test_end_exports_serving_files_and_gates_the_champion(run):
    end = run["end"].task
    serving = end["serving"].data
    assert {"item_vectors.npy", "query_encoder.pt", "manifest.json"} <= {
        os.path.basename(uri) for uri in serving["files"].values()
    }
    decision = end["champion_decision"].data
    # A tiny run is a smoke test: judged (here, with no champion yet to beat) but never tagged.
    assert (decision["promote"], decision["eligible"]) == (False, False)
    assert decision["reason"].endswith("the gate alone: no champion yet: promoted")
    assert decision["candidate_run"] == run.pathspec
    assert "champion" not in run.tags and "rejected" not in run.tags


def test_champion_card_renders(run, tmp_path):
    out = tmp_path / "champion.html"
    cmd = [sys.executable, str(FLOW), "card", "get", f"{run.id}/end", "--id", "champion", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env=os.environ.copy())
    payload = _card_payload(out.read_text())
    assert "Champion gate: not eligible" in payload and "eval.champion_eligible" in payload
