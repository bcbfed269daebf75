"""New targets ranked among the tracks the listener has not heard, for every row of a run.

The report's "new targets" columns score each model's list as served: in music most of a list
is re-listens, so a model that ranks favourites first scores near zero there however well it
ranks the rest. This script asks the other question, what a "new for you" surface would show:
each model's top-100 with the listener's heard tracks (every play before the test window)
removed, then NDCG@10 and Recall@50 against the new targets (tracks first played in the test
window). The lists are the run's published top-100, so a list is exact as long as at least 10
(or 50) unheard tracks remain in it; the last column counts the users for which fewer than 10
remain.

    python benchmarks/bench_discovery.py                    # the latest successful run
    python benchmarks/bench_discovery.py --run 1796404257486448
    METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/seeds/ds_default_default_seed0 \\
        python benchmarks/bench_discovery.py                # a run of benchmarks/bench_seeds.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyarrow.compute as pc

K, RECALL_K = 10, 50


def main() -> None:
    from metaflow import Flow, Run, namespace

    from recmodel.core.tables import load_artifact
    from recmodel.steps.step_data import load_step_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="latest", help="a TwoStageFlow run id, or latest")
    args = parser.parse_args()
    namespace(None)
    run = (
        Flow("TwoStageFlow").latest_successful_run
        if args.run == "latest"
        else Run(f"TwoStageFlow/{args.run}")
    )
    data = load_step_data(
        run["start"].task["config"].data, run["extract_sessions"].task["tables"].data
    )
    test = data.test
    heard = {int(u): set(test.histories.row(int(u)).tolist()) for u in test.users}
    new = {}
    for row, user in enumerate(test.users.tolist()):
        unheard_targets = set(test.targets.row(row).tolist()) - heard[user]
        if unheard_targets:
            new[user] = unheard_targets
    user_idx = {str(u): i for i, u in enumerate(data.user_ids.to_pylist())}
    item_idx = {str(v): i for i, v in enumerate(data.item_ids.to_pylist()) if v is not None}
    recs = load_artifact("recommendations", run=run)
    print(f"run {run.pathspec}: {len(new):,} test users with new targets\n")
    print(
        f"| model | NDCG@{K} among unheard | Recall@{RECALL_K} among unheard | users short of {K} |"
    )
    print("|---|--:|--:|--:|")
    for model in pc.unique(recs["model"]).to_pylist():
        rows = recs.filter(pc.equal(recs["model"], model)).sort_by("rank")
        lists: dict[int, list[int]] = {}
        for user, item in zip(
            rows["user_id"].to_pylist(), rows["item_id"].to_pylist(), strict=True
        ):
            lists.setdefault(user_idx[str(user)], []).append(item_idx[str(item)])
        ndcg, recall, short = [], [], 0
        for user, wanted in new.items():
            unheard = [i for i in lists.get(user, []) if i not in heard[user]]
            short += len(unheard) < K
            dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(unheard[:K]) if i in wanted)
            ideal = sum(1 / math.log2(r + 2) for r in range(min(len(wanted), K)))
            ndcg.append(dcg / ideal)
            recall.append(len(set(unheard[:RECALL_K]) & wanted) / min(len(wanted), RECALL_K))
        print(f"| {model} | {np.mean(ndcg):.4f} | {np.mean(recall):.4f} | {short:,} |")


if __name__ == "__main__":
    main()
