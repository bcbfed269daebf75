"""The steps over user shards: the test users, their scores and metrics are those of the run
loaded in memory (the pretraining steps' test scoring, the baselines step), and pretraining runs
end to end."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recmodel.core.tables import read_table
from recmodel.core.user_shards import UserShards
from recmodel.retriever.model import Retriever
from recmodel.steps.common import RunTables
from recmodel.steps.data import estimate_q, extract_sessions, start
from recmodel.steps.models import SASREC, baselines, dataset_of, pretrain
from recmodel.steps.step_data import load_step_data, trained_result

SHARDED = {"train": {"shard_events": 4_000, "epochs": 1}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config, inputs, _ = start("tiny", {}, "canonical", "", "", "")
    refs, _, _ = extract_sessions(config, inputs, RunTables(root=str(root / "extract")))
    sharded, _, _ = start("tiny", SHARDED, "canonical", "", "", "")
    return root, config, sharded, refs


def test_a_run_larger_than_a_shard_stays_on_disk_with_the_same_test_users(run):
    _, config, sharded, refs = run
    memory = load_step_data(config, refs)
    streamed = load_step_data(sharded, refs, sharded=True)
    assert isinstance(streamed.dataset, UserShards) and streamed.dataset.n_shards > 1
    assert streamed.dataset.n_events == len(memory.dataset.ts)
    assert streamed.test.users.tolist() == memory.test.users.tolist()
    assert streamed.test.histories is None and streamed.test.targets is None
    # Without the flag, and under the limit, every step loads the events as before.
    assert not isinstance(load_step_data(sharded, refs).dataset, UserShards)
    assert not isinstance(load_step_data(config, refs, sharded=True).dataset, UserShards)
    assert isinstance(dataset_of(sharded, refs), UserShards)


def test_test_scores_read_by_shard_equal_those_in_memory(run):
    root, config, sharded, refs = run
    memory = load_step_data(config, refs)
    streamed = load_step_data(sharded, refs, sharded=True)
    torch.manual_seed(0)
    model = Retriever(memory.dataset.items, memory.cfg.model).eval()
    result = SimpleNamespace(model=model, seconds=0.0, history=[], best_epoch=0)
    expected = trained_result(memory, "m", result, RunTables(root=str(root / "memory")))
    got = trained_result(streamed, "m", result, RunTables(root=str(root / "shards")))
    assert got["metrics"] == expected["metrics"]
    assert got["metrics"]["n_users"] == len(memory.test.users)
    assert read_table(got["recommendations"]).equals(read_table(expected["recommendations"]))


def test_the_pretrain_step_trains_and_scores_over_shards(run):
    root, _, sharded, refs = run
    q_ref, _, _ = estimate_q(sharded, refs, RunTables(root=str(root / "q")))
    tables = RunTables(root=str(root / "pretrain"))
    checkpoint, results = pretrain(sharded, refs, q_ref, tables, model=SASREC)
    entry = results[SASREC.name]
    assert entry["status"] == "ok" and len(entry["history"]) == 1
    assert entry["user_shards"] == load_step_data(sharded, refs, sharded=True).dataset.n_shards > 1
    assert 0.0 < entry["metrics"]["ndcg@10"] <= 1.0
    assert read_table(entry["recommendations"]).num_rows > 0 and checkpoint


def test_the_baselines_step_over_shards_equals_the_step_in_memory(run):
    root, config, sharded, refs = run
    expected = baselines(config, refs, RunTables(root=str(root / "baselines-memory")))
    got = baselines(sharded, refs, RunTables(root=str(root / "baselines-shards")))
    assert list(got) == list(expected) and len(got) >= 5
    for name, entry in got.items():
        assert entry["status"] == expected[name]["status"] == "ok", name
        assert entry["params"] == expected[name]["params"], name
        assert entry["metrics"] == pytest.approx(expected[name]["metrics"], rel=1e-6), name
        assert entry["metrics"]["n_users"] == expected[name]["metrics"]["n_users"] > 0
        table, want = (
            read_table(entry["recommendations"]),
            read_table(expected[name]["recommendations"]),
        )
        assert table.drop(["score"]).equals(want.drop(["score"])), name


def test_the_champions_week_over_shards_equals_the_week_in_memory(run):
    from recmodel.baselines.simple import Popularity
    from recmodel.steps.publish import candidate_week

    _, config, sharded, refs = run
    expected, got = candidate_week(config, refs), candidate_week(sharded, refs)
    assert got.user_ids.equals(expected.user_ids) and len(got.user_ids) > 0
    for field in ("indptr", "items", "ts"):
        assert np.array_equal(getattr(got.histories, field), getattr(expected.histories, field))
    memory = load_step_data(config, refs)
    assert got.histories.n_users == len(memory.test.users)
    assert np.array_equal(got.popular, Popularity().fit(memory.dataset).popular)
    assert np.array_equal(expected.popular, got.popular)


def test_the_baselines_top_k_runs_on_the_runs_device():
    from recmodel.core.presets import load_preset, with_overrides
    from recmodel.steps.models import baseline_options

    cpu = with_overrides(load_preset("tiny"), {"train": {"device": "cpu"}})
    assert baseline_options(cpu).device == "cpu"
    auto = baseline_options(load_preset("tiny"))  # train.device = "auto"
    assert auto.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert auto.chunk_items == load_preset("tiny").eval.chunk_items
