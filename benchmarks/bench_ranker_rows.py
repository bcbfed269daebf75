"""The ranker fit on a sample of users (``ranker.max_train_rows``) against the ranker fit on
every candidate row, side by side on one run's data.

    python benchmarks/bench_ranker_rows.py                     # default preset
    python benchmarks/bench_ranker_rows.py --caps 0,200000,100000,50000

One extraction and one pretrained retriever (the flow's steps, in this process); then the
``materialize_ranker_scores`` step once per cap, each with the same candidates. Prints, per
cap, the rows each booster was fit on, the step's seconds, and the ranker's held-out quality
(AUC and NDCG@10 of the candidates it orders, on users whose labels no model saw).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--caps", default="0,200000,100000,50000", help="max_train_rows values")
    parser.add_argument("--overrides", default="{}", help="JSON, as the flow's --overrides")
    args = parser.parse_args()

    from recmodel.steps.common import RunTables
    from recmodel.steps.data import estimate_q, extract_sessions, start
    from recmodel.steps.distill import materialize_ranker_scores
    from recmodel.steps.models import pretrain

    overrides = json.loads(args.overrides)
    with tempfile.TemporaryDirectory(prefix="bench-ranker-") as tmp:
        root = Path(tmp)
        config, inputs, _ = start(args.preset, overrides, "canonical", "", "", "")
        refs, _, _ = extract_sessions(config, inputs, RunTables(root=str(root / "extract")))
        q_ref, _, _ = estimate_q(config, refs, RunTables(root=str(root / "q")))
        checkpoint, _ = pretrain(config, refs, q_ref, RunTables(root=str(root / "pretrain")))
        rows = []
        for cap in (int(c) for c in args.caps.split(",")):
            capped = {**overrides, "ranker": {**overrides.get("ranker", {}), "max_train_rows": cap}}
            config, inputs, _ = start(args.preset, capped, "canonical", "", "", "")
            begin = time.perf_counter()
            _, quality, _, _ = materialize_ranker_scores(
                config, inputs, refs, checkpoint, RunTables(root=str(root / f"ranker-{cap}"))
            )
            rows.append((cap, time.perf_counter() - begin, quality))
    print(f"preset {args.preset}; overrides {json.dumps(overrides)}\n")
    print("| max_train_rows | rows fit (folds; serving) of candidates | seconds | AUC | NDCG@10 |")
    print("|--:|---|--:|--:|--:|")
    for cap, seconds, quality in rows:
        fit = quality["fit_rows"]
        folds = ", ".join(f"{n:,}" for n in fit["folds"])
        print(
            f"| {cap:,} | {folds}; {fit['serving']:,} of {fit['candidates']:,} | {seconds:.1f} "
            f"| {quality['auc']:.4f} | {quality['ndcg@10']['ranker']:.4f} |"
        )


if __name__ == "__main__":
    main()
