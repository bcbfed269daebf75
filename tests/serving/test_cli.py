"""``python -m recmodel``: argument handling, formatting, and commands over a constructed run."""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import recmodel.serving.cli as cli
from recmodel.core.columns import Window
from recmodel.core.config import ModelConfig
from recmodel.core.dataset_io import load_dataset
from recmodel.core.tables import local_path, write_table
from recmodel.retriever.checkpoint import model_config_dict, state_bytes
from recmodel.retriever.model import Retriever
from tests.helpers.retriever_data import item_features, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
ROOT = Path(__file__).resolve().parents[2]
N_ITEMS, N_USERS = 12, 4
CFG = ModelConfig(d_model=8, n_blocks=1, n_heads=2, max_len=5, dropout=0.0, id_dim=8, meta_dim=4)


def test_recommend_defaults():
    args = cli.build_parser().parse_args(["recommend", "--user", "42"])
    assert (
        args.command,
        args.run,
        args.flow,
        args.user,
        args.k,
        args.model,
        args.as_of,
        args.filter_seen,
        args.namespace,
    ) == ("recommend", "latest", "TwoStageFlow", "42", 20, "finetune", "end", False, None)


def test_recommend_options():
    args = cli.build_parser().parse_args(
        [
            "recommend",
            "--run",
            "1712",
            "--flow",
            "Other",
            "--user",
            "u1",
            "-k",
            "5",
            "--model",
            "pretrain",
            "--as-of",
            "test",
            "--filter-seen",
            "--namespace",
            "global",
        ]
    )
    assert (
        args.run,
        args.flow,
        args.k,
        args.model,
        args.as_of,
        args.filter_seen,
        args.namespace,
    ) == ("1712", "Other", 5, "pretrain", "test", True, "global")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["recommend"],
        ["recommend", "--user", "1", "-k", "0"],
        ["recommend", "--user", "1", "--as-of", "pretrain"],
        ["export"],
        ["train"],
    ],
)
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_format_table_exact():
    text = cli.format_table(("model", "ndcg@10", "n"), [("als", 0.25, 3), ("popularity", None, 12)])
    assert text == ("model       ndcg@10   n\nals          0.2500   3\npopularity        -  12")


REPORT = {
    "protocol": {"split": "temporal", "filter_seen": False, "n_test_users": 120},
    "metrics": {
        "als": {"ndcg@10": 0.125, "recall@10": 0.25, "recall@100": 0.5},
        "sasrec_two_stage": {
            "ndcg@10": 0.25,
            "recall@10": 0.375,
            "recall@100": 0.75,
            "coverage@100": 0.5,
        },
    },
    "failed": {"itemknn": "MemoryError"},
}


def run_main(argv, artifacts, monkeypatch, pathspec="F/7"):
    monkeypatch.setattr(cli, "open_run", lambda args: (pathspec, artifacts.__getitem__))
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(argv, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_report_output_exact(monkeypatch):
    artifacts = {"report": REPORT, "report_files": {"markdown": "/runs/F/7/report.md"}}
    status, out, _ = run_main(["report", "--run", "7", "--flow", "F"], artifacts, monkeypatch)
    assert status == 0
    assert out == textwrap.dedent("""\
        F/7 report: /runs/F/7/report.md
        protocol: temporal split, seen kept, 120 test users
        best ndcg@10: sasrec_two_stage 0.2500
        model             ndcg@10  recall@10  recall@100  coverage@100
        sasrec_two_stage   0.2500     0.3750      0.7500        0.5000
        als                0.1250     0.2500      0.5000             -
        failed: itemknn: MemoryError
    """)


def items_table(feats):
    """The items table as extraction writes it, from ItemFeatures."""
    idx = np.arange(1, N_ITEMS + 1)
    vectors = [feats.acoustic[i].tolist() if feats.has_acoustic[i] else None for i in idx]
    return pa.table(
        {
            "item_idx": pa.array(idx, pa.int32()),
            "item_id": [f"trk{i:03d}" for i in idx],
            "count": pa.array(np.arange(N_ITEMS, 0, -1) * 10, pa.int64()),
            "artist_idx": pa.array(feats.artist[1:], pa.int32()),
            "album_idx": pa.array(feats.album[1:], pa.int32()),
            "genre_idx": pa.array(feats.genre[1:], pa.int32()),
            "tempo_bucket": pa.array(feats.tempo_bucket[1:], pa.int32()),
            "track_length_seconds": pa.array(feats.track_length[1:], pa.float64()),
            "embedding": pa.array(vectors, pa.list_(pa.float32())),
        }
    )


def events_table():
    """Each user's listens, five in pretrain then one per later window (sorted by user, ts)."""
    rng = np.random.default_rng(2)
    rows = []
    for user in range(N_USERS):
        windows = [Window.PRETRAIN] * 5 + [Window.FINETUNE, Window.VAL, Window.TEST]
        for t, window in enumerate(windows):
            rows.append((user, int(rng.integers(1, N_ITEMS + 1)), 1_700_000_000 + 3600 * t, window))
    users, items, ts, windows = zip(*rows, strict=True)
    return pa.table(
        {
            "user_idx": pa.array(users, pa.int32()),
            "item_idx": pa.array(items, pa.int32()),
            "ts": pa.array(ts, pa.int64()),
            "window": pa.array(windows, pa.int8()),
        }
    )


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """The artifacts of a finished run: tables, a checkpoint, a report (no Metaflow)."""
    root = tmp_path_factory.mktemp("run")
    feats = item_features(N_ITEMS)
    torch.manual_seed(0)
    model = Retriever(feats, CFG).eval()
    users = pa.table(
        {
            "user_idx": pa.array(range(N_USERS), pa.int32()),
            "user_id": pa.array([100 + u for u in range(N_USERS)], pa.int64()),
        }
    )
    refs = {
        "events": write_table(events_table(), str(root / "events.parquet")),
        "items": write_table(items_table(feats), str(root / "items.parquet")),
        "users": write_table(users, str(root / "users.parquet")),
    }
    checkpoint = {"safetensors": state_bytes(model), "model_config": model_config_dict(CFG, feats)}
    return {
        "tables": refs,
        "finetune_checkpoint": checkpoint,
        "report": REPORT,
        "report_files": {"markdown": str(root / "report.md")},
        "model": model,
    }


def expected_items(fake_run, user_idx, before, k, filter_seen=False):
    """The model's own top-k on the user's history, read through the Dataset loader."""
    refs = fake_run["tables"]
    dataset = load_dataset(*(local_path(refs[n]) for n in ("events", "items", "users")))
    history = dataset.history(before)
    ids, _ = fake_run["model"].recommend(
        history,
        np.array([user_idx]),
        k,
        exclude=history.take(np.array([user_idx])) if filter_seen else None,
    )
    return [f"trk{i:03d}" for i in ids[0] if i > 0], len(history.row(user_idx))


def listed(out):
    """item_id column of the recommendation table in the output."""
    lines = out.splitlines()[2:-1]  # header line, column titles ... footnote
    return [line.split()[1] for line in lines]


@pytest.mark.parametrize(
    "as_of, before, last",
    [
        ("end", Window.TEST + 1, "2023-11-15 05:13"),  # ts 1_700_000_000 is 2023-11-14 22:13 UTC
        ("test", Window.TEST, "2023-11-15 04:13"),
        ("finetune", Window.FINETUNE, "2023-11-15 02:13"),
    ],
)
def test_recommend_uses_the_users_history_as_of(fake_run, monkeypatch, as_of, before, last):
    status, out, err = run_main(
        ["recommend", "--user", "102", "-k", "6", "--as-of", as_of], fake_run, monkeypatch
    )
    assert status == 0, err
    items, n_history = expected_items(fake_run, 2, before, k=6)
    assert listed(out) == items
    assert out.splitlines()[0] == (
        f"F/7 · finetune_checkpoint · user 102 (user_idx 2) · "
        f"{n_history} listens, last {last} UTC (as of {as_of})"
    )
    assert n_history == {"end": 8, "test": 7, "finetune": 5}[as_of]


def test_recommend_row_shows_metadata_and_counts(fake_run, monkeypatch):
    status, out, _ = run_main(
        ["recommend", "--user", "101", "-k", str(N_ITEMS), "--filter-seen"], fake_run, monkeypatch
    )
    assert status == 0
    items, _ = expected_items(fake_run, 1, Window.TEST + 1, k=N_ITEMS, filter_seen=True)
    assert listed(out) == items and len(items) < N_ITEMS  # heard tracks are left out
    first = out.splitlines()[2].split()
    item = int(first[1][3:])
    feats = item_features(N_ITEMS)
    assert first[0] == "1" and first[3] == "0"  # rank 1, never heard (filtered)
    assert [int(v) for v in first[4:]] == [
        (N_ITEMS - item + 1) * 10,
        feats.artist[item],
        feats.album[item],
        feats.genre[item],
        feats.tempo_bucket[item],
    ]


@pytest.mark.parametrize(
    "user, message",
    [
        ("999", "user '999' is not among the run's 4 users"),
        ("abc", "user ids of this run are integers, got 'abc'"),
    ],
)
def test_unknown_user_is_a_one_line_error(fake_run, monkeypatch, user, message):
    status, out, err = run_main(["recommend", "--user", user], fake_run, monkeypatch)
    assert status == 1 and out == "" and err.strip() == f"error: {message}"


def test_export_writes_loadable_serving_files(fake_run, monkeypatch, tmp_path):
    status, out, _ = run_main(["export", "--out", str(tmp_path)], fake_run, monkeypatch)
    assert status == 0 and out.startswith("F/7 · finetune_checkpoint: 12 item vectors of width 8")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    encoder = torch.jit.load(str(tmp_path / manifest["files"]["encoder"]))
    window = torch.tensor([[0, 0, 3, 4, 3]])
    with torch.no_grad():
        model = fake_run["model"]
        expected = model.head.user_side(model(window)[:, -1])
        np.testing.assert_allclose(encoder(window).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


FAKE_FLOW = textwrap.dedent('''
    import pickle

    from metaflow import FlowSpec, Parameter, step


    class FakeRunFlow(FlowSpec):
        """Stores prepared artifacts under the names TwoStageFlow uses."""

        artifacts = Parameter("artifacts", help="pickle of the artifacts to store")

        @step
        def start(self):
            with open(self.artifacts, "rb") as fh:
                for name, value in pickle.load(fh).items():
                    setattr(self, name, value)
            self.next(self.end)

        @step
        def end(self):
            pass


    if __name__ == "__main__":
        FakeRunFlow()
''')


@pytest.mark.slow
@pytest.mark.flow
def test_cli_reads_a_real_run_in_a_fresh_process(fake_run, tmp_path, monkeypatch):
    from metaflow import Runner

    env = {
        k: os.environ[k]
        for k in ("METAFLOW_USER", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")
    }
    stored = {k: v for k, v in fake_run.items() if k != "model"}
    (tmp_path / "artifacts.pkl").write_bytes(pickle.dumps(stored))
    (tmp_path / "fake_flow.py").write_text(FAKE_FLOW)
    with Runner(str(tmp_path / "fake_flow.py"), show_output=False, env=env).run(
        artifacts=str(tmp_path / "artifacts.pkl")
    ) as result:
        assert result.status == "successful", result.stderr
        pathspec = result.run.pathspec
    for argv in (["recommend", "--user", "103", "-k", "4"], ["report"]):
        argv = [*argv, "--run", "latest", "--flow", "FakeRunFlow"]
        done = subprocess.run(
            [sys.executable, "-m", "recmodel", *argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        _, expected, _ = run_main(argv, fake_run, monkeypatch, pathspec=pathspec)
        assert done.stdout == expected


@pytest.fixture
def champion_runs(monkeypatch):
    """F/1 champion, F/2 rejected, F/3 champion (current) in fake Metaflow; decisions stored."""
    import metaflow

    import recmodel.core.tables as tables
    from tests.serving.test_champion import FakeFlow, FakeRun

    runs = [FakeRun(1, {"champion"}), FakeRun(2, {"rejected"}), FakeRun(3, {"champion"})]
    by_path = {run.pathspec: run for run in runs}
    monkeypatch.setattr(FakeFlow, "runs_by_flow", {"F": runs})
    monkeypatch.setattr(metaflow, "Flow", FakeFlow)
    monkeypatch.setattr(metaflow, "Run", by_path.__getitem__)
    reasons = {"F/1": "no champion yet: promoted", "F/2": "...: rejected", "F/3": "...: promoted"}
    decision = lambda name, run, **kw: {"reason": reasons[run.pathspec]}  # noqa: E731
    monkeypatch.setattr(tables, "load_artifact", decision)
    return runs


def champion_main(argv):
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["champion", "--flow", "F", *argv], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_champion_shows_the_current_champion_and_why(champion_runs):
    assert champion_main([]) == (0, "F/3 is the champion: ...: promoted\n", "")


def test_champion_revoke_then_promote_by_hand(champion_runs):
    assert champion_main(["--revoke", "3"]) == (0, "F/3 revoked; champion now: F/1\n", "")
    assert champion_main(["--promote", "2"]) == (0, "F/2 is the champion (promoted by hand)\n", "")
    assert champion_runs[1].tags == {"champion", "promoted_by_hand"}
    shown = "F/2 is the champion: promoted by hand (its gate: ...: rejected)\n"
    assert champion_main([]) == (0, shown, "")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--revoke", "2"], "error: F/2 is not a champion\n"),
        (["--promote", "1"], "error: F/3 is a newer champion; revoke it first"),
    ],
)
def test_champion_by_hand_errors_are_one_line(champion_runs, argv, message):
    status, out, err = champion_main(argv)
    assert (status, out) == (1, "") and err.startswith(message)


def test_champion_options_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["champion", "--promote", "1", "--revoke", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
