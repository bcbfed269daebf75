"""Step logic of ``end``: serving exports and champion gating of a finished run."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import pyarrow as pa

from recmodel.core.columns import Columns, Window
from recmodel.core.files import load_checkpoint
from recmodel.core.plain import plain
from recmodel.core.tables import AnyRef, read_table
from recmodel.core.user_shards import take_rows
from recmodel.serving import champion, export
from recmodel.serving.bundle import MANIFEST
from recmodel.serving.gate import CandidateWeek
from recmodel.steps.common import config_of
from recmodel.steps.report import evaluated_targets, publish_files

log = logging.getLogger(__name__)


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


def candidate_week(config: dict, refs: dict) -> CandidateWeek:
    """The run's test users, their queries and targets: what the champion is scored on.

    The users and targets are the report's (``eval.max_test_users`` samples both alike); the
    popularity order is the popularity baseline's (the pretrain window's plays), for listeners
    the champion cannot embed. A run of more than ``train.shard_events`` events stays on disk:
    only the test users' histories are read, one user shard at a time.
    """
    from recmodel.baselines.base import popularity_order
    from recmodel.steps.step_data import load_step_data

    data = load_step_data(config, refs, sharded=True)
    users = data.test.users  # [U] user_idx, ascending
    histories, _ = take_rows(data.dataset, users, Window.TEST, Window.TEST)
    return CandidateWeek(
        targets=evaluated_targets(refs["test_targets"], data.cfg),
        items=read_table(refs["items"], columns=[Columns.ITEM_IDX, Columns.ITEM, Columns.COUNT]),
        user_ids=data.user_ids.take(pa.array(users)),
        histories=histories,
        popular=popularity_order(data.dataset.item_counts),
        filter_seen=data.cfg.eval.filter_seen,
    )


def gate_champion(
    config: dict, refs: dict, recommendations: AnyRef, flow_name: str, run_id: str
) -> dict:
    """Judge the run against the branch's champion on this run's test users, and tag it.

    Returns:
        The ``champion_decision`` artifact (plain values; see
        :class:`recmodel.serving.decision.Decision`).
    """
    from metaflow import Step

    cfg = config_of(config)
    report = Step(f"{flow_name}/{run_id}/report").task["report"].data
    decision = champion.gate(
        candidate_week(config, refs),
        read_table(recommendations),
        report["protocol"],
        flow_name,
        run_id,
        cfg.eval,
        tags=champion.branch_tags(),
        preset=cfg.name,
    )
    return decision.to_dict()  # champion.apply logged the decision with the run's tag
