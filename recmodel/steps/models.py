"""Step logic of the first-stage model steps: the two pretrained transformers and the baselines."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

from recmodel.baselines.registry import BASELINES, BuildOptions, run_baselines
from recmodel.core.dataset import Dataset
from recmodel.core.tables import AnyRef, read_table
from recmodel.core.user_shards import UserShards
from recmodel.evaluation.testset import REC_K
from recmodel.retriever.faults import inject_fault
from recmodel.retriever.launch import ONE_NODE, Node, node_group, pretrain_data_parallel
from recmodel.retriever.train_state import TrainStateStore, checkpoint_every
from recmodel.steps.common import config_of
from recmodel.steps.live_card import TrainingCard
from recmodel.steps.step_data import (
    StepData,
    checkpoint_of,
    load_step_data,
    maybe_fail,
    model_result,
    q_counts,
    state_dir,
    trained_result,
    training_shards,
)


@dataclass(frozen=True)
class Transformer:
    """One pretrained transformer of the flow.

    Attributes:
        name: its name in the report and the recommendations table.
        logq: the logQ correction it trains with; None means the preset's ``train.logq``.
        step: the flow step that trains it (fault injection and retries name it).
        checkpoint: the artifact holding its weights (a warm start reads the same one).
        port: its group's port above ``train.master_port`` (both steps run at once; on one
            machine they must not meet at the same port).
    """

    name: str
    logq: str | None
    step: str
    checkpoint: str
    port: int


SASREC = Transformer("sasrec_pretrain", None, "pretrain", "pretrain_checkpoint", 0)
NO_LOGQ = Transformer("sasrec_no_logq", "none", "pretrain_no_logq", "no_logq_checkpoint", 1)
PRETRAIN_RULE = (
    "trained on the pretrain window; the epoch kept is the best on validation NDCG@10; test "
    "requests read every event before the test window, no refit"
)


def _state_store(tables: Any, model: Transformer) -> TrainStateStore | None:
    """Durable training state of ``model``: a retry of the step continues from it."""
    directory = state_dir(tables)
    if directory is None:
        return None
    # A partial, not a closure: it must pickle into the data-parallel workers.
    after_epoch = functools.partial(_after_epoch, model.step, directory)
    return TrainStateStore(f"{directory}/{model.name}.pt", checkpoint_every(), after_epoch)


def _after_epoch(stage: str, directory: str, epoch: int) -> None:
    """$RECMODEL_FAIL_ONCE=pretrain:epochK fails the step once, after epoch K is saved."""
    inject_fault(stage, f"epoch{epoch}", directory)


def _warm_state(run_pathspec: str | None, model: Transformer, data: StepData):
    """Initial weights from a past run's checkpoint of the same model, or None."""
    if not run_pathspec:
        return None, {}
    from metaflow import Run

    from recmodel.retriever.model import Retriever
    from recmodel.serving.warm_start import warm_start_from_run

    fresh = Retriever(data.dataset.items, data.cfg.model)
    items = read_table(data.refs["items"])
    ws = warm_start_from_run(Run(run_pathspec), fresh, items, artifact=model.checkpoint)
    return ws.state, ws.summary


def training_nodes(config: dict) -> int:
    """Machines each pretraining step runs on (``train.nodes``)."""
    return config_of(config).train.nodes


def node_of(parallel: Any) -> Node:
    """This task's node from Metaflow's ``current.parallel`` (and the port Metaflow's JobSets
    open between the pods, ``MF_MASTER_PORT``, on Kubernetes)."""
    port = int(os.environ.get("MF_MASTER_PORT") or 0)
    return Node(parallel.node_index, parallel.num_nodes, parallel.main_ip, port)


def first_node(inputs: Any) -> Any:
    """The input of a parallel step's join that ran on the first node (it published)."""
    return next(task for task in inputs if task.node == 0)


def dataset_of(config: dict, refs: dict) -> Dataset | UserShards:
    """The extracted events of a run, as a spawned training worker loads them: user shards
    (its own, one at a time) when the run has more than ``train.shard_events`` events."""
    cfg = config_of(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    shards = training_shards(cfg, refs, world_size)
    return shards if shards is not None else load_step_data(config, refs).dataset


def pretrain(
    config: dict,
    refs: dict,
    q_ref: AnyRef,
    tables: Any,
    card: Any = None,
    warm_start_run: str | None = None,
    *,
    model: Transformer = SASREC,
    node: Node = ONE_NODE,
) -> tuple[dict | None, dict]:
    """Pretrain ``model`` (:data:`SASREC` or :data:`NO_LOGQ`) with sampled softmax.

    On a group of machines (``node.count > 1``, Metaflow's ``@parallel``) every node is one rank
    of one data-parallel group and reads its own user shards; the first node publishes.

    Returns:
        ``(checkpoint, results)``: safetensors bytes with the model config, and
        ``{model.name: entry}`` for the run's ``model_results``; ``(None, {})`` on the other
        nodes.
    """
    maybe_fail(model.step, tables)
    data = load_step_data(config, refs, sharded=True, world_size=node.count)
    cfg = data.cfg
    logq = model.logq or cfg.train.logq
    live = TrainingCard(card, f"{model.name} (logQ: {logq})")
    init_state, warm = _warm_state(warm_start_run, model, data)
    with node_group(node, node.port or cfg.train.master_port + model.port):
        result = pretrain_data_parallel(
            data.dataset,
            q_counts(q_ref, data.dataset.n_items),
            cfg.model,
            dataclasses.replace(cfg.train, logq=logq),
            cfg.q,
            cfg.eval,
            progress=live.update,
            init_state=init_state,
            state_store=_state_store(tables, model),
            processes=cfg.train.processes,
            load_dataset=functools.partial(dataset_of, config, refs),
        )
    live.finish(result.history, result.best_epoch)
    if node.index != 0:
        return None, {}  # every node trained the same weights: the first one publishes
    entry = trained_result(
        data,
        model.name,
        result,
        tables,
        logq=logq,
        warm_start=warm,
        resumed_from=result.resumed_from,
        params={"logq": logq},
        fit_rule=PRETRAIN_RULE,
        user_shards=data.dataset.n_shards if isinstance(data.dataset, UserShards) else 1,
        nodes=node.count,
    )
    return checkpoint_of(result, tables, model.checkpoint), {model.name: entry}


def baseline_options(cfg: Any) -> BuildOptions:
    """ALS's full-catalog top-k on the run's device (``train.device``: a GPU where one is)."""
    from recmodel.retriever.distributed import resolve_device

    return BuildOptions(
        device=str(resolve_device(cfg.train.device)), chunk_items=cfg.eval.chunk_items
    )


def baselines(config: dict, refs: dict, tables: Any) -> dict:
    """Tune, refit and evaluate every classic baseline; a failure is an entry, not an error.

    A run of more than ``train.shard_events`` events stays on disk: the baselines fit on its
    play counts, built one user shard at a time, and answer the test users shard by shard
    (:func:`recmodel.baselines.registry.run_baselines`).
    """
    data = load_step_data(config, refs, sharded=True)
    cfg = data.cfg
    outputs, targets = run_baselines(
        list(BASELINES.values()),
        cfg.baselines,
        baseline_options(cfg),
        data.dataset,
        data.test.users,
        REC_K,
        cfg.eval.filter_seen,
    )
    results = {}
    for name, out in outputs.items():
        if out["status"] != "ok":
            results[name] = {k: out.get(k) for k in ("status", "error", "traceback")}
            continue
        results[name] = model_result(
            data,
            name,
            out["items"],
            out["scores"],
            tables,
            targets,
            fit_seconds=out["fit_seconds"],
            model_size=out["model_size"],
            params=out["params"],
            tuning=out["tuning"],
            refit=out["refit"],
            history=[],
        )
    return results
