"""Typed configuration: one frozen dataclass per stage, loaded from a TOML preset (:mod:`recmodel.core.presets`).

A preset is a TOML file with one table per stage (``[synthetic]``, ``[extract]``, ...). Keys
that a preset leaves out keep the defaults written here; unknown keys are an error, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ConfigError(ValueError):
    """A preset or flag value is invalid."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the built-in synthetic music-streaming log."""

    seed: int = 0
    n_users: int = 2_000  # listeners
    n_tracks: int = 5_000  # catalog size
    n_artists: int = 500  # each artist owns a Zipf share of the catalog
    n_genres: int = 12
    days: float = 60.0  # time span of the log
    sessions_per_user_per_day: float = 0.5  # mean; per-user activity is log-normal around it
    mean_session_length: float = 12.0  # tracks per session (geometric)
    acoustic_dim: int = 8  # length of the acoustic embedding vector
    zipf_exponent: float = 1.05  # track popularity ~ rank^-exponent
    row_group_size: int = 1_000_000  # events per Parquet row group (bounds memory)
    mean_album_size: float = 10.0  # tracks per album (1 + Poisson); albums never span artists
    new_user_share: float = 0.3  # share of users who sign up during the log, at a uniform time
    activity_sigma: float = 1.0  # sigma of the log-normal per-user activity multiplier (mean 1)
    n_favourite_artists: int = 5  # artists each user follows
    n_favourite_tracks: int = 40  # heavy-rotation slots per user, Zipf-weighted by slot
    favourite_lifetime_days: float = 30.0  # mean time a track stays in heavy rotation
    taste_drift: float = 0.5  # share of genre taste that moves to a second profile by the end
    missing_share: float = 0.03  # share of tracks lacking each of genre, tempo, embedding
    n_scenes: int = 20  # listener communities sharing genres and followed artists (CF structure)

    def __post_init__(self) -> None:
        _check(
            self.n_users > 0 and self.n_tracks > 0, "synthetic: n_users and n_tracks must be > 0"
        )
        _check(0 < self.n_artists <= self.n_tracks, "synthetic: need 0 < n_artists <= n_tracks")
        _check(self.n_genres > 0 and self.days > 0, "synthetic: n_genres and days must be > 0")
        _check(
            self.sessions_per_user_per_day > 0 and self.mean_session_length >= 1,
            "synthetic: need sessions_per_user_per_day > 0 and mean_session_length >= 1",
        )
        _check(
            self.acoustic_dim >= 1 and self.row_group_size >= 1 and self.mean_album_size >= 1,
            "synthetic: acoustic_dim, row_group_size and mean_album_size must be >= 1",
        )
        _check(
            min(self.n_favourite_artists, self.n_favourite_tracks, self.n_scenes) >= 1,
            "synthetic: n_favourite_artists, n_favourite_tracks and n_scenes must be >= 1",
        )
        _check(
            self.favourite_lifetime_days > 0 and self.activity_sigma >= 0,
            "synthetic: need favourite_lifetime_days > 0 and activity_sigma >= 0",
        )
        _check(
            all(0 <= x <= 1 for x in (self.new_user_share, self.taste_drift, self.missing_share)),
            "synthetic: new_user_share, taste_drift and missing_share must be in [0, 1]",
        )


@dataclass(frozen=True)
class ExtractConfig:
    """Cleaning, sessionization, filtering and the split (DESIGN.md §3)."""

    listen_threshold_pct: float = 50.0  # played_ratio_pct >= this counts as listen+
    drop_consecutive_repeats: bool = False  # collapse A,A,A into A within a session
    session_gap_minutes: float = 30.0  # a pause longer than this starts a new session
    min_user_events: int = 5  # users with fewer pre-test listen+ events are dropped
    min_item_events: int = 2  # tracks with fewer pre-test listen+ events are dropped
    protocol: str = "temporal"  # "temporal" (global time split) or "leave_last_out"
    test_days: float = 7.0  # temporal: length of the test window at the end of the log
    val_days: float = 3.5  # temporal: validation window just before test
    finetune_days: float = 7.0  # temporal: ranker/distillation window before validation
    gap_minutes: float = 30.0  # temporal: events this close after a window start are dropped
    loo_finetune_events: int = 3  # leave_last_out: events per user in the finetune window
    min_test_users: int = 10  # fewer test users than this is an error
    tempo_buckets: int = 16  # quantile buckets of tempo (0 = unknown)
    cut_time: str = ""  # ISO time: events after it are ignored (a retrain's "now"); "" = log end
    history_days: float = 0.0  # rolling window: only the last N days up to the cut; 0 = all
    memory_limit: str = "4GB"  # DuckDB memory limit; it spills to disk beyond it
    threads: int = 2  # DuckDB threads

    def __post_init__(self) -> None:
        _check(
            self.protocol in ("temporal", "leave_last_out"),
            f"extract.protocol must be 'temporal' or 'leave_last_out', got {self.protocol!r}",
        )
        _check(
            0 <= self.listen_threshold_pct <= 100,
            "extract.listen_threshold_pct must be in [0, 100]",
        )
        _check(self.session_gap_minutes > 0, "extract.session_gap_minutes must be > 0")
        _check(
            min(self.test_days, self.val_days, self.finetune_days) > 0,
            "extract: test_days, val_days and finetune_days must be > 0",
        )
        _check(self.gap_minutes >= 0, "extract.gap_minutes must be >= 0")
        _check(self.history_days >= 0, "extract.history_days must be >= 0")
        if self.cut_time:
            try:
                datetime.fromisoformat(self.cut_time)
            except ValueError as exc:
                raise ConfigError(
                    f"extract.cut_time {self.cut_time!r} is not an ISO time, "
                    "e.g. 2024-03-01T00:00:00+00:00"
                ) from exc
        _check(
            self.min_user_events >= 1 and self.min_item_events >= 1,
            "extract: min_user_events and min_item_events must be >= 1",
        )


@dataclass(frozen=True)
class QConfig:
    """The item frequency table Q and the negative-sampling proposal drawn from it."""

    smoothing: float = 1.0  # additive count smoothing: every item has q > 0
    alpha: float = 1.0  # proposal ~ count^alpha (1 = frequency, 0 = uniform)
    uniform_mix: float = 0.05  # share of the proposal mass spread uniformly

    def __post_init__(self) -> None:
        _check(self.smoothing > 0, "q.smoothing must be > 0 so that every item has q > 0")
        _check(0 <= self.alpha <= 1, "q.alpha must be in [0, 1]")
        _check(0 <= self.uniform_mix <= 1, "q.uniform_mix must be in [0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """SASRec-style causal transformer with a metadata-enriched item tower."""

    d_model: int = 64  # hidden size
    n_blocks: int = 2  # transformer blocks
    n_heads: int = 2  # attention heads
    max_len: int = 50  # history positions the encoder sees
    dropout: float = 0.1
    id_dim: int = 64  # item-id embedding width (projected to d_model with the metadata)
    meta_dim: int = 16  # width of each metadata embedding (artist, album, genre, tempo)
    normalize: bool = False  # score on L2-normalized vectors
    temperature: float = 1.0  # logits are divided by this (use < 1 with normalize)
    repeat_aware: bool = True  # learned bonus for tracks already in the input window

    def __post_init__(self) -> None:
        _check(self.d_model % self.n_heads == 0, "model.d_model must be divisible by model.n_heads")
        _check(self.max_len >= 2, "model.max_len must be >= 2")
        _check(self.temperature > 0, "model.temperature must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining with sampled softmax (and the no-logQ baseline, which shares it)."""

    seed: int = 0
    epochs: int = 10  # upper bound; early stopping on validation NDCG@10 usually ends sooner
    batch_size: int = 128  # training windows per step (global, across DDP ranks)
    lr: float = 1e-3  # AdamW for dense weights
    sparse_lr: float = 1e-2  # lazy (sparse) optimizer for the item-id embedding table
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    n_negatives: int = 256  # shared sampled negatives per batch
    negatives: str = "shared"  # "shared", "in_batch" or "both"
    logq: str = "all"  # "all", "none" or "negatives_only"
    patience: int = 2  # epochs without validation NDCG@10 improvement before stopping
    eval_users: int = 2_000  # validation users scored each epoch (0 = all)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch CPU threads; 0 = cores / 2, as two trainings run side by side
    processes: int = 0  # data-parallel workers in the step; 0 = one per visible GPU (1 on CPU)

    def __post_init__(self) -> None:
        _check(
            self.negatives in ("shared", "in_batch", "both"),
            f"train.negatives must be shared, in_batch or both, got {self.negatives!r}",
        )
        _check(
            self.logq in ("all", "none", "negatives_only"),
            f"train.logq must be all, none or negatives_only, got {self.logq!r}",
        )
        _check(
            self.epochs >= 1 and self.batch_size >= 1, "train: epochs and batch_size must be >= 1"
        )
        _check(self.n_negatives >= 1, "train.n_negatives must be >= 1")


@dataclass(frozen=True)
class RankerConfig:
    """The built-in ranker whose scores the retriever is distilled from."""

    n_candidates: int = 100  # retriever top-K per request (plus popular/ALS candidates)
    n_popular_candidates: int = 20
    n_folds: int = 2  # cross-fitting folds over users
    max_iter: int = 200  # HistGradientBoosting iterations
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    seed: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    """Pairwise logit-loss distillation of the ranker into the retriever."""

    epochs: int = 4
    batch_size: int = 32  # requests per step
    lr: float = 2e-3  # tuned on validation NDCG@10 of the default preset (2e-4 never improved)
    sparse_lr: float = 2e-2
    pair_weighting: str = "none"  # "none" or "rank_gap"
    softmax_weight: float = 0.5  # weight of the next-item sampled-softmax term on the requests
    patience: int = 2

    def __post_init__(self) -> None:
        _check(
            self.pair_weighting in ("none", "rank_gap"),
            "finetune.pair_weighting must be 'none' or 'rank_gap'",
        )
        _check(self.softmax_weight >= 0, "finetune.softmax_weight must be >= 0")


@dataclass(frozen=True)
class BaselinesConfig:
    """Classic baselines: popularity, the user's own favourites, item-kNN and implicit ALS."""

    itemknn_neighbours: int = 100
    itemknn_weighting: str = "bm25"  # "cosine" or "bm25"
    als_factors: tuple[int, ...] = (64,)  # grid, tuned on validation NDCG@10
    als_regularization: tuple[float, ...] = (0.01,)
    als_alpha: tuple[float, ...] = (10.0,)  # confidence = 1 + alpha * plays
    als_iterations: int = 15
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """Metrics and the report (DESIGN.md §3)."""

    ks: tuple[int, ...] = (10, 50, 100)
    filter_seen: bool = False  # music is re-listened: keep already-heard tracks by default
    max_test_users: int = 0  # 0 = all test users
    chunk_items: int = 65_536  # catalog chunk of the top-k scan (bounds memory)
    bootstrap_samples: int = 1_000
    gate_metric: str = "ndcg@10"  # champion gating compares sasrec_two_stage on this metric
    gate_tolerance: float = 0.005  # a new run may be this much worse and still be promoted
    seed: int = 0

    def __post_init__(self) -> None:
        _check(len(self.ks) > 0 and all(k > 0 for k in self.ks), "eval.ks must be positive")


@dataclass(frozen=True)
class PipelineConfig:
    """The full effective configuration of one run."""

    name: str = "default"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    q: QConfig = field(default_factory=QConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> PipelineConfig:
        """Return a copy with some keys of some sections overridden."""
        updates = {}
        for section, values in sections.items():
            current = getattr(self, section)
            updates[section] = build_section(
                type(current), {**dataclasses.asdict(current), **values}, section
            )
        return dataclasses.replace(self, **updates)


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """One section's dataclass from its values; an unknown key is a :class:`ConfigError`."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    _check(
        not unknown,
        f"unknown key(s) in [{section}]: {', '.join(unknown)}; known: {', '.join(sorted(known))}",
    )
    coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**coerced)
