"""Step logic of the data steps: ``start``, ``extract_sessions`` and ``estimate_q``.

Functions take the plain ``config`` artifact (a dict) and table references, and return what the
step stores; nothing here imports torch, so the data steps start quickly.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from recmodel.core.columns import Columns
from recmodel.core.config import PipelineConfig
from recmodel.core.footprint import run_problems
from recmodel.core.presets import load_preset, with_overrides
from recmodel.core.tables import local_path, read_table
from recmodel.ingest.checks import validate_source
from recmodel.ingest.extract import OUTPUTS, extract
from recmodel.ingest.qtable import build_q_table
from recmodel.ingest.readers import SourceSpec
from recmodel.ingest.sharded import (
    ROUNDS,
    extract_sharded,
    global_cut,
    partition_raw,
    remove_tables,
    run_merge,
    run_shard,
)
from recmodel.ingest.sources import register_source
from recmodel.steps.cards import q_card
from recmodel.steps.common import RunTables, config_of, connect_for, stops_on_bad_input

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"  # inputs["kind"] of the built-in generator


@stops_on_bad_input
def start(
    preset: str,
    overrides: dict,
    source: str,
    events: str,
    items: str,
    ranker_scores: str,
    pods: dict | None = None,
) -> tuple[dict, dict, dict]:
    """Resolve the configuration and validate every input before anything expensive.

    ``pods`` (the flow's ``resources`` Config) is checked against the memory model of each
    step at the input's size: a pod too small is a warning (local runs do not use pods).

    Returns:
        ``(config, inputs, checks)``: the effective configuration as a dict, the resolved
        inputs (source kind and paths), and what validation found (warnings, row counts).
    """
    cfg = load_preset(preset)
    if overrides:
        cfg = with_overrides(cfg, overrides)
    if not events and (items or source != "canonical"):
        raise ValueError(
            "--items and --source describe your own data: pass --events PATH too "
            "(without --events the flow generates synthetic data)"
        )
    inputs = {"kind": SYNTHETIC, "events": "", "items": "", "ranker_scores": ranker_scores}
    checks: dict[str, Any] = {"warnings": []}
    if events:
        spec = SourceSpec(kind=source, events=events, items=items or None)
        con = connect_for(cfg)
        checks["source"] = register_source(con, spec)
        checks["warnings"] = validate_source(
            con, spec, listen_threshold_pct=cfg.extract.listen_threshold_pct
        )
        inputs.update(kind=source, events=events, items=items)
    if ranker_scores:
        from recmodel.ranker.score_tables import check_ranker_scores_file

        checks["ranker_scores"] = check_ranker_scores_file(ranker_scores)
    if pods is not None:
        rows = checks.get("source", {}).get("rows_in_files")
        checks["warnings"] += [
            f"pods of the {pods['preset']!r} resources (--config-value resources): {problem}"
            for problem in run_problems(cfg, pods, not events, rows)
        ]
    for warning in checks["warnings"]:
        log.warning(warning)
    return cfg.to_dict(), inputs, checks


def _source_spec(cfg: PipelineConfig, inputs: dict, work: Path) -> SourceSpec:
    if inputs["kind"] != SYNTHETIC:
        return SourceSpec(
            kind=inputs["kind"], events=inputs["events"], items=inputs["items"] or None
        )
    from recmodel.synthetic.generator import generate

    paths = generate(cfg.synthetic, work / "raw")
    return SourceSpec(kind="canonical", events=str(paths.events), items=str(paths.items))


def check_ranker_scores_ids(path: str, extracted: dict[str, Path]) -> None:
    """A production ranker's scores may only name users and tracks the extraction kept."""
    import pyarrow.parquet as pq

    from recmodel.ranker.score_tables import load_ranker_scores

    users = pq.read_table(extracted["users"], columns=[Columns.USER_IDX, Columns.USER])
    items = pq.read_table(extracted["items"], columns=[Columns.ITEM_IDX, Columns.ITEM])
    load_ranker_scores(path, users, items)  # raises InputError naming the ids it cannot map


@stops_on_bad_input
def extract_sessions(config: dict, inputs: dict, tables: RunTables) -> tuple[dict, list, dict]:
    """Run the SQL extraction and publish its tables.

    Returns:
        ``(tables, sql_queries, data_summary)`` where ``tables`` maps ``events``, ``items``,
        ``users`` and ``test_targets`` to table references.
    """
    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-extract-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        spec = _source_spec(cfg, inputs, work)
        open_source = _opener(cfg, spec, work / "spill")
        con = open_source()
        validate_source(con, spec, listen_threshold_pct=cfg.extract.listen_threshold_pct)
        if cfg.extract.shards > 1:
            con.close()
            result = extract_sharded(
                open_source, cfg.extract, work / "out", cfg.extract.shards, work / "shards"
            )
        else:
            result = extract(con, cfg.extract, work / "out")
        if inputs.get("ranker_scores"):  # its ids must be in the data, before any training
            check_ranker_scores_ids(inputs["ranker_scores"], result.paths)
        refs = {name: tables.publish(path, name) for name, path in result.paths.items()}
    summary = {
        **result.summary,
        "source": inputs["kind"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return refs, result.queries, summary


def _opener(cfg: PipelineConfig, spec: SourceSpec, spill_dir: Path):
    """A function that opens a new connection with the source's views (one per shard)."""

    def open_source():
        con = connect_for(cfg, spill_dir)
        register_source(con, spec)
        return con

    return open_source


def _plan_spec(plan: dict) -> SourceSpec:
    source = plan["source"]
    return SourceSpec(kind=source["kind"], events=source["events"], items=source["items"] or None)


def plan_extraction(config: dict, inputs: dict, tables: RunTables) -> tuple[dict, list]:
    """What every shard of the extraction shares: the raw log, its end, the shards, a place.

    The built-in log is generated here, once, and published beside the run's tables; the raw
    events are then written once into a folder per user shard under ``work``, which each shard
    task reads (local or in the object store).

    Returns:
        ``(plan, sql_queries)``: ``plan`` has ``source`` (kind, events, items), ``cut`` (the
        log's end or the configured cut, bound to every shard), ``shards`` (their numbers),
        ``work`` (where the shards' tables go) and ``started`` (epoch seconds).
    """
    cfg = config_of(config)
    started = time.time()
    source = {key: inputs[key] for key in ("kind", "events", "items")}
    with tempfile.TemporaryDirectory(prefix="recmodel-plan-") as tmp:
        if inputs["kind"] == SYNTHETIC:
            spec = _source_spec(cfg, inputs, Path(tmp))
            source = {
                "kind": spec.kind,
                "events": local_path(tables.publish(spec.events, "raw_events")),
                "items": local_path(tables.publish(spec.items, "raw_items")),
            }
        records: list[dict] = []
        opener = _opener(cfg, _plan_spec({"source": source}), Path(tmp) / "spill")
        cut = global_cut(opener, cfg.extract, records)
        work = tables.location("extract_shards")
        partition_raw(opener, cfg.extract, work, cfg.extract.shards, records)
    plan = {
        "source": source,
        "cut": cut,
        "shards": list(range(cfg.extract.shards)),
        "work": work,
        "started": started,
    }
    return plan, records


@stops_on_bad_input
def extract_shard(config: dict, plan: dict, round_index: int, shard: int) -> list[dict]:
    """One round of the extraction's per-user SQL on one user shard (a foreach task)."""
    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-shard-") as tmp:
        opener = _opener(cfg, _plan_spec(plan), Path(tmp) / "spill")
        n_shards = len(plan["shards"])
        return run_shard(
            opener, cfg.extract, plan["work"], round_index, shard, n_shards, plan["cut"]
        )


@stops_on_bad_input
def merge_shards(config: dict, plan: dict, round_index: int) -> list[dict]:
    """One round's global SQL over every shard's tables (a foreach's join), but the last."""
    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-merge-") as tmp:
        opener = _opener(cfg, _plan_spec(plan), Path(tmp) / "spill")
        n_shards = len(plan["shards"])
        records, _ = run_merge(
            opener, cfg.extract, plan["work"], round_index, n_shards, plan["cut"]
        )
    return records


@stops_on_bad_input
def finish_extraction(
    config: dict, inputs: dict, plan: dict, tables: RunTables
) -> tuple[dict, list, dict]:
    """The last merge: the summary, its checks and the Dataset's tables, published.

    Returns:
        ``(tables, sql_queries, data_summary)`` as :func:`extract_sessions` returns them.
    """
    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-extract-") as tmp:
        work = Path(tmp)
        opener = _opener(cfg, _plan_spec(plan), work / "spill")
        n_shards, last = len(plan["shards"]), len(ROUNDS) - 1
        records, summary = run_merge(
            opener, cfg.extract, plan["work"], last, n_shards, plan["cut"], work / "out"
        )
        paths = {name: work / "out" / f"{name}.parquet" for name in OUTPUTS}
        if inputs.get("ranker_scores"):
            check_ranker_scores_ids(inputs["ranker_scores"], paths)
        refs = {name: tables.publish(path, name) for name, path in paths.items()}
    remove_tables(plan["work"])  # the shards' tables: the published ones replace them
    summary = {
        **summary,
        "source": inputs["kind"],
        "seconds": round(time.time() - plan["started"], 2),
    }
    return refs, records, summary


def estimate_q(
    config: dict, refs: dict, tables: RunTables, card: Any = None
) -> tuple[dict, dict, list]:
    """Estimate the Q table from the pretrain window's targets (and show its shape).

    Returns:
        ``(item_frequency, q_summary, sql_queries)``: the Q table's reference, its shape and
        the record of the SQL that built it.
    """
    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-q-") as tmp:
        path, summary = build_q_table(
            connect_for(cfg),
            local_path(refs["events"]),
            local_path(refs["items"]),
            cfg.q,
            Path(tmp) / "item_frequency.parquet",
        )
        queries = summary.pop("queries")
        ref = tables.publish(path, "item_frequency")
    q = read_table(ref, columns=["q"]).column("q").to_numpy()
    q_card(card, summary, q)
    return ref, summary, queries


def resolve_warm_start(spec: str, flow_name: str) -> str | None:
    """The pathspec of the run to warm-start from (resolved once, in ``start``), or None."""
    if not spec:
        return None
    from recmodel.serving.warm_start import find_warm_start_run

    run = find_warm_start_run(spec, flow_name)
    log.info("warm start: %s", run.pathspec if run is not None else "none found, cold start")
    return None if run is None else run.pathspec


def run_tags(config: dict, inputs: dict) -> list[str]:
    """Tags that tell runs apart in the UI's run list: the preset and the kind of data."""
    return [f"preset:{config.get('name', 'custom')}", f"source:{inputs.get('kind', 'unknown')}"]


def tag_run(flow_name: str, run_id: str, tags: list[str]) -> list[str]:
    """Add ``tags`` to the running run (through the Client API, as champion gating does)."""
    from metaflow import Run

    Run(f"{flow_name}/{run_id}").add_tags(tags)
    log.info("run tagged %s", ", ".join(tags))
    return tags
