"""Step logic of ``flows/two_stage.py``: each flow step is one call into this module.

The flow stays thin (a docstring, one call, artifact assignments); everything that decides what
a step computes lives here, where it can be tested without Metaflow. Functions take the plain
``config`` artifact (a dict) and :class:`~recmodel.tables.TableRef` artifacts, and return what the
step stores.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from recmodel.config import PipelineConfig, from_dict, load_preset
from recmodel.sources import SourceSpec, register_source, validate_source
from recmodel.step_cards import data_card, q_card, ranker_card, results_card  # noqa: F401
from recmodel.tables import TableRef, publish, read_table, run_table_root, write_table

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"  # inputs["kind"] of the built-in generator

# The model steps live in their own modules and are imported on first use: every step (and
# every card render) imports the flow file, and the data steps should not pay for torch.
_LAZY = {
    **dict.fromkeys(
        ("baselines", "join_recommendations", "merge_results", "pretrain", "train_history"),
        "recmodel.pipeline_models",
    ),
    "finetune": "recmodel.pipeline_distill",
    "materialize_ranker_scores": "recmodel.pipeline_distill",
    "report": "recmodel.pipeline_report",
    "export_serving": "recmodel.pipeline_publish",
    "gate_champion": "recmodel.pipeline_publish",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


class RunTables:
    """Publishes a step's tables under the run's own place in the datastore."""

    def __init__(self, flow: Any = None, root: str | None = None):
        self.root = root if root is not None else run_table_root(flow)

    def uri(self, name: str) -> str:
        return f"{self.root}/{name}.parquet"

    def publish(self, local_path: str | Path, name: str) -> TableRef:
        return publish(local_path, self.uri(name))

    def write(self, table: Any, name: str) -> TableRef:
        return write_table(table, self.uri(name))


def config_of(config: dict) -> PipelineConfig:
    """The typed configuration from the ``config`` artifact."""
    return from_dict(config, name=config.get("name", "custom"))


def _connect(cfg: PipelineConfig, temp_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET memory_limit = $v", {"v": cfg.extract.memory_limit})
    con.execute("SET threads = $v", {"v": cfg.extract.threads})
    if temp_dir:
        con.execute("SET temp_directory = $v", {"v": temp_dir})
    return con


# -- start ---------------------------------------------------------------------------------


def start(
    preset: str, overrides: dict, source: str, events: str, items: str, ranker_scores: str
) -> tuple[dict, dict, dict]:
    """Resolve the configuration and validate every input before anything expensive.

    Returns:
        ``(config, inputs, checks)``: the effective configuration as a dict, the resolved
        inputs (source kind and paths), and what validation found (warnings, row counts).
    """
    cfg = load_preset(preset)
    if overrides:
        cfg = cfg.replace(**overrides)
    if not events and (items or source != "canonical"):
        raise ValueError(
            "--items and --source describe your own data: pass --events PATH too "
            "(without --events the flow generates synthetic data)"
        )
    inputs = {"kind": SYNTHETIC, "events": "", "items": "", "ranker_scores": ranker_scores}
    checks: dict[str, Any] = {"warnings": []}
    if events:
        spec = SourceSpec(kind=source, events=events, items=items or None)
        con = _connect(cfg)
        checks["source"] = register_source(con, spec)
        checks["warnings"] = validate_source(
            con, spec, listen_threshold_pct=cfg.extract.listen_threshold_pct
        )
        inputs.update(kind=source, events=events, items=items)
    if ranker_scores:
        from recmodel.ranker_io import check_ranker_scores_file

        checks["ranker_scores"] = check_ranker_scores_file(ranker_scores)
    for warning in checks["warnings"]:
        log.warning(warning)
    return cfg.to_dict(), inputs, checks


# -- extract_sessions ----------------------------------------------------------------------


def _source_spec(cfg: PipelineConfig, inputs: dict, work: Path) -> SourceSpec:
    if inputs["kind"] != SYNTHETIC:
        return SourceSpec(
            kind=inputs["kind"], events=inputs["events"], items=inputs["items"] or None
        )
    from recmodel.synthetic import generate

    paths = generate(cfg.synthetic, work / "raw")
    return SourceSpec(kind="canonical", events=str(paths.events), items=str(paths.items))


def extract_sessions(config: dict, inputs: dict, tables: RunTables) -> tuple[dict, list, dict]:
    """Run the SQL extraction and publish its tables.

    Returns:
        ``(tables, sql_queries, data_summary)`` where ``tables`` maps ``events``, ``items``,
        ``users`` and ``test_targets`` to table references.
    """
    from recmodel.extract import extract

    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-extract-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        spec = _source_spec(cfg, inputs, work)
        con = _connect(cfg, str(work / "spill"))
        register_source(con, spec)
        validate_source(con, spec, listen_threshold_pct=cfg.extract.listen_threshold_pct)
        result = extract(con, cfg.extract, work / "out")
        refs = {name: tables.publish(path, name) for name, path in result.paths.items()}
    summary = {
        **result.summary,
        "source": inputs["kind"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return refs, result.queries, summary


# -- estimate_q ----------------------------------------------------------------------------


def estimate_q(
    config: dict, refs: dict, tables: RunTables, card: Any = None
) -> tuple[TableRef, dict, list]:
    """Estimate the Q table from the pretrain window's targets (and show its shape)."""
    from recmodel.qtable import estimate_q as run_q
    from recmodel.tables import local_path

    cfg = config_of(config)
    with tempfile.TemporaryDirectory(prefix="recmodel-q-") as tmp:
        con = _connect(cfg)
        path, summary = run_q(
            con,
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
    from recmodel.warm_start import resolve_warm_start as resolve

    run = resolve(spec, flow_name)
    log.info("warm start: %s", run.pathspec if run is not None else "none found, cold start")
    return None if run is None else run.pathspec


def log_summary(files: dict) -> None:
    """Point at the report at the end of a run."""
    log.info("report: %s (also: python flows/two_stage.py card view report)", files.get("markdown"))
