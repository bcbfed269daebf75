"""The comparison report against plain Python loops, handcrafted exact cases and its layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest

from recmodel.core.config import EvalConfig
from recmodel.report.build import (
    build_report,
    card_tables,
    report_card_components,
    write_report_files,
)
from recmodel.report.text import BETTER, SAME, WORSE, pretty_metric

KS = (10, 50, 100)
FAST = EvalConfig(bootstrap_samples=200, seed=3)
PROTOCOL = {
    "split": "temporal",
    "windows": {
        "pretrain": ["2024-01-01T00:00:00", "2024-02-20T00:00:00"],
        "test": ["2024-03-01T00:30:00", "2024-03-08T00:00:00"],
    },
    "gap_minutes": 30,
    "filter_seen": False,
}


def _recs(rows: list[tuple[str, object, object, int]]) -> pa.Table:
    """``(model, user, item, rank)`` tuples as the long recommendations table."""
    model, user, item, rank = (list(col) for col in zip(*rows, strict=True))
    return pa.table(
        {
            "model": model,
            "user_id": user,
            "item_id": item,
            "score": [-float(r) for r in rank],
            "rank": rank,
        }
    )


def _random_case(seed: int) -> dict:
    """String item ids, int user ids, ragged lists, missing users, rows outside the test set."""
    rng = np.random.default_rng(seed)
    n_items, n_users = 150, 40
    item_ids = [f"trk-{i}" for i in rng.permutation(n_items)]
    weights = 1.0 / np.arange(1, n_items + 1)  # low positions are popular: frequent hits
    weights /= weights.sum()
    rows = []
    for model in ("popularity", "als", "sasrec_two_stage", "zz_custom"):
        for user in range(n_users + 5):  # users 40..44 are not test users
            if rng.random() < 0.1:
                continue  # this model has no row for this user
            depth = int(rng.integers(0, 101))
            picks = rng.choice(n_items, size=depth, replace=False, p=weights)
            rows += [(model, user, item_ids[i], r + 1) for r, i in enumerate(picks)]
    recs = _recs(rows).take(rng.permutation(len(rows)))  # row order must not matter
    target_users = np.repeat(np.arange(n_users), rng.integers(1, 6, size=n_users))
    target_items = rng.choice(n_items, size=len(target_users), p=weights)  # duplicates happen
    targets = pa.table({"user_id": target_users, "item_id": [item_ids[i] for i in target_items]})
    items = pa.table({"item_id": item_ids, "count": rng.integers(0, 8, size=n_items)})
    return {"recs": recs, "targets": targets, "items": items}


def _brute_force(recs: pa.Table, targets: pa.Table, items: pa.Table, model: str) -> dict:
    """Every metric of one model by plain loops over Python lists."""
    target_sets: dict = {}
    for row in targets.to_pylist():
        target_sets.setdefault(row["user_id"], set()).add(row["item_id"])
    ranked: dict = {}
    for row in sorted(recs.to_pylist(), key=lambda r: r["rank"]):
        if row["model"] == model:
            ranked.setdefault(row["user_id"], []).append(row["item_id"])
    counts = {row["item_id"]: row["count"] for row in items.to_pylist()}
    pct = {
        i: 100.0 * sum(c < counts[i] for c in counts.values()) / (len(counts) - 1) for i in counts
    }
    out = {}
    for k in KS:
        per_user, shown, pops = [], set(), []
        for user, wanted in target_sets.items():
            top = ranked.get(user, [])[:k]
            hits = [item in wanted for item in top]
            n_rel = min(len(wanted), k)
            ideal = sum(1 / math.log2(r + 2) for r in range(n_rel))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            per_user.append((sum(hits) / n_rel, dcg / ideal, float(any(hits))))
            shown |= set(top)
            if top:
                pops.append(sum(pct[i] for i in top) / len(top))
        for j, name in enumerate(("recall", "ndcg", "hitrate")):
            out[f"{name}@{k}"] = sum(v[j] for v in per_user) / len(per_user)
        out[f"coverage@{k}"] = len(shown) / len(counts)
        out[f"pop_pct@{k}"] = sum(pops) / len(pops)
    return out


@pytest.fixture(scope="module")
def random_report():
    case = _random_case(seed=11)
    models = {
        "als": {
            "status": "ok",
            "error": None,
            "fit_seconds": 130.0,
            "model_size": 9600,
            "params": {"factors": np.int64(64), "alpha": 40.0},
            "tuning": [
                {"factors": 32, "alpha": 1.0, "ndcg@10": np.float64(0.125)},
                {"factors": 64, "alpha": 40.0, "ndcg@10": np.float64(0.25)},
                {"factors": 64, "alpha": 100.0, "ndcg@10": float("nan")},
            ],
            "tuned_on": "7 validation users (a seeded sample of 30)",
            "refit": "the best refit before the test window",
        },
        "itemknn": {
            "status": "failed",
            "error": "MemoryError: similarity | matrix\nline 2",
            "fit_seconds": 1.0,
            "model_size": 0,
            "history": [],
        },
        "sasrec_two_stage": {
            "status": "ok",
            "fit_seconds": 900.0,
            "model_size": 1_234_567,
            "history": [{"epoch": 1, "loss": 5.0, "ndcg@10": 0.01}, {"epoch": 2, "loss": 4.0}],
            "best_epoch": 1,
            "params": {"logq": "all"},
            "fit_rule": "finetuned, no refit",
        },
    }
    report = build_report(case["recs"], case["targets"], case["items"], models, PROTOCOL, FAST)
    return case, report


def test_metrics_equal_plain_python_loops(random_report):
    case, report = random_report
    for model in ("popularity", "als", "sasrec_two_stage", "zz_custom"):
        want = _brute_force(case["recs"], case["targets"], case["items"], model)
        got = report.data["metrics"][model]
        assert got["n_users"] == 40
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (model, name)


def test_protocol_counts_are_measured(random_report):
    case, report = random_report
    protocol = report.data["protocol"]
    pairs = {(r["user_id"], r["item_id"]) for r in case["targets"].to_pylist()}
    assert protocol["n_test_users"] == 40
    assert protocol["n_targets"] == len(pairs)
    assert protocol["n_target_events"] == case["targets"].num_rows
    assert protocol["catalog_size"] == 150
    assert protocol["ks"] == [10, 50, 100]
    assert protocol["split"] == "temporal" and protocol["filter_seen"] is False


def test_models_in_canonical_order_and_failed_one_kept(random_report):
    _, report = random_report
    data = report.data
    assert data["models"] == ["popularity", "itemknn", "als", "sasrec_two_stage", "zz_custom"]
    assert data["failed"] == {"itemknn": "MemoryError: similarity | matrix\nline 2"}
    assert "itemknn" not in data["metrics"] and "itemknn" not in data["comparisons"]
    headers, rows = report.table
    assert [row[0] for row in rows] == [
        "popularity",
        "itemknn",
        "als",
        "sasrec_two_stage (reference)",
        "zz_custom",
    ]
    assert rows[1][1] == "failed: MemoryError: similarity | matrix"
    assert all(len(row) == len(headers) for row in rows)
    assert "failed: MemoryError: similarity \\| matrix" in report.markdown  # pipe escaped


def test_report_data_is_plain_json(random_report):
    _, report = random_report
    text = json.dumps(report.data)  # numpy scalars would raise here
    assert json.loads(text)["winners"] == report.data["winners"]


def test_winners_are_the_highest_values(random_report):
    _, report = random_report
    metrics = report.data["metrics"]
    for metric, winner in report.data["winners"].items():
        assert metrics[winner][metric] == max(row[metric] for row in metrics.values())


def test_markdown_states_protocol_and_every_model(random_report):
    _, report = random_report
    md = report.markdown
    for text in (
        "**Split**: temporal",
        "2024-03-01T00:30:00",
        "**Gap**: 30 min",
        "**Filtering**: not filtered",
        "**Test users**: 40",
        "**Catalog**: 150 tracks",
        "**Targets**:",
        "200 replicates",
        BETTER,
        WORSE,
        SAME,
    ):
        assert text in md
    for model in report.data["models"]:
        assert f"| {model}" in md
    assert md.index("## Protocol") < md.index("## Results") < md.index("| Model |")


def test_settings_state_what_each_model_ran_with_and_how_it_was_chosen(random_report):
    _, report = random_report
    settings = report.data["settings"]
    assert settings["als"] == {
        "params": {"factors": 64, "alpha": 40.0},
        "searched": 3,
        "best_validation_ndcg@10": 0.25,  # a NaN score never counts
        "tuned_on": "7 validation users (a seeded sample of 30)",
        "rule": "the best refit before the test window",
    }
    assert settings["sasrec_two_stage"] == {
        "params": {"logq": "all"},
        "best_epoch": 1,
        "rule": "finetuned, no refit",
    }
    assert settings["popularity"] == {"params": {}}
    md = report.markdown
    assert (
        "| `als` | factors=64, alpha=40.0 | 3 settings scored on 7 validation users (a seeded "
        "sample of 30), best NDCG@10 0.2500 |"
    ) in md
    assert "| `sasrec_two_stage` | logq=all | epoch 1 kept |" in md
    assert "- `als`: the best refit before the test window" in md
    assert md.index("## Results") < md.index("## Settings")


def test_user_without_rows_counts_as_zero():
    recs = _recs([("als", "u1", 7, 1), ("als", "u1", 8, 2)])  # no row at all for u2
    targets = pa.table({"user_id": ["u1", "u2", "u2"], "item_id": [7, 8, 8]})
    items = pa.table({"item_id": [7, 8, 9], "count": [3, 2, 1]})
    report = build_report(recs, targets, items, {}, {}, FAST, reference_model="als")
    got = report.data["metrics"]["als"]
    assert got["n_users"] == 2
    assert got["recall@10"] == 0.5 and got["hitrate@10"] == 0.5
    assert got["ndcg@10"] == 0.5  # u1 hits at rank 1 (DCG 1 / IDCG 1), u2 counts 0
    assert got["coverage@10"] == pytest.approx(2 / 3)
    assert report.data["users_without_recommendations"] == {"als": 1}
    assert "1 of 2 test users got no recommendation" in report.markdown


def _one_target_case() -> dict:
    """40 users with one target each; the reference and its twin always hit it at rank 1."""
    users = [f"u{u}" for u in range(40)]
    rows = []
    for u, user in enumerate(users):
        hit, miss = u + 1, 100 + u
        rows += [
            ("sasrec_two_stage", user, hit, 1),
            ("sasrec_pretrain", user, hit, 1),
            ("popularity", user, miss, 1),
        ]
    return {
        "recs": _recs(rows),
        "targets": pa.table({"user_id": users, "item_id": list(range(1, 41))}),
        "items": pa.table({"item_id": list(range(1, 141)), "count": [1] * 140}),
    }


@pytest.fixture(scope="module")
def one_target_case():
    return _one_target_case()


def test_constant_values_give_zero_width_interval(one_target_case):
    c = one_target_case
    report = build_report(c["recs"], c["targets"], c["items"], {}, PROTOCOL, FAST)
    assert report.data["intervals"]["sasrec_two_stage"]["recall@10"] == [1.0, 1.0]
    assert report.data["intervals"]["popularity"]["ndcg@100"] == [0.0, 0.0]
    same = report.data["comparisons"]["sasrec_pretrain"]["ndcg@10"]
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "significant": False, "p_value": 1.0}
    better = report.data["comparisons"]["popularity"]["ndcg@10"]
    assert better["diff"] == 1.0 and better["significant"] and better["p_value"] < 0.01
    rows = {row[0]: row for row in report.table[1]}
    assert rows["sasrec_pretrain"][1] == "1.0000 [1.0000, 1.0000] ="
    assert rows["popularity"][1] == "0.0000 [0.0000, 0.0000] ▲"
    assert rows["sasrec_two_stage (reference)"][1] == "1.0000 [1.0000, 1.0000]"


def test_worse_reference_gets_down_marks(one_target_case):
    c = one_target_case
    report = build_report(
        c["recs"], c["targets"], c["items"], {}, PROTOCOL, FAST, reference_model="popularity"
    )
    rows = {row[0]: row for row in report.table[1]}
    assert all(cell.endswith(WORSE) for cell in rows["sasrec_two_stage"][1:8])
    assert "Significantly worse than: `sasrec_pretrain`, `sasrec_two_stage`" in report.markdown


def test_noisy_difference_is_tested_not_assumed():
    """Reference hits 60% of users, other 40%, on different users: a real paired bootstrap."""
    rng = np.random.default_rng(5)
    n = 400
    ref_hits, other_hits = rng.random(n) < 0.6, rng.random(n) < 0.4
    rows = [("sasrec_two_stage", u, 1 if h else 2, 1) for u, h in enumerate(ref_hits)]
    rows += [("als", u, 1 if h else 2, 1) for u, h in enumerate(other_hits)]
    targets = pa.table({"user_id": list(range(n)), "item_id": [1] * n})
    items = pa.table({"item_id": [1, 2], "count": [5, 1]})
    report = build_report(_recs(rows), targets, items, {}, {}, EvalConfig(seed=1))
    test = report.data["comparisons"]["als"]["hitrate@10"]
    assert test["diff"] == pytest.approx(ref_hits.mean() - other_hits.mean())
    assert test["lo"] < test["diff"] < test["hi"] and test["significant"]


def test_missing_reference_gives_no_marks(one_target_case):
    c = one_target_case
    models = {"sasrec_two_stage": {"status": "failed", "error": "CUDA out of memory"}}
    report = build_report(c["recs"], c["targets"], c["items"], models, PROTOCOL, FAST)
    assert report.data["comparisons"] == {}
    assert report.data["failed"] == {"sasrec_two_stage": "CUDA out of memory"}
    assert not any(
        m in cell for row in report.table[1] for cell in row for m in (BETTER, WORSE, " =")
    )
    assert "The reference model `sasrec_two_stage` is failed" in report.markdown


def test_id_types_are_matched_and_errors_name_the_problem():
    items = pa.table({"item_id": pa.array([10, 20, 30], pa.int64()), "count": [1, 2, 3]})
    targets = pa.table({"user_id": [1, 2], "item_id": pa.array([10, 30], pa.int64())})
    recs = _recs([("als", 1, 10, 1), ("als", 2, 20, 1)]).cast(
        pa.schema(
            [
                ("model", pa.dictionary(pa.int32(), pa.string())),
                ("user_id", pa.int32()),
                ("item_id", pa.int32()),
                ("score", pa.float64()),
                ("rank", pa.int64()),
            ]
        )
    )
    report = build_report(recs, targets, items, {}, {}, FAST, reference_model="als")
    assert report.data["metrics"]["als"]["recall@10"] == 0.5
    with pytest.raises(ValueError, match="recommendations of 'als'.*not in the catalog"):
        build_report(_recs([("als", 1, 99, 1)]), targets, items, {}, {}, FAST)
    with pytest.raises(ValueError, match="same user and rank"):
        build_report(_recs([("als", 1, 10, 1), ("als", 1, 20, 1)]), targets, items, {}, {}, FAST)
    with pytest.raises(ValueError, match="test_targets is empty"):
        build_report(recs, targets.slice(0, 0), items, {}, {}, FAST)


def test_card_components_build(random_report):
    from metaflow.cards import Image, Markdown, Table

    _, report = random_report
    components = report_card_components(report)
    rendered = [c.render() for c in components]
    assert isinstance(components[0], Markdown) and "## Protocol" in rendered[0]["source"]
    tables = [r for c, r in zip(components, rendered, strict=True) if isinstance(c, Table)]
    assert len(tables) == 2 and all(len(t["data"]) == len(report.data["models"]) for t in tables)
    images = [r for c, r in zip(components, rendered, strict=True) if isinstance(c, Image)]
    assert [r["type"] for r in images] == ["image"] * len(report.figures) == ["image"] * 3


def test_card_tables_split_the_results_table_with_the_model_first(random_report):
    """Twelve columns of intervals overflow a card in the Metaflow UI: two tables instead."""
    _, report = random_report
    headers, rows = report.table
    parts = card_tables(report.table)
    assert [len(h) for _, (h, _) in parts] == [7, 6]
    assert all(
        h[0] == "Model" and [r[0] for r in r_] == [r[0] for r in rows] for _, (h, r_) in parts
    )
    first, second = (h for _, (h, _) in parts)
    assert all(h.startswith(("Recall@", "NDCG@")) for h in first[1:])
    assert sorted(first[1:] + second[1:]) == sorted(headers[1:])  # every column once


def test_figures_are_png_and_files_link_them(random_report, tmp_path: Path):
    _, report = random_report
    assert set(report.figures) == {"metric_bars", "popularity", "training_curves"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in report.figures.values())
    paths = write_report_files(report, tmp_path / "out")
    md = Path(paths["markdown"])
    assert md.read_text(encoding="utf-8") == report.markdown
    for name in report.figures:
        assert f"]({name}.png)" in report.markdown
        assert (md.parent / f"{name}.png").read_bytes() == report.figures[name]


def test_metric_labels_shared_by_tables_and_figures():
    assert pretty_metric("ndcg@10") == "NDCG@10"
    assert pretty_metric("pop_pct@100") == "Popularity pct@100"
    assert pretty_metric("mrr@5") == "mrr@5"  # no label: kept as it is
    assert pretty_metric("coverage") == "Coverage"


def test_repeat_and_new_targets_equal_plain_loops_on_their_own_targets():
    case = _random_case(seed=5)
    rng = np.random.default_rng(5)
    heard = rng.random(case["targets"].num_rows) < 0.6
    targets = case["targets"].append_column("heard_before", pa.array(heard))
    report = build_report(case["recs"], targets, case["items"], {}, PROTOCOL, FAST)
    kinds = report.data["by_target_kind"]
    assert set(kinds) == {"repeat", "new"}
    for kind, keep in (("repeat", heard), ("new", ~heard)):
        subset = targets.filter(pa.array(keep))
        assert kinds[kind]["n_users"] == len(set(subset["user_id"].to_pylist()))
        for model in ("popularity", "als", "sasrec_two_stage"):
            want = _brute_force(case["recs"], subset, case["items"], model)
            got = kinds[kind]["metrics"][model]
            assert got["ndcg@10"] == pytest.approx(want["ndcg@10"])
            assert got["recall@100"] == pytest.approx(want["recall@100"])
    # the retriever alone is the reference here (no two_stage_ranked): its tests are there
    tests = kinds["new"]["comparisons_by_reference"]["sasrec_two_stage"]["als"]
    assert set(tests) == {"ndcg@10", "recall@100"}
    assert "## Repeat and new targets" in report.markdown


def test_the_served_system_is_the_reference_and_the_retriever_is_tested_too():
    case = _random_case(seed=6)
    recs = case["recs"]
    ranked = recs.filter(pa.compute.equal(recs["model"], "als"))
    ranked = ranked.set_column(0, "model", pa.array(["two_stage_ranked"] * ranked.num_rows))
    report = build_report(
        pa.concat_tables([recs, ranked]), case["targets"], case["items"], {}, PROTOCOL, FAST
    )
    assert report.data["reference_model"] == "two_stage_ranked"
    assert set(report.data["comparisons_by_reference"]) == {"two_stage_ranked", "sasrec_two_stage"}
    same = report.data["comparisons"]["als"]["ndcg@10"]  # identical lists: a zero difference
    assert same["diff"] == 0.0 and not same["significant"]


def test_a_skipped_model_shows_its_reason_not_a_failure(one_target_case):
    c = one_target_case
    reason = "skipped: the similarity of 9,390,000 tracks x 200 neighbours needs 28.0 GiB"
    models = {"itemknn": {"status": "skipped", "error": reason}}
    report = build_report(c["recs"], c["targets"], c["items"], models, PROTOCOL, FAST)
    assert report.data["failed"] == {"itemknn": reason}
    row = next(row for row in report.table[1] if row[0] == "itemknn")
    assert row[1] == reason
    assert "## Failed or skipped models" in report.markdown
    assert f"failed: {reason}" not in report.markdown
