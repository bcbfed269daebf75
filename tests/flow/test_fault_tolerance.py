"""Training survives faults: saved state, resume equals an uninterrupted run, retry and resume.

The in-process tests interrupt :func:`recmodel.retriever.train.pretrain` by raising from its progress
callback and call it again with the same state store; the result must equal a run that was
never interrupted, bit for bit. The flow tests kill a step through ``$RECMODEL_FAIL_ONCE`` and
check that ``@retry`` continues from the saved state, and that ``resume finetune`` reuses the
earlier steps.
"""

import dataclasses
import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
import torch.distributed as dist

import recmodel.retriever.progress
import recmodel.retriever.train_state
from recmodel.core.config import EvalConfig, ModelConfig, QConfig, TrainConfig
from recmodel.retriever.batches import WindowBatcher, make_windows
from recmodel.retriever.faults import FAIL_ONCE_ENV, FaultSpec, InjectedFault, inject_fault
from recmodel.retriever.train import pretrain
from recmodel.retriever.train_state import (
    CHECKPOINT_EVERY_ENV,
    DEFAULT_CHECKPOINT_EVERY,
    TrainStateStore,
    checkpoint_every,
)
from tests.helpers.gloo_group import join_gloo_group, spawn_ranks
from tests.helpers.retriever_data import cycle_dataset

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "flows" / "two_stage.py"
# Dropout on: a resume must restore the global RNG too, not only the sampler's generator.
MODEL = ModelConfig(
    d_model=16, n_blocks=1, n_heads=2, max_len=10, dropout=0.2, id_dim=16, meta_dim=4
)
TRAIN = TrainConfig(
    epochs=3,
    batch_size=32,
    lr=1e-2,
    sparse_lr=3e-2,
    warmup_steps=3,
    n_negatives=8,
    patience=10,
    eval_users=40,
    device="cpu",
)
EVAL = EvalConfig(ks=(10,))
COMPARED = ("epoch", "loss", "ndcg@10", "recall@10")  # history columns that are not timings


class Interrupt(RuntimeError):
    """Stands in for a lost process."""


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """One thread for every training here, module fixtures included: results are compared
    bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cycle():
    return cycle_dataset(n_items=20, n_users=40, length=25)


@pytest.fixture(scope="module")
def uninterrupted(cycle):
    with torch.random.fork_rng():
        return train(cycle)


def train(dataset, store=None, fail=None, cfg=TRAIN):
    """Pretrain on ``dataset``; ``fail(info)`` may raise from the progress reports."""
    return pretrain(
        dataset, dataset.item_counts, MODEL, cfg, QConfig(), EVAL, progress=fail, state_store=store
    )


def fail_when(key, value):
    def report(info):
        if info.get(key) == value:  # step records; the epoch rows have no "step"
            raise Interrupt(f"{key}={value}")

    return report


def assert_same_training(result, reference):
    state, expected = result.model.state_dict(), reference.model.state_dict()
    assert state.keys() == expected.keys()
    for name in expected:
        assert torch.equal(state[name], expected[name]), name
    rows = [{k: r[k] for k in COMPARED} for r in result.history]
    assert rows == [{k: r[k] for k in COMPARED} for r in reference.history]
    assert result.best_epoch == reference.best_epoch
    assert result.checkpoint == reference.checkpoint


def test_resume_after_an_epoch_equals_an_uninterrupted_run(cycle, uninterrupted, tmp_path):
    store = TrainStateStore(str(tmp_path / "state.pt"))
    with torch.random.fork_rng(), pytest.raises(Interrupt):
        train(cycle, store, fail_when("epoch", 1))  # dies in epoch 1: epoch 0 is saved
    assert store.load()["epoch"] == 1
    with torch.random.fork_rng():
        resumed = train(cycle, TrainStateStore(str(tmp_path / "state.pt")))
    assert resumed.resumed_from == {"epoch": 1, "step": 0}
    assert uninterrupted.resumed_from is None
    assert_same_training(resumed, uninterrupted)


def test_resume_inside_an_epoch_equals_an_uninterrupted_run(
    cycle, uninterrupted, tmp_path, monkeypatch
):
    # Loss checks (and so in-epoch saves) every 2 steps; the report after the last step of
    # epoch 2 dies, so the latest state is the in-epoch save after its second step.
    monkeypatch.setattr(recmodel.retriever.progress, "PROGRESS_EVERY", 2)
    steps_per_epoch = len(
        WindowBatcher(make_windows(cycle.train(), MODEL.max_len), TRAIN.batch_size, 0)
    )
    assert steps_per_epoch == 4  # 40 users x 3 windows of <= 10 positions, 32 per batch
    assert len(uninterrupted.history) == TRAIN.epochs
    store = TrainStateStore(str(tmp_path / "state.pt"), every_steps=1)
    assert store.every_steps == 2  # rounded up to where the loss monitor holds no losses
    with torch.random.fork_rng(), pytest.raises(Interrupt):
        train(cycle, store, fail_when("step", 2 * steps_per_epoch + 4))
    saved = store.load()
    assert (saved["epoch"], saved["step"]) == (2, 2)
    with torch.random.fork_rng():
        resumed = train(cycle, store)
    assert resumed.resumed_from == {"epoch": 2, "step": 2}
    assert_same_training(resumed, uninterrupted)


def test_a_finished_training_is_not_trained_again(cycle, uninterrupted, tmp_path):
    store = TrainStateStore(str(tmp_path / "state.pt"))
    with torch.random.fork_rng():
        train(cycle, store)
    reports = []
    with torch.random.fork_rng():
        again = train(cycle, store, fail=reports.append)
    assert again.resumed_from == {"epoch": TRAIN.epochs, "step": 0}
    assert reports == []  # no training step ran
    assert_same_training(again, uninterrupted)


def test_early_stopping_survives_a_resume(cycle, tmp_path):
    # patience 1: any epoch that does not improve stops the training.
    cfg = dataclasses.replace(TRAIN, epochs=6, patience=1, lr=0.5, sparse_lr=0.5)
    with torch.random.fork_rng():
        reference = train(cycle, cfg=cfg)
    stop = len(reference.history)
    assert stop < cfg.epochs, "the test needs a training that stops early"
    store = TrainStateStore(str(tmp_path / "state.pt"))
    with torch.random.fork_rng():
        train(cycle, store, cfg=cfg)  # saves the stopped state
    with torch.random.fork_rng():
        again = train(cycle, store, cfg=cfg)
    assert again.resumed_from == {"epoch": stop, "step": 0}
    assert_same_training(again, reference)


def test_a_state_of_another_training_is_ignored(cycle, tmp_path, caplog):
    store = TrainStateStore(str(tmp_path / "state.pt"))
    short = dataclasses.replace(TRAIN, epochs=1)
    with torch.random.fork_rng():
        train(cycle, store, cfg=short)
    other = dataclasses.replace(short, batch_size=16)
    with torch.random.fork_rng():
        result = train(cycle, store, cfg=other)
    assert result.resumed_from is None
    assert "belongs to another training" in caplog.text
    assert len(result.history) == 1


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: an uninterrupted training, then one interrupted after epoch 0 and resumed."""
    join_gloo_group(rank, world_size, port)
    try:
        dataset = cycle_dataset(n_items=20, n_users=40, length=25)
        reference = train(dataset)
        path = os.path.join(out_dir, "state.pt")

        def interrupt(epoch: int) -> None:  # every rank, at the same point
            if epoch == 0:
                raise Interrupt("after epoch 0")

        with pytest.raises(Interrupt):
            train(dataset, TrainStateStore(path, on_epoch_saved=interrupt))
        resumed = train(dataset, TrainStateStore(path))
        state, expected = resumed.model.state_dict(), reference.model.state_dict()
        report = {
            "resumed_from": resumed.resumed_from,
            "same_weights": all(torch.equal(state[k], expected[k]) for k in expected),
            "same_history": [r["loss"] for r in resumed.history]
            == [r["loss"] for r in reference.history],
            "checkpoint_bytes": len(resumed.checkpoint),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(report, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_resume_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    spawn_ranks(ddp_worker, 2, str(tmp_path), monkeypatch)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["resumed_from"] == {"epoch": 1, "step": 0}
        assert report["same_weights"] and report["same_history"]
    # Only rank 0 keeps the best weights, after a resume as before.
    assert reports[0]["checkpoint_bytes"] > 0 and reports[1]["checkpoint_bytes"] == 0


def test_a_failed_write_keeps_the_previous_state(tmp_path, monkeypatch):
    store = TrainStateStore(str(tmp_path / "state" / "m.pt"))
    assert store.load() is None and not store.exists()
    store.write({"epoch": 1, "weights": torch.arange(3)})

    def torn_write(obj, fh):
        fh.write(b"half a state")
        raise OSError("disk full")

    monkeypatch.setattr(recmodel.retriever.train_state.torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        store.write({"epoch": 2, "weights": torch.arange(5)})
    state = store.load()
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.arange(3))
    assert os.listdir(tmp_path / "state") == ["m.pt"]  # no temporary file left behind


def test_object_store_round_trip():
    fs = pafs.FileSystem.from_uri("mock:///")[0]  # in memory, written through streams
    store = TrainStateStore("bucket/run/train_state/m.pt", filesystem=fs)
    assert store.load() is None
    store.write({"epoch": 3, "history": [{"loss": 1.5}], "best": b"\x00safetensors"})
    assert store.load() == {"epoch": 3, "history": [{"loss": 1.5}], "best": b"\x00safetensors"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", DEFAULT_CHECKPOINT_EVERY), ("0", 0), (" 250 ", 250)],
)
def test_checkpoint_every_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(CHECKPOINT_EVERY_ENV, text)
    assert checkpoint_every() == expected


@pytest.mark.parametrize("text", ["-1", "1e3", "often"])
def test_checkpoint_every_rejects_non_counts(monkeypatch, text):
    monkeypatch.setenv(CHECKPOINT_EVERY_ENV, text)
    with pytest.raises(ValueError, match=CHECKPOINT_EVERY_ENV):
        checkpoint_every()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("finetune", FaultSpec("finetune", "start", False)),
        ("finetune:always", FaultSpec("finetune", "start", True)),
        ("pretrain:epoch1", FaultSpec("pretrain", "epoch1", False)),
        ("pretrain_no_logq:epoch0:always", FaultSpec("pretrain_no_logq", "epoch0", True)),
    ],
)
def test_fault_spec_parse(text, expected):
    assert FaultSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["pretrain:epoch", "pretrain:later", ":epoch1", "a:epoch1:b"])
def test_fault_spec_rejects_malformed_text(text):
    with pytest.raises(ValueError, match=FAIL_ONCE_ENV):
        FaultSpec.parse(text)


def test_a_fault_fires_once_per_marker_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ONCE_ENV, "pretrain:epoch1")
    inject_fault("pretrain", "epoch0", str(tmp_path))  # another point
    inject_fault("finetune", "epoch1", str(tmp_path))  # another stage
    with pytest.raises(InjectedFault, match="pretrain:epoch1"):
        inject_fault("pretrain", "epoch1", str(tmp_path))
    inject_fault("pretrain", "epoch1", str(tmp_path))  # the retry proceeds
    assert os.listdir(tmp_path) == ["fault-pretrain-epoch1.done"]
    with pytest.raises(InjectedFault):
        inject_fault("pretrain", "epoch1", str(tmp_path / "another_run"))


def test_an_always_fault_fires_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ONCE_ENV, "finetune:always")
    for _ in range(2):
        with pytest.raises(InjectedFault):
            inject_fault("finetune", "start", str(tmp_path))
    monkeypatch.delenv(FAIL_ONCE_ENV)
    inject_fault("finetune", "start", str(tmp_path))


# -- through the flow ---------------------------------------------------------------------


def _runner(extra_env):
    from metaflow import Runner

    env = {
        name: os.environ[name]
        for name in ("METAFLOW_USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")
    }
    return Runner(str(FLOW), show_output=False, env={**env, **extra_env}, cwd=str(ROOT))


@pytest.mark.flow
@pytest.mark.slow
def test_a_killed_pretrain_is_retried_from_its_saved_state():
    with _runner({FAIL_ONCE_ENV: "pretrain:epoch0"}).run(preset="tiny") as running:
        assert running.status == "successful", running.stderr
        run = running.run
    task = run["pretrain"].task
    assert task.current_attempt == 1  # the second attempt (0-based) succeeded
    entry = task["pretrain_results"].data["sasrec_pretrain"]
    assert entry["resumed_from"] == {"epoch": 1, "step": 0}
    assert [row["epoch"] for row in entry["history"]] == [0, 1]
    twin = run["pretrain_no_logq"].task
    assert twin.current_attempt == 0
    assert twin["no_logq_results"].data["sasrec_no_logq"]["resumed_from"] is None


@pytest.mark.flow
@pytest.mark.slow
def test_a_failed_run_resumes_at_finetune_reusing_earlier_steps():
    overrides = {"train": {"epochs": 1}}  # the Runner passes JSON parameters as objects
    with _runner({FAIL_ONCE_ENV: "finetune:always"}).run(
        preset="tiny", overrides=overrides
    ) as failing:
        assert failing.status == "failed"
        origin = failing.run
    assert origin["pretrain"].task.successful
    assert not origin["finetune"].task.successful
    assert origin["finetune"].task.current_attempt == 1  # @retry tried it twice
    with _runner({}).resume(step_to_rerun="finetune", origin_run_id=origin.id) as resuming:
        assert resuming.status == "successful", resuming.stderr
        run = resuming.run
    assert run.id != origin.id
    for step in ("extract_sessions", "estimate_q", "pretrain"):
        task = run[step].task
        assert task.metadata_dict.get("origin-task-id") == origin[step].task.id, step
    old, new = origin["pretrain"].task, run["pretrain"].task
    assert new["pretrain_checkpoint"].data == old["pretrain_checkpoint"].data
    assert new["tables"].data == old["tables"].data
    assert "origin-task-id" not in run["finetune"].task.metadata_dict
    assert "sasrec_two_stage" in run["end"].task["report"].data["metrics"]
    assert {"preset:tiny", "source:synthetic"} <= set(run.tags)  # start was reused, not rerun


@pytest.mark.flow
@pytest.mark.slow
def test_bad_input_stops_extraction_once_without_retries():
    """An InputError is deterministic: extract_sessions (@retry(times=2)) runs it once."""
    overrides = '{"extract": {"min_user_events": 100000}}'
    with _runner({}).run(preset="tiny", overrides=overrides) as running:
        assert running.status == "failed"
        run = running.run
    task = run["extract_sessions"].task
    assert task.current_attempt == 0 and not task.successful  # one attempt of three allowed
    assert "InputError: every event was filtered out by the thresholds" in task.stderr
    assert "min_user_events=100000" in task.stderr
    assert "the step is not retried" in task.stderr
