"""The memory model: each step's peak host memory, disk and GPU memory at a data size.

:func:`requirements` takes a preset's settings and the data's size (raw events, users,
tracks); its constants are measured on this code (``docs/benchmarks.md``) or derived from the
arrays each step allocates, and ``docs/scale.md`` lists each with its source. :func:`check`
compares it with the pods of a preset's ``[resources]``; ``tests/core/test_resources.py`` runs
it on every preset in ``configs/``, and the ``start`` step on every run (:func:`run_problems`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from recmodel.core.columns import MODEL_NAMES
from recmodel.core.config import PipelineConfig, memory_bytes
from recmodel.core.resources import MB, STEPS, Resources

TRAINING_STEPS = ("pretrain", "pretrain_no_logq", "finetune")
# The steps that read the extracted events: all of them at once, or one user shard at a time
# when the run has more than train.shard_events (end reads only the test users' histories).
SHARDED_STEPS = ("pretrain", "pretrain_no_logq", "baselines", "materialize_ranker_scores")
SHARDED_STEPS += ("finetune",)

# Measured (docs/benchmarks.md, "Extraction" and "Out of core"): DuckDB holds 33 B per raw
# event; spilling writes about 1.6x that; the final events file takes 7.4 B per event; a
# listen+ share of 0.757 survives cleaning on the generator's logs; a Python process with the
# step's libraries imported holds 0.35 GB, and extraction's RSS went 0.15 GB above its limit.
DUCKDB_BYTES_PER_EVENT = 33
SPILL_FACTOR = 1.6
PARQUET_BYTES_PER_EVENT = 7.4
RAW_LOG_BYTES_PER_EVENT = 20  # the generated log (ids, timestamps, ratio, flags), compressed
# Sharded extraction stores each shard's sessions, split and filtered events as Parquet, and
# the raw events once more in a folder per shard: 1.32 GB and 0.70 GB for 47.6M raw events on
# 10 shards (docs/scale.md).
STAGED_BYTES_PER_EVENT = 28
PARTITIONED_RAW_BYTES_PER_EVENT = 15
FINAL_SHARE = 0.757
PROCESS_MB = 1_024  # the interpreter, torch/duckdb/pyarrow and Metaflow's task (0.35 GB measured)
# A training step also holds torch's allocator, the batches built ahead and the evaluation's
# buffers: benchmarks/bench_memory.py measured peaks of 0.53, 1.10 and 1.55 GB on runs of
# 0.04M, 0.49M and 3.75M final events, which PROCESS_MB plus the data terms did not cover.
TRAINING_PROCESS_MB = 1_536
Q_BYTES_PER_TRACK = 64  # the group-by of estimate_q: a hash entry and its output row
# Derived from recmodel/core/dataset_io.py: int32 user, int32 item, int64 ts, int8 window
# (17 B) while the Arrow table and the load's checks are alive (+44 B), then the histories of
# the test, validation and training windows (3 x 12 B).
DATASET_PEAK_BYTES = 61
# recmodel/core/user_shards.py: each user's events per window (4 x int64) and the shard's
# arrays while it is read; the bounds and item counts are smaller.
USER_COUNT_BYTES = 32
# Measured (docs/scale.md, "Every model step over user shards"): beyond the events' arrays the
# ranker's step holds the histories registered for its feature SQL and the SQL's per-event
# intermediates, and finetune the histories its requests, validation and test read; at 35.7M
# final events in memory they peaked at 5,773 and 6,767 MB, 125 and 140 B per event above the
# rest of their terms.
STEP_EVENT_BYTES = {"materialize_ranker_scores": 130, "finetune": 145}
HISTORY_BYTES = 12  # an event of a UserItems history: int32 item, int64 time
SCORE_ROW_BYTES = 28  # a ranker_scores row: int64 user and request time, int32 item, float64
REQUEST_SLOT_BYTES = 13  # a padded candidate of a request: int64 item, float32 score, bool
PROFILE_ENTRY_BYTES = 20  # a profile track: int64 id and three float32 features
FLOAT = 4
ADAM_COPIES = 4  # weights, gradients and two moments
LOGIT_COPIES = 3  # logits, their gradient and the softmax
ACTIVATION_FLOATS = 24  # per position, block and width: attention, MLP and norms, kept for backward
RANKER_FEATURES = 20  # len(recmodel.ranker.features.FEATURES); the test checks it
RANKER_COPIES = 2  # the SQL result and the float32 matrix, for every candidate row of a shard
# and one copy for the booster's fit (its rows and its binned copy), of at most
# ranker.max_train_rows rows
RANKER_FIT_COPIES = 1
# Every candidate row, kept for the whole run of the step: its item, retriever score and rank
# (12 B), label, fold and out-of-fold score (10 B), its user while scored (8 B), the scores
# table (30 B) and the published copy with the original ids (about 40 B).
CANDIDATE_ROW_BYTES = 100
RANKER_ROW_BLOCK = 1 << 20  # recmodel.ranker.crossfit.ROW_BLOCK: rows read at once (float64)
ITEMKNN_CHUNK_BYTES = 2**30  # recmodel.baselines.knn.CHUNK_BYTES: one chunk's product
ITEMKNN_ENTRY_BYTES = 32  # recmodel.baselines.knn.ENTRY_BYTES
# A baseline answers its requests in runs of QUERY_CHUNK_EVENTS history events
# (recmodel.core.dataset): the pairs, keys, weights, sort order and inverse of a run's events,
# eight-byte arrays (user_recent's, the largest, measured about 60 B an event).
QUERY_CHUNK_EVENTS = 1 << 20
QUERY_EVENT_BYTES = 96
TOPK_USERS, TOPK_ITEMS = 1_024, 65_536  # one block of the chunked top-k (users x items)


def synthetic_events(cfg: PipelineConfig) -> int:
    """The generator's mean number of raw events for ``cfg.synthetic``."""
    s = cfg.synthetic
    days = min(s.days, s.user_span_days) if s.user_span_days > 0 else s.days
    active = 1 - s.new_user_share / 2  # new users join at a uniform time: half their days
    sessions = s.n_users * active * days * s.sessions_per_user_per_day
    return math.ceil(sessions * s.mean_session_length)


@dataclass(frozen=True)
class Sizes:
    """The data a run works on."""

    raw_events: int
    users: int
    tracks: int

    @property
    def events(self) -> int:
        """Final (listen+) events."""
        return math.ceil(self.raw_events * FINAL_SHARE)


@dataclass(frozen=True)
class Need:
    """A step's peak host memory, disk and memory of one GPU, in MB."""

    memory: int
    disk: int = 0
    gpu_memory: int = 0


def requirements(cfg: PipelineConfig, sizes: Sizes, gpus: dict[str, int]) -> dict[str, Need]:
    """Each step's peak memory and disk at ``sizes`` (``gpus``: GPUs per step, where the
    training arrays live)."""
    needs = {name: Need(PROCESS_MB) for name in STEPS}
    needs["extract_sessions"] = _extract(cfg, sizes)
    needs["estimate_q"] = Need(PROCESS_MB + _mb(Q_BYTES_PER_TRACK * sizes.tracks))
    for name in SHARDED_STEPS:
        per_event = STEP_EVENT_BYTES.get(name, DATASET_PEAK_BYTES)
        held = per_event * held_events(cfg, sizes) + USER_COUNT_BYTES * sizes.users
        process = TRAINING_PROCESS_MB if name in TRAINING_STEPS else PROCESS_MB
        needs[name] = Need(process + _mb(held))
    for name in ("pretrain", "pretrain_no_logq"):
        batch, held = cfg.train.batch_size, held_events(cfg, sizes)
        needs[name] = _training(cfg, sizes, needs[name], batch, gpus.get(name, 0), held)
    ranker_rows = sizes.users * (
        cfg.ranker.n_candidates + cfg.ranker.n_own_candidates + cfg.ranker.n_popular_candidates
    )
    # finetune: the ranker's scores (their table, then padded per request) and each request's
    # query and profile (recmodel.distill.requests.RequestInputs), one request per user.
    m = cfg.model
    per_request = m.max_len * 8 + m.profile_size * PROFILE_ENTRY_BYTES
    requests = ranker_rows * (SCORE_ROW_BYTES + REQUEST_SLOT_BYTES) + sizes.users * per_request
    needs["finetune"] = _training(
        cfg,
        sizes,
        _plus(needs["finetune"], requests),
        cfg.finetune.batch_size,
        gpus.get("finetune", 0),
        held_events(cfg, sizes),
    )
    needs["baselines"] = _plus(needs["baselines"], _baselines(cfg, sizes))
    needs["materialize_ranker_scores"] = _ranker(cfg, sizes, needs["materialize_ranker_scores"])
    # Every row's top-100 for every user: user and item ids, rank and score.
    recommendations = len(MODEL_NAMES) * sizes.users * 100 * 16
    for name in ("join", "report"):
        needs[name] = Need(PROCESS_MB + _mb(2 * recommendations))
    # end: the champion's week, the test users' histories read shard by shard (all of them in
    # memory under train.shard_events), and the item vectors of the serving export.
    held = DATASET_PEAK_BYTES * held_events(cfg, sizes) + USER_COUNT_BYTES * sizes.users
    tested = HISTORY_BYTES * sizes.events * _test_share(cfg, sizes)
    vectors = (sizes.tracks + 1) * cfg.model.d_model * FLOAT * 2
    needs["end"] = Need(PROCESS_MB + _mb(held + tested + vectors))
    return needs


def _test_share(cfg: PipelineConfig, sizes: Sizes) -> float:
    """The share of the users the test scores (``eval.max_test_users``; all when 0)."""
    cap = cfg.eval.max_test_users
    return min(1.0, cap / max(sizes.users, 1)) if cap > 0 else 1.0


def _ranker(cfg: PipelineConfig, sizes: Sizes, base: Need) -> Need:
    """One shard's candidates with their features at a time, every candidate's ids, scores and
    labels, the rows a booster is fit on and one block of rows read back; over user shards
    the features of every row wait on local disk (recmodel.ranker.feature_rows)."""
    rows = sizes.users * (
        cfg.ranker.n_candidates + cfg.ranker.n_own_candidates + cfg.ranker.n_popular_candidates
    )
    shard_rows = rows * held_events(cfg, sizes) / max(sizes.events, 1)
    row = RANKER_FEATURES * FLOAT
    memory = (RANKER_COPIES * shard_rows + RANKER_FIT_COPIES * _fit_rows(cfg, rows)) * row
    memory += CANDIDATE_ROW_BYTES * rows + min(rows, RANKER_ROW_BLOCK) * RANKER_FEATURES * 8
    disk = rows * row if held_events(cfg, sizes) < sizes.events else 0
    return Need(base.memory + _mb(memory), base.disk + _mb(disk))


def _fit_rows(cfg: PipelineConfig, rows: int) -> int:
    """Candidate rows a booster of the ranker is fit on (``ranker.max_train_rows``)."""
    cap = cfg.ranker.max_train_rows
    return min(rows, cap) if cap > 0 else rows


def held_events(cfg: PipelineConfig, sizes: Sizes) -> int:
    """Final events a pretraining or baselines process holds at once: the whole run, or one
    user shard when the run has more than ``train.shard_events``
    (:mod:`recmodel.core.user_shards`)."""
    limit = cfg.train.shard_events
    return min(sizes.events, limit) if limit > 0 else sizes.events


def _extract(cfg: PipelineConfig, sizes: Sizes) -> Need:
    """DuckDB holds two event-sized tables of a shard at a stage's start; beyond its limit it
    spills. Over several user shards (``extract.shards``) it works on one shard's events at a
    time and stores the shards' tables between rounds."""
    shards = cfg.extract.shards
    limit = memory_bytes(cfg.extract.memory_limit) or 0
    working = 2 * DUCKDB_BYTES_PER_EVENT * sizes.raw_events / shards
    spill = SPILL_FACTOR * working / 2 if working > limit else 0.0
    staged_bytes = STAGED_BYTES_PER_EVENT + PARTITIONED_RAW_BYTES_PER_EVENT
    staged = staged_bytes * sizes.raw_events if shards > 1 else 0.0
    written = PARQUET_BYTES_PER_EVENT * sizes.events + RAW_LOG_BYTES_PER_EVENT * sizes.raw_events
    return Need(PROCESS_MB + _mb(min(limit, working)), _mb(spill + staged + written))


def _training(
    cfg: PipelineConfig, sizes: Sizes, base: Need, batch: int, gpus: int, held: int
) -> Need:
    """The dataset on the host; weights, optimizer, activations and logits where it trains.

    ``held``: the final events each process holds (spawned workers hold as many each)."""
    m, t = cfg.model, cfg.train
    positions = batch * m.max_len
    global_positions = positions  # batch_size is the global batch, split over the processes
    candidates = {
        "shared": t.n_negatives,
        "in_batch": global_positions,
        "both": global_positions + t.n_negatives,
    }[t.negatives]
    per_device = positions / max(gpus, t.processes, 1)
    logits = LOGIT_COPIES * per_device * candidates * FLOAT
    activations = ACTIVATION_FLOATS * per_device * m.d_model * m.n_blocks * FLOAT
    weights = ADAM_COPIES * (sizes.tracks + 1) * (m.id_dim + m.meta_dim + m.d_model) * FLOAT
    device = logits + activations + weights
    copies = 1 + (t.processes if t.processes > 1 and not gpus else 0)  # spawned workers' data
    host = base.memory + _mb(DATASET_PEAK_BYTES * held * (copies - 1))
    if gpus:
        return Need(host + _mb(weights), base.disk, _mb(device))
    return Need(host + _mb(device), base.disk)


def _baselines(cfg: PipelineConfig, sizes: Sizes) -> float:
    """The largest of ALS (factors, the play matrix, one top-k block) and item-kNN (the
    similarity, the play matrix and one chunk's sparse product, which its budget bounds), with
    the validation requests and one run of requests being answered.

    The play matrix (:class:`recmodel.baselines.plays.Plays`) is counted twice: its shards'
    parts and the stacked copy, or the matrix and ALS's confidence copy."""
    b = cfg.baselines
    pairs = sizes.events  # distinct (user, track) pairs: at most the events
    factors = max(b.als_factors)
    block = min(sizes.users, TOPK_USERS) * min(sizes.tracks + 1, TOPK_ITEMS) * 8
    als = (sizes.users + sizes.tracks) * factors * FLOAT * 3 + pairs * 12 * 2 + block
    per_user = min(sizes.tracks, math.ceil(sizes.events / max(sizes.users, 1)))
    one_user = min(sizes.tracks, per_user * max(b.itemknn_neighbours)) * ITEMKNN_ENTRY_BYTES
    # A chunk holds users up to the budget; a user above it is a chunk alone.
    knn = max(min(ITEMKNN_CHUNK_BYTES, sizes.users * one_user), one_user)
    knn += sizes.tracks * max(b.itemknn_neighbours) * 12 + pairs * 12 * 2
    # The validation requests: the sampled users' whole histories, twice while the shards'
    # rows are joined; and one run of requests being answered.
    sampled = min(b.tune_users, sizes.users) if b.tune_users > 0 else sizes.users
    validation = 2 * HISTORY_BYTES * sizes.events * sampled / max(sizes.users, 1)
    return max(als, knn) + validation + QUERY_CHUNK_EVENTS * QUERY_EVENT_BYTES


def _plus(need: Need, extra_bytes: float) -> Need:
    return dataclasses.replace(need, memory=need.memory + _mb(extra_bytes))


def _mb(size: float) -> int:
    return math.ceil(size / MB)


def check(cfg: PipelineConfig, resources: Resources, sizes: Sizes) -> list[str]:
    """Every way the pods of ``resources`` fail the memory model at ``sizes``; empty when all
    fit. DuckDB's limit must fit the extraction pod at any size, its threads their CPUs."""
    gpus = {name: step.gpu for name, step in resources.steps.items()}
    problems = []
    for name, need in requirements(cfg, sizes, gpus).items():
        given = resources.steps[name]
        for what, want, have in (
            ("memory", need.memory, given.memory),
            ("disk", need.disk, given.disk),
            ("gpu_memory", need.gpu_memory, given.gpu_memory),
        ):
            if want > have:
                problems.append(
                    f"{name}: needs {want:,} MB of {what} at {sizes.raw_events:,} raw events, "
                    f"{sizes.users:,} users and {sizes.tracks:,} tracks; [resources.{name}] "
                    f"gives {have:,} MB"
                )
    limit = _mb(memory_bytes(cfg.extract.memory_limit) or 0)
    pod = resources.steps["extract_sessions"].memory
    if limit + PROCESS_MB > pod:  # at any size: a larger log than planned must spill, not die
        problems.append(
            f"extract_sessions: extract.memory_limit {cfg.extract.memory_limit!r} plus the "
            f"process ({limit + PROCESS_MB:,} MB) is more than the pod's {pod:,} MB: a log "
            "larger than planned makes DuckDB reach the pod's limit before it spills"
        )
    if cfg.extract.threads > resources.steps["extract_sessions"].cpu:
        problems.append(
            f"extract_sessions: extract.threads = {cfg.extract.threads} on "
            f"{resources.steps['extract_sessions'].cpu} CPU(s) of [resources.extract_sessions]"
        )
    return problems


def planned_sizes(cfg: PipelineConfig, resources: Resources) -> Sizes:
    """The size a preset is planned for: ``resources.events`` in Yambda's shape, or the
    generator's log for its ``[synthetic]`` settings."""
    if resources.events is None:
        return Sizes(synthetic_events(cfg), cfg.synthetic.n_users, cfg.synthetic.n_tracks)
    return yambda_shaped(resources.events)


def yambda_shaped(raw_events: int) -> Sizes:
    """Users and tracks of a log of ``raw_events`` with Yambda's events per user and track."""
    return Sizes(
        raw_events,
        math.ceil(raw_events / YAMBDA_EVENTS_PER_USER),
        math.ceil(raw_events / YAMBDA_EVENTS_PER_TRACK),
    )


def run_problems(
    cfg: PipelineConfig, pods: Any, synthetic: bool, raw_events: int | None
) -> list[str]:
    """What :func:`check` finds for one run: its settings, the pods it was started with (the
    flow's ``resources`` Config) and its input's size: the generator's for synthetic data, the
    Parquet footers' row count otherwise (None for text files: nothing to check). Users and
    tracks of real data are not known before extraction: Yambda's ratios stand in."""
    resources = Resources.from_config(pods)
    if synthetic:
        sizes = Sizes(synthetic_events(cfg), cfg.synthetic.n_users, cfg.synthetic.n_tracks)
    elif raw_events is None:
        return []
    else:
        sizes = yambda_shaped(raw_events)
    return check(cfg, resources, sizes)


# Yambda-5B: 4.79B events, 1M users, 9.39M tracks (the data set's card).
YAMBDA_EVENTS_PER_USER = 4_790
YAMBDA_EVENTS_PER_TRACK = 510
