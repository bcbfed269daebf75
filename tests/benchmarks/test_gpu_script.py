"""benchmarks/gpu.py: the FLOP formula, the pass/fail logic and the script end to end."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from recmodel.core.config import ModelConfig
from recmodel.retriever.model import Retriever
from recmodel.retriever.objective import DeviceBatch, next_item_loss

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
ROWS = (
    "loss",
    "grad_cosine",
    "topk_overlap@50",
    "ndcg@10",
    "train_loss_finite",
    "positions_per_s",
    "step_time",
    "model_flop_per_step",
    "model_flop_per_s",
    "matmul_flop_per_s",
    "utilization",
)
CHECKS = ("loss", "grad_cosine", "topk_overlap@50", "ndcg@10", "train_loss_finite")


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu = _load_script()


def _summary(stdout: str) -> dict[str, list[str]]:
    """Rows of the table printed last: name -> the remaining cells."""
    table = stdout[stdout.rindex("== summary") :].splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("check "))
    return {line.split()[0]: line.split()[1:] for line in table[header + 1 :] if line.strip()}


def _run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # One thread: on a loaded machine two spinning OpenMP threads make tiny ops 50x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_step_flops_tiny_case_by_hand():
    # N = B T = 2 tokens, P = 2, M = 3, D = 4, L = 1, I = 4 + 5 * 2 = 14, A = 8.
    cfg = ModelConfig(4, 1, 1, 2, 0.0, id_dim=4, meta_dim=2)
    case = gpu.Case(10, cfg, batch=1, negatives=3, n_users=1)
    assert gpu.step_flops(case, positions=2, tower_rows=7) == {
        "tower": 3 * (2 * 14 * 4 + 2 * 8 * 2) * 7,  # 3024
        "encoder": 3 * 2 * 2 * 12 * 16,  # 2304
        "attention": 3 * 4 * 1 * 4 * 4,  # 192
        "logits": 3 * 2 * 2 * 4 * 4,  # 192
        "repeat": 3 * 2 * 2 * 4,  # 48
    }
    no_repeat = gpu.Case(10, ModelConfig(4, 1, 1, 2, 0.0, repeat_aware=False), 1, 3, 1)
    assert gpu.step_flops(no_repeat, positions=2, tower_rows=7)["repeat"] == 0


def test_step_flops_matches_torch_flop_counter():
    """The analytic count against the matmuls the real loss and backward run (math attention).

    Two known gaps, both small: the acoustic layer's input is a buffer (no input gradient, so
    2 x forward, not 3 x) and the positive logits are an elementwise product, not a matmul.
    """
    case = gpu.QUICK.check
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = Retriever(gpu.random_catalog(case.n_items, rng), case.model)
    histories = gpu.random_histories(case.n_users, case.model.max_len + 1, case.n_items, rng)
    step = gpu.first_steps(histories, case, 1)[0]
    counts = rng.zipf(1.3, case.n_items + 1)
    batch = DeviceBatch.from_step(step, torch.device("cpu"))
    candidates = gpu.make_candidates(counts, case.negatives)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        next_item_loss(model, batch, candidates, torch.Generator().manual_seed(0), "all").backward()
    assert batch.inputs.shape == (case.batch, case.model.max_len)  # full windows: N = P
    negatives = candidates.draw(
        batch.global_targets, batch.targets, torch.Generator().manual_seed(0)
    )[0]
    rows = len(torch.unique(torch.cat([batch.inputs.ravel(), batch.targets, negatives])))
    assert gpu.tower_rows([step], case) >= rows  # the script's estimate, an upper bound
    analytic = sum(gpu.step_flops(case, len(batch.targets), rows).values())
    assert counter.get_total_flops() == pytest.approx(analytic, rel=0.01)


def test_cosine_and_overlap_exact():
    assert gpu.cosine(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 2.0])) == pytest.approx(
        1 / math.sqrt(2)
    )
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[4, 3, 2, 1], [5, 9, 10, 11]])
    assert gpu.topk_overlap(a, b) == (1.0 + 0.25) / 2


def _result(loss: float, grad: list[float], recs: np.ndarray):
    return gpu.CaseResult(loss, torch.tensor(grad, dtype=torch.float64), recs)


def test_compare_passes_identical_results_and_fails_each_difference():
    n_items, counts = 10_000, np.ones(10_001, dtype=np.int64)
    recs = np.arange(1, 21).reshape(2, 10)  # [U = 2, k = 10]
    ref = _result(2.0, [1.0, 2.0, 3.0], recs)
    same = gpu.compare(
        ref, _result(2.0 * (1 + 0.5 * gpu.LOSS_RTOL), [1, 2, 3], recs), n_items, counts
    )
    assert [r.status for r in same] == ["PASS"] * 4

    other = recs + 100  # no item in common: overlap 0, and NDCG loses the hits on top-k targets
    bad = gpu.compare(ref, _result(2.1, [3.0, -2.0, 0.0], other), n_items, counts)
    assert {r.name: r.status for r in bad} == {
        "loss": "FAIL",
        "grad_cosine": "FAIL",
        "topk_overlap@50": "FAIL",
        "ndcg@10": "FAIL",
    }


def test_random_histories_hold_repeats_within_the_catalog():
    histories = gpu.random_histories(50, 21, 1_000, np.random.default_rng(0))
    assert histories.n_users == 50 and (histories.lengths == 21).all()
    assert histories.items.min() >= 1 and histories.items.max() <= 1_000
    distinct = np.array([len(np.unique(histories.row(u))) for u in range(50)])
    assert (distinct < 21).mean() > 0.9  # re-listens from the user's pool


def test_format_table_and_exit_code():
    rows = [gpu.Row("loss", "1.0 vs 1.0", "rel <= 0.01", "PASS"), gpu.Row("x", "2", "", "BELOW")]
    assert gpu.format_table(rows).splitlines() == [
        "check  value       target       status",
        "loss   1.0 vs 1.0  rel <= 0.01  PASS",
        "x      2                        BELOW",
    ]
    assert gpu.exit_code(rows) == 0  # below the utilization target is reported, not a failure
    assert gpu.exit_code([*rows, gpu.Row("grad_cosine", "0.5", "> 0.99", "FAIL")]) == 1


@pytest.mark.slow
def test_quick_cpu_run_prints_the_table_last():
    result = _run_script("--quick", "--device", "cpu", "--profile", "always", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "where the step's time goes" in result.stdout
    assert result.stdout.index("torch.profiler") < result.stdout.rindex("== summary")
    rows = _summary(result.stdout)
    assert tuple(rows) == ROWS
    assert all(rows[name][-1] == "PASS" for name in CHECKS)
    assert rows["utilization"][-1] in ("OK", "BELOW")
    assert float(rows["positions_per_s"][0].replace(",", "")) > 0


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_run_on_cuda():
    result = _run_script(timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = _summary(result.stdout)
    assert tuple(rows) == ROWS
    assert all(rows[name][-1] == "PASS" for name in CHECKS)
