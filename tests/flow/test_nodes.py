"""Pretraining on two machines: Metaflow's @parallel runs each pretraining step as two tasks,
one data-parallel rank each reading its own user shards, and the first one publishes."""

import json
import os

import pytest

from recmodel.retriever.launch import free_port
from tests.flow.test_flow import FLOW, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.flow]


@pytest.fixture(scope="module")
def run():
    from metaflow import Runner

    env = {
        name: os.environ[name]
        for name in ("METAFLOW_USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")
    }
    # The tiny run's ~36k events in user shards of at most 20k: one per node.
    overrides = {"train": {"nodes": 2, "shard_events": 20_000, "master_port": free_port()}}
    runner = Runner(str(FLOW), show_output=False, env=env, cwd=str(ROOT))
    with runner.run(preset="tiny", overrides=overrides) as running:
        assert running.status == "successful", running.stderr
        return running.run


@pytest.mark.parametrize(
    ("step", "gather", "artifact", "model"),
    [
        ("pretrain", "pretrain_gather", "pretrain_results", "sasrec_pretrain"),
        ("pretrain_no_logq", "no_logq_gather", "no_logq_results", "sasrec_no_logq"),
    ],
)
def test_each_pretraining_step_ran_on_two_nodes_and_the_first_published(
    run, step, gather, artifact, model
):
    tasks = sorted(run[step], key=lambda task: task["node"].data)
    assert [task["node"].data for task in tasks] == [0, 1]
    first, second = tasks
    entry = first[artifact].data[model]
    assert entry["status"] == "ok" and entry["nodes"] == 2 and entry["user_shards"] == 2
    assert second[artifact].data == {}
    assert json.loads(second["summary"].data) == {
        "node": "2 of 2",
        "published_by": "node 1 (the same weights)",
    }
    assert json.loads(first["summary"].data)["node"] == "1 of 2"
    published = run[gather].task
    assert published[artifact].data == first[artifact].data
    checkpoint = artifact.replace("results", "checkpoint")
    assert published[checkpoint].data == first[checkpoint].data


def test_the_report_compares_the_models_trained_on_two_nodes(run):
    metrics = run["end"].task["report"].data["metrics"]
    for model in ("sasrec_pretrain", "sasrec_no_logq", "sasrec_two_stage"):
        assert 0.0 < metrics[model]["ndcg@10"] <= 1.0, model
