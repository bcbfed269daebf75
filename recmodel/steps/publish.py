"""Step logic of ``end``: serving exports and champion gating of a finished run."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from typing import Any

from recmodel.core.files import load_checkpoint
from recmodel.core.plain import plain
from recmodel.core.tables import read_table
from recmodel.serving import champion, export
from recmodel.serving.bundle import MANIFEST
from recmodel.steps.common import config_of
from recmodel.steps.report import publish_files

log = logging.getLogger(__name__)

GATE_MODEL = "sasrec_two_stage"


def export_serving(checkpoint: dict, refs: dict, tables: Any) -> dict:
    """Item vectors, the TorchScript query encoder and a manifest, next to the run's tables.

    On a local datastore the directory is written whole (:mod:`recmodel.serving.bundle`); on an
    object store the files are uploaded one by one (each key appears whole) with the manifest,
    which holds every file's sha256, last.

    Returns:
        The manifest (plain built-in types) with the export's ``directory`` and the URIs of
        the published ``files``.
    """
    items = read_table(refs["items"])  # codes and acoustic vectors rebuild the item tower
    checkpoint = load_checkpoint(checkpoint)  # a reference, or the bytes of a past run
    target = f"{tables.root}/serving"
    if "://" not in target:
        manifest = export.export_checkpoint(checkpoint, items, target)
        files = manifest.pop("paths")
    else:
        with tempfile.TemporaryDirectory(prefix="recmodel-serving-") as tmp:
            manifest = export.export_checkpoint(checkpoint, items, f"{tmp}/serving")
            paths = manifest.pop("paths")
            ordered = dict(sorted(paths.items(), key=lambda kv: kv[0] == MANIFEST))  # seal last
            files = publish_files(ordered, target)
        log.info("serving export uploaded to %s", target)
    return plain({**manifest, "directory": target, "files": files})


def gate_champion(config: dict, flow_name: str, run_id: str) -> dict:
    """Tag the run ``champion`` or ``rejected`` against the branch's current champion."""
    from metaflow import Step

    cfg = config_of(config)
    report = Step(f"{flow_name}/{run_id}/report").task["report"].data
    decision = champion.gate(
        report,
        flow_name,
        run_id,
        tags=champion.branch_tags(),
        model=GATE_MODEL,
        metric=cfg.eval.gate_metric,
        tolerance=cfg.eval.gate_tolerance,
    )
    log.info(
        "champion gate: %s (%s)", "promoted" if decision.promote else "rejected", decision.reason
    )
    return dataclasses.asdict(decision) if dataclasses.is_dataclass(decision) else decision
