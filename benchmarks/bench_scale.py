"""Seconds and peak memory of the first stages of a run, on a synthetic log of Yambda's shape.

    python benchmarks/bench_scale.py --yambda 1000          # about 4.8M raw events
    python benchmarks/bench_scale.py --yambda 100           # about 48M raw events
    python benchmarks/bench_scale.py --yambda 1000 --work /tmp/scale --preset default
    python benchmarks/bench_scale.py --yambda 100 --work /tmp/scale --stages extract \
        --overrides '{"extract": {"shards": 10}}'   # again, on the log already generated

Four stages run one after the other (three more on request), each in its own child process
(``python benchmarks/bench_scale.py --stage NAME --work DIR``), and pass their results on
through JSON files in the work directory:

- ``generate``: the synthetic generator writes the raw log (``events.parquet``, ``items.parquet``);
- ``extract``: the SQL extraction (``recmodel.steps.data.extract_sessions``) of that log;
- ``q``: the Q table (``recmodel.steps.data.estimate_q``);
- ``pretrain``: ONE epoch of retriever pretraining (``recmodel.steps.models.pretrain``, with
  ``train.epochs = 1``), including its test recommendations, as the flow's ``pretrain`` step;
- ``baselines``, ``ranker`` and ``finetune`` (only with ``--stages``): the flow's
  ``baselines``, ``materialize_ranker_scores`` and ``finetune`` steps, the last two on the
  ``pretrain`` stage's checkpoint (``finetune.epochs`` as configured: ``--overrides``).

Tables are published into the work directory (``RunTables(root=...)``), without Metaflow.
Every 0.2 s the parent reads the resident memory (``VmRSS`` in ``/proc``) of the child and all
its descendants (spawned training workers included) and keeps the largest sum. A spike shorter
than a poll can fall between two reads, so the peak reported is the larger of that sum and the
child's own high-water mark (``ru_maxrss`` from ``wait4``; it covers the short Q stage). A
stage's seconds are the child's wall time, interpreter start and imports included. DuckDB's
memory limit and threads, and torch's threads, are the preset's. Linux only.

``--yambda S`` sets the generator to Yambda-5B's shape at 1/S (see ``bench_memory.py``):
1,000,000 / S users with its 4,790 raw events each, 9,390,000 / S tracks, over 300 days.
Without ``--work`` the work directory is a temporary one under /tmp, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_memory import POLL_SECONDS, processes, yambda_overrides  # noqa: E402

STAGES = ("generate", "extract", "q", "pretrain", "baselines", "ranker", "finetune")
DEFAULT_STAGES = STAGES[:4]


def tree_rss(root: int, table: dict[int, tuple[int, list[str], int]]) -> int:
    """Resident kB of process ``root`` and all its descendants in ``table`` (from ``processes``)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][2]
        todo.extend(children.get(pid, ()))
    return total


def watch_tree(root: int, stop: threading.Event, peak: list[int]) -> None:
    """Keep in ``peak[0]`` the largest resident kB of ``root``'s process tree until ``stop``."""
    while not stop.is_set():
        peak[0] = max(peak[0], tree_rss(root, processes()))
        stop.wait(POLL_SECONDS)


def merged(*layers: dict) -> dict:
    """Overrides layered section by section: a later layer's keys win within a section."""
    out: dict = {}
    for layer in layers:
        for section, values in layer.items():
            if isinstance(values, dict) and isinstance(out.get(section), dict):
                out[section] = {**out[section], **values}
            else:
                out[section] = values
    return out


def read(work: Path, name: str) -> dict:
    return json.loads((work / f"{name}.json").read_text())


def write(work: Path, name: str, value: dict) -> None:
    (work / f"{name}.json").write_text(json.dumps(value, indent=1, default=str))


# --- stages: each runs in its own child process -------------------------------------------


def stage_generate(work: Path, config: dict) -> dict:
    from recmodel.core.presets import from_dict
    from recmodel.synthetic.generator import generate

    cfg = from_dict(config, name=config.get("name", "custom"))
    paths = generate(cfg.synthetic, work / "raw")
    return {"events": str(paths.events), "items": str(paths.items), "n_events": paths.n_events}


def stage_extract(work: Path, config: dict) -> dict:
    from recmodel.steps.common import RunTables
    from recmodel.steps.data import extract_sessions

    raw = read(work, "generate")
    inputs = {"kind": "canonical", "events": raw["events"], "items": raw["items"]}
    inputs["ranker_scores"] = ""
    refs, _, summary = extract_sessions(config, inputs, RunTables(root=str(work / "tables")))
    return {"refs": refs, "summary": summary}


def stage_q(work: Path, config: dict) -> dict:
    from recmodel.steps.common import RunTables
    from recmodel.steps.data import estimate_q

    refs = read(work, "extract")["refs"]
    ref, summary, _ = estimate_q(config, refs, RunTables(root=str(work / "tables")))
    return {"ref": ref, "summary": summary}


def stage_pretrain(work: Path, config: dict) -> dict:
    from recmodel.retriever.train_state import STATE_DIR
    from recmodel.steps.common import RunTables
    from recmodel.steps.models import SASREC, pretrain

    refs, q_ref = read(work, "extract")["refs"], read(work, "q")["ref"]
    # A training state left by an earlier run would be resumed, not measured.
    shutil.rmtree(work / "tables" / STATE_DIR, ignore_errors=True)
    tables = RunTables(root=str(work / "tables"))
    checkpoint, results = pretrain(config, refs, q_ref, tables, None, None, model=SASREC)
    return {"checkpoint": checkpoint, "results": results}


def stage_baselines(work: Path, config: dict) -> dict:
    from recmodel.steps.common import RunTables
    from recmodel.steps.models import baselines

    refs = read(work, "extract")["refs"]
    results = baselines(config, refs, RunTables(root=str(work / "tables")))
    return {"results": results}


def stage_ranker(work: Path, config: dict) -> dict:
    from recmodel.steps.common import RunTables
    from recmodel.steps.distill import materialize_ranker_scores

    refs, checkpoint = read(work, "extract")["refs"], read(work, "pretrain")["checkpoint"]
    tables = RunTables(root=str(work / "tables"))
    ref, quality, ranker, _ = materialize_ranker_scores(config, {}, refs, checkpoint, tables)
    return {"ref": ref, "quality": quality, "ranker": ranker}


def stage_finetune(work: Path, config: dict) -> dict:
    from recmodel.steps.common import RunTables
    from recmodel.steps.distill import finetune

    refs, q_ref = read(work, "extract")["refs"], read(work, "q")["ref"]
    checkpoint, ranker = read(work, "pretrain")["checkpoint"], read(work, "ranker")
    tables = RunTables(root=str(work / "tables"))
    _, results, distillation = finetune(
        config, refs, q_ref, checkpoint, ranker["ref"], ranker["ranker"], tables
    )
    return {"results": results, "distillation": distillation}


def run_stage(name: str, work: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = read(work, "config")
    write(work, name, globals()[f"stage_{name}"](work, config))


# --- the parent: runs each stage in a child and measures it -------------------------------


def measure(name: str, work: Path) -> tuple[float, int]:
    """Run stage ``name`` in a child process; its wall seconds and peak RSS (kB).

    The peak is the larger of the polled sum over the child's process tree and the largest
    single process's high-water mark (the child's, or of a descendant it waited for).
    """
    env = {**os.environ}
    env.setdefault("METAFLOW_USER", "bench")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--work", str(work)]
    log = work / f"{name}.log"
    peak, stop = [0], threading.Event()
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch_tree, args=(child.pid, stop, peak), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        stop.set()
        child.returncode = code = os.waitstatus_to_exitcode(status)
    watcher.join()
    if code:
        sys.stderr.write(log.read_text()[-5000:])
        sys.exit(f"stage {name} failed (exit {code}); its log: {log}")
    return seconds, max(peak[0], usage.ru_maxrss)  # ru_maxrss is in kB on Linux


def benchmark(
    work: Path, preset: str, overrides: dict, stages: tuple[str, ...] = DEFAULT_STAGES
) -> None:
    from recmodel.core.presets import load_preset, with_overrides

    cfg = with_overrides(load_preset(preset), overrides)
    write(work, "config", cfg.to_dict())
    print(f"preset {preset}, overrides {json.dumps(overrides)}; work directory {work}\n")
    rows = []
    for name in stages:
        seconds, kb = measure(name, work)
        print(f"{name}: {seconds:,.1f} s, peak RSS {kb / 1024:,.0f} MB", file=sys.stderr)
        rows.append((name, seconds, kb))

    final = read(work, "extract")["summary"]["stages"]["final"]["all"]
    print(
        f"raw events {read(work, 'generate')['n_events']:,}; final: "
        f"{final['users']:,} users, {final['items']:,} tracks, {final['events']:,} events\n"
    )
    print("| stage | seconds | peak RSS (MB) |")
    print("|---|--:|--:|")
    for name, seconds, kb in rows:
        print(f"| {name} | {seconds:,.1f} | {kb / 1024:,.0f} |")
    if "baselines" in stages:
        print("\n| baseline | status | test ndcg@10 | fit seconds |\n|---|---|--:|--:|")
        for name, entry in read(work, "baselines")["results"].items():
            ndcg = entry.get("metrics", {}).get("ndcg@10", float("nan"))
            fit = entry.get("fit_seconds", float("nan"))
            print(f"| {name} | {entry['status']} | {ndcg:.4f} | {fit:,.1f} |")
    if "ranker" in stages:
        quality = read(work, "ranker")["quality"]
        print(
            f"\nranker: held-out AUC {quality['auc']:.4f}, NDCG@10 "
            f"{quality['ndcg@10']['ranker']:.4f} (retriever {quality['ndcg@10']['retriever']:.4f})"
        )
    if "finetune" in stages:
        for name, entry in read(work, "finetune")["results"].items():
            ndcg = entry.get("metrics", {}).get("ndcg@10", float("nan"))
            print(f"finetune: {name} test ndcg@10 {ndcg:.4f}")
    if "pretrain" not in stages:
        return
    entry = next(iter(read(work, "pretrain")["results"].values()))
    ndcg = entry.get("metrics", {}).get("ndcg@10", float("nan"))
    print(
        f"\npretrain: {len(entry.get('history', []))} epoch, training {entry['fit_seconds']:,.1f} s "
        f"of the stage; test ndcg@10 {ndcg:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--overrides", default="{}", help="JSON, as the flow's --overrides")
    parser.add_argument("--yambda", type=int, help="Yambda-5B's shape at 1/YAMBDA")
    parser.add_argument(
        "--work", type=Path, help="work directory to keep (default: a temporary one)"
    )
    parser.add_argument(
        "--stages",
        default=",".join(DEFAULT_STAGES),
        help="comma-separated stages to run (later ones need the earlier ones' work directory)",
    )
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.work)
        return
    stages = tuple(args.stages.split(","))
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {STAGES}")
    overrides = json.loads(args.overrides)
    if args.yambda:
        overrides = merged(yambda_overrides(args.yambda, args.preset), overrides)
    overrides = merged(overrides, {"train": {"epochs": 1}})
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        benchmark(args.work.resolve(), args.preset, overrides, stages)
        return
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir="/tmp") as tmp:
        benchmark(Path(tmp), args.preset, overrides, stages)


if __name__ == "__main__":
    main()
