"""One end-to-end run of TwoStageFlow on the tiny preset, shared by every test in this file."""

import base64
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPORT_MODELS

pytestmark = [pytest.mark.flow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "flows" / "two_stage.py"


@pytest.fixture(scope="session")
def run():
    from metaflow import Runner

    env = {
        "METAFLOW_USER": os.environ["METAFLOW_USER"],
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"],
        "METAFLOW_HOME": os.environ["METAFLOW_HOME"],
    }
    runner = Runner(str(FLOW), show_output=False, env=env, cwd=str(ROOT))
    with runner.run(preset="tiny", overrides=OVERRIDES) as r:
        assert r.status == "successful", r.stderr
        return r.run


# The pretraining steps read the tiny run's ~36k events as user shards of at most 20k.
OVERRIDES = {"train": {"shard_events": 20_000}}
STEP_CARDS = {  # every step's card id; the UI lists a card by its id
    "start": "inputs",
    "extract_sessions": "data",
    "estimate_q": "q",
    "pretrain": "training",
    "pretrain_no_logq": "training",
    "baselines": "baselines",
    "materialize_ranker_scores": "ranker",
    "finetune": "training",
    "join": "results",
    "report": "report",
    "end": "champion",
}
# The extraction's rounds over user shards, before extract_sessions (no cards: a summary each).
EXTRACTION_STEPS = {
    "partition_events", "shard_sessions", "gather_sessions", "split_times", "shard_split", "gather_split",
    "kept_items", "shard_filter", "gather_filter", "vocabularies", "shard_final",
}  # fmt: skip
# Each pretraining step's launch on train.nodes machines and the join after its @parallel tasks.
GROUP_STEPS = {"pretrain_nodes", "pretrain_gather", "no_logq_nodes", "no_logq_gather"}
UI_LIMIT = 4096  # bytes of an artifact the Metaflow UI shows by default
# Detail that grows with the number of models and epochs; each step's summary has its headline.
LARGE_DETAIL = {"report", "model_results", "baseline_results", "train_history"}


def test_every_step_ran(run):
    steps = {step.id for step in run}
    assert steps - EXTRACTION_STEPS - GROUP_STEPS == {
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
    assert steps >= EXTRACTION_STEPS | GROUP_STEPS


def test_start_stores_the_effective_config(run):
    config = run["start"].task["config"].data
    assert config["name"] == "tiny"
    assert config["model"]["max_len"] == 20
    assert run["start"].task["inputs"].data["kind"] == "synthetic"


def test_extraction_artifacts(run):
    from recmodel.core.files import read_json
    from recmodel.core.tables import read_table

    task = run["extract_sessions"].task
    ref = task["sql_queries"].data  # the executed SQL is a JSON document beside the tables
    queries = read_json(ref)
    assert ref["format"] == "json" and ref["queries"] == len(queries)
    assert len(ref["files"]) == len({q["file"] for q in queries})  # each file once
    assert queries and all(q["sql"].strip() and "params" in q for q in queries)
    later = read_json(run["end"].task["sql_queries"].data)
    assert later[: len(queries)] == queries and len(later) > len(queries)  # every step's SQL
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
    from recmodel.core.files import load_checkpoint
    from recmodel.core.tables import load_artifact

    end = run["end"].task
    for name in ("pretrain_checkpoint", "finetune_checkpoint"):
        ref = end[name].data  # the weights are a file beside the tables
        assert ref["format"] == "safetensors" and ref["model_config"]["d_model"] == 32
        ckpt = load_checkpoint(ref)
        assert ckpt["safetensors"][:8] and ckpt == load_artifact(name, run=run)
    history = end["train_history"].data
    assert {"sasrec_pretrain", "sasrec_no_logq", "sasrec_two_stage"} <= set(history)
    values = [v for rows in history.values() for row in rows for v in row.values()]
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in values)
    assert "loss" not in history["sasrec_two_stage"][0]  # the starting model trained no epoch


def test_ranker_scores_table(run):
    from recmodel.core.tables import read_table

    scores = read_table(run["end"].task["ranker_scores"].data)
    assert {"user_id", "item_id", "request_ts", "score"} <= set(scores.column_names)
    assert scores.num_rows > 0


def test_recommendations_cover_every_model(run):
    from recmodel.core.tables import load_artifact

    recs = load_artifact("recommendations", run=run)
    assert set(recs.column("model").to_pylist()) == set(REPORT_MODELS)
    assert max(recs.column("rank").to_pylist()) == 100


def test_report(run):
    report = run["end"].task["report"].data
    assert set(report["metrics"]) == set(REPORT_MODELS)
    for metrics in report["metrics"].values():
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
        assert 0.0 <= metrics["recall@100"] <= 1.0
    assert report["protocol"]["filter_seen"] is False
    assert "distillation" in report


def _card_payload(html: str) -> str:
    """The card's components, which Metaflow embeds in the page as base64 JSON."""
    encoded = re.search(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html).group(1)
    return base64.b64decode(encoded).decode()


def _card(run, step: str, card_id: str, tmp_path) -> str:
    out = tmp_path / f"{step}.html"
    cmd = [sys.executable, str(FLOW), "card", "get", f"{run.id}/{step}", "--id", card_id, str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, env=os.environ.copy())
    return _card_payload(out.read_text())


def test_report_card_renders(run, tmp_path):
    payload = _card(run, "report", "report", tmp_path)
    assert "Model comparison on the same test users" in payload
    assert all(model in payload for model in REPORT_MODELS)
    tables = [c for c in _components(json.loads(payload)) if c.get("type") == "table"]
    assert max(len(t["columns"]) for t in tables) <= 7  # fits the UI's card width


def _components(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _components(value)
    elif isinstance(node, list):
        for value in node:
            yield from _components(value)


def test_every_step_has_one_card_with_an_id(run):
    for step, card_id in STEP_CARDS.items():
        cmd = [sys.executable, str(FLOW), "card", "list", f"{run.id}/{step}", "--as-json"]
        out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
        listed = json.loads(out.stdout[out.stdout.index("{") :])
        assert [card["id"] for card in listed["cards"]] == [card_id], step


def test_cards_say_what_happened(run, tmp_path):
    start = _card(run, "start", "inputs", tmp_path)
    assert "Configuration and inputs" in start and "preset:tiny" in start
    finetune = _card(run, "finetune", "training", tmp_path)
    assert "1 epoch trained" in finetune and "0 (start)" in finetune  # the tiny preset: 1 epoch
    assert "2 epochs trained" in _card(run, "pretrain", "training", tmp_path)
    end = _card(run, "end", "champion", tmp_path)
    assert "Champion gate" in end and "query_encoder.pt" in end and "report.md" in end
    for payload in (start, finetune, end):
        assert not re.search(r"\bnan\b", payload, re.IGNORECASE)


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


BLOCKED_IMPORTS = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    \"\"\"What the Metaflow UI's backend has: Metaflow, but neither this package nor torch.\"\"\"

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("recmodel", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Blocked())
from metaflow import Run, namespace

def builtin_only(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and builtin_only(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(builtin_only(v) for v in value)
    return type(value) in (str, int, float, bool, bytes, type(None))

namespace(None)
found = {}
for step in Run(sys.argv[1]):
    for task in step:
        for artifact in task:
            if artifact.id.startswith("_"):
                continue
            key = f"{step.id}/{artifact.id}"
            try:
                value = artifact.data
            except Exception as exc:
                found[key] = {"error": repr(exc)}
                continue
            found[key] = {"size": artifact.size, "builtin": builtin_only(value)}
            if artifact.id == "summary":
                found[key]["text"] = value
print(json.dumps(found))
"""


@pytest.fixture(scope="session")
def artifacts_without_the_code(run, tmp_path_factory):
    """Every artifact of every step, unpickled where neither recmodel nor torch imports."""
    script = tmp_path_factory.mktemp("ui") / "read_artifacts.py"
    script.write_text(textwrap.dedent(BLOCKED_IMPORTS))
    out = subprocess.run(
        [sys.executable, str(script), run.pathspec],
        check=True,
        capture_output=True,
        text=True,
        cwd=script.parent,  # not the repository: recmodel is not on the path
        env=os.environ.copy(),
    )
    return json.loads(out.stdout)


def test_every_artifact_reads_without_the_code_as_builtin_types(artifacts_without_the_code):
    found = artifacts_without_the_code
    steps = set(STEP_CARDS) | EXTRACTION_STEPS | GROUP_STEPS
    assert {key.split("/")[0] for key in found} == steps
    errors = {key: info["error"] for key, info in found.items() if "error" in info}
    assert not errors
    assert [key for key, info in found.items() if not info["builtin"]] == []


def test_every_step_has_a_small_json_summary(artifacts_without_the_code):
    found = artifacts_without_the_code
    for step in [*STEP_CARDS, *EXTRACTION_STEPS, *GROUP_STEPS]:
        summary = found[f"{step}/summary"]
        assert summary["size"] < UI_LIMIT and len(summary["text"].encode()) < UI_LIMIT, step
        assert isinstance(json.loads(summary["text"]), dict), step  # strict JSON: no NaN
    headline = json.loads(found["report/summary"]["text"])
    assert set(headline["models"]) == set(REPORT_MODELS)
    cell = headline["models"]["sasrec_two_stage"]["ndcg@10"]  # "mean [low, high]"
    mean, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
    assert low <= mean <= high
    assert json.loads(found["finetune/summary"]["text"])["epochs_trained"] == 1


def test_only_detail_exceeds_the_ui_limit(artifacts_without_the_code):
    large = {
        key.split("/")[1]
        for key, info in artifacts_without_the_code.items()
        if info.get("size", 0) >= UI_LIMIT
    }
    assert large <= LARGE_DETAIL


def test_runs_are_tagged_with_preset_and_source(run):
    assert {"preset:tiny", "source:synthetic"} <= set(run.tags)


def test_progress_goes_to_stdout_and_the_headline_ends_the_run(run):
    extract = run["extract_sessions"].task
    assert "INFO recmodel" in extract.stdout and "INFO" not in extract.stderr
    end = run["end"].task.stdout
    assert "best NDCG@10" in end and "report: " in end and "report.md" in end
    assert all(model in end for model in REPORT_MODELS)


def test_the_pretraining_steps_read_user_shards(run):
    for step, artifact, model in (
        ("pretrain", "pretrain_results", "sasrec_pretrain"),
        ("pretrain_no_logq", "no_logq_results", "sasrec_no_logq"),
    ):
        entry = run[step].task[artifact].data[model]
        assert entry["status"] == "ok" and entry["user_shards"] == 2, step
