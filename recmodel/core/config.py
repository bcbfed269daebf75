"""Typed configuration: one frozen dataclass per stage, loaded by :mod:`recmodel.core.presets`.

A preset is a TOML file with one table per stage (``[synthetic]``, ``[extract]``, ...). Keys
that a preset leaves out keep the defaults written here. Every section checks its own values
when it is built: each number against its range (``LIMITS``), each word against its choices
(``CHOICES``), and the rules that tie fields together; :mod:`recmodel.core.presets` checks the
types and names before that. A run therefore stops in ``start`` on any bad setting, with the
key, the value and the rule in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A preset or flag value is invalid."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


_LIMIT = re.compile(r"^(>=|>|<=|<)(-?[\d.e]+)$|^([\[(])(-?[\d.e]+),(-?[\d.e]+)([\])])$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MIN_MEMORY_BYTES = 100e6  # below this DuckDB cannot run the extraction at any data size


def within(value: float, limit: str) -> bool:
    """``value`` satisfies ``limit``: ``">0"``, ``">=1"``, ``"[0,1]"``, ``"(0,1)"``, ``"[0,1)"``."""
    match = _LIMIT.match(limit)
    if match is None:
        raise ValueError(f"malformed limit {limit!r}")
    if match.group(1):
        op, bound = match.group(1), float(match.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[
            op
        ]
    lo, hi = float(match.group(4)), float(match.group(5))
    above = value >= lo if match.group(3) == "[" else value > lo
    below = value <= hi if match.group(6) == "]" else value < hi
    return above and below


def memory_bytes(text: str) -> float | None:
    """Bytes of a DuckDB size such as ``"4GB"`` or ``"512 MiB"``; None when it is not one."""
    match = _SIZE.match(text)
    return None if match is None else float(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class Section:
    """A config section: checks its numbers, words and cross-field rules when built.

    Subclasses set ``SECTION`` (its name in presets), ``LIMITS`` (field -> range, for every
    number and every element of a tuple of numbers) and ``CHOICES`` (field -> allowed words),
    and may add rules in :meth:`_check_rules`.
    """

    SECTION: ClassVar[str] = ""
    LIMITS: ClassVar[dict[str, str]] = {}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        for name, limit in self.LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            _check(
                len(values) > 0 and all(within(v, limit) and math.isfinite(v) for v in values),
                f"{self.SECTION}.{name} must be {limit}, got {value!r}",
            )
        for name, choices in self.CHOICES.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            _check(
                len(values) > 0 and all(v in choices for v in values),
                f"{self.SECTION}.{name} must be one of {', '.join(choices)}; got {value!r}",
            )
        self._check_rules()

    def _check_rules(self) -> None:
        """Rules that tie fields together (none by default)."""


@dataclass(frozen=True)
class SyntheticConfig(Section):
    """Size and shape of the built-in synthetic music-streaming log."""

    SECTION: ClassVar[str] = "synthetic"
    LIMITS: ClassVar[dict[str, str]] = {
        "n_users": ">=1", "n_tracks": ">=1", "n_artists": ">=1", "n_genres": ">=1",
        "days": ">0", "sessions_per_user_per_day": ">0", "mean_session_length": ">=1",
        "acoustic_dim": ">=1", "zipf_exponent": ">=0", "row_group_size": ">=1",
        "mean_album_size": ">=1", "new_user_share": "[0,1]", "activity_sigma": ">=0",
        "n_favourite_artists": ">=1", "n_favourite_tracks": ">=1",
        "favourite_lifetime_days": ">0", "taste_drift": "[0,1]", "missing_share": "[0,1]",
        "n_scenes": ">=1", "bursts": ">=1", "burst_gap_days": ">=0", "user_span_days": ">=0",
    }  # fmt: skip

    seed: int = 0
    n_users: int = 2_000  # listeners
    n_tracks: int = 5_000  # catalog size
    n_artists: int = 500  # each artist owns a Zipf share of the catalog
    n_genres: int = 12
    days: float = 60.0  # time span of the log (of its active days, with bursts)
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
    # Shapes of real logs (recmodel.synthetic.shapes); the defaults leave the log as simulated.
    bursts: int = 1  # the days are cut into this many bursts ...
    burst_gap_days: float = 0.0  # ... with this many silent days between two bursts
    relisten: bool = True  # False: a user plays a track once at most (a rating-like log)
    play_signal: bool = True  # False: no played_ratio_pct (every event a positive, as ratings)
    user_span_days: float = 0.0  # > 0: a user is active this many days after its first play
    item_fields: tuple[str, ...] = ("artist_id", "album_id", "genre", "tempo", "embedding")

    def _check_rules(self) -> None:
        _check(self.n_artists <= self.n_tracks, "synthetic: need n_artists <= n_tracks")
        known = ("artist_id", "album_id", "genre", "tempo", "embedding")
        unknown = sorted(set(self.item_fields) - set(known))
        _check(not unknown, f"synthetic.item_fields: unknown {unknown}; choose from {known}")


@dataclass(frozen=True)
class ExtractConfig(Section):
    """Cleaning, sessionization, filtering and the split (DESIGN.md §3)."""

    SECTION: ClassVar[str] = "extract"
    LIMITS: ClassVar[dict[str, str]] = {
        "listen_threshold_pct": "[0,100]", "session_gap_minutes": ">0",
        "min_user_events": ">=1", "min_item_events": ">=1", "test_share": "(0,1)",
        "val_share": "(0,1)", "finetune_share": "(0,1)", "test_days": ">0", "val_days": ">0",
        "finetune_days": ">0", "gap_minutes": ">=0", "loo_finetune_events": ">=0",
        "min_window_users": ">=0", "tempo_buckets": ">=1", "history_days": ">=0", "threads": ">=1",
        "shards": ">=1",
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "protocol": ("temporal", "leave_last_out"),
        "split_by": ("events", "days"),
    }

    listen_threshold_pct: float = 50.0  # played_ratio_pct >= this counts as listen+
    drop_consecutive_repeats: bool = False  # collapse A,A,A into A within a session
    session_gap_minutes: float = 30.0  # a pause longer than this starts a new session
    min_user_events: int = 5  # users with fewer pre-test listen+ events are dropped
    min_item_events: int = 2  # tracks with fewer pre-test listen+ events are dropped
    protocol: str = "temporal"  # "temporal" (global time split) or "leave_last_out"
    # temporal: "events" cuts the windows by share of the listen+ events, so they follow the
    # log's own activity (gaps of months, bursts of days); "days" gives them fixed lengths.
    split_by: str = "events"
    test_share: float = 0.13  # split_by = "events": the latest share of listen+ events is test
    val_share: float = 0.07  # ... the share before it validation
    finetune_share: float = 0.13  # ... and the share before that the ranker/distillation window
    test_days: float = 7.0  # split_by = "days": length of the test window at the end of the log
    val_days: float = 3.5  # ... the validation window just before it
    finetune_days: float = 7.0  # ... the ranker/distillation window before validation
    gap_minutes: float = 30.0  # temporal: events this close after a window start are dropped
    loo_finetune_events: int = 3  # leave_last_out: events per user in the finetune window
    # Fewer requests (users with events in the window and history before it) than this in the
    # finetune, validation or test window is an error of extract_sessions (0: no check).
    min_window_users: int = 10
    tempo_buckets: int = 16  # quantile buckets of tempo (0 = unknown)
    cut_time: str = ""  # ISO time: events after it are ignored (a retrain's "now"); "" = log end
    history_days: float = 0.0  # rolling window: only the last N days up to the cut; 0 = all
    memory_limit: str = "4GB"  # DuckDB memory limit; it spills to disk beyond it
    threads: int = 2  # DuckDB threads
    # > 1: the extraction runs over this many user shards (recmodel.ingest.sharded), one after
    # another, so DuckDB works on one shard's events at a time; the result is the same.
    shards: int = 1

    def _check_rules(self) -> None:
        shares = self.test_share + self.val_share + self.finetune_share
        _check(
            shares < 0.9,
            f"extract: test_share + val_share + finetune_share = {shares:.3g} leaves too little "
            "for the pretrain window; keep the sum below 0.9",
        )
        if self.cut_time:
            try:
                datetime.fromisoformat(self.cut_time)
            except ValueError as exc:
                raise ConfigError(
                    f"extract.cut_time {self.cut_time!r} is not an ISO time, "
                    "e.g. 2024-03-01T00:00:00+00:00"
                ) from exc
        size = memory_bytes(self.memory_limit)
        _check(
            size is not None,
            f"extract.memory_limit {self.memory_limit!r} is not a size; write e.g. '4GB' or '512MB'",
        )
        _check(
            size >= MIN_MEMORY_BYTES,
            f"extract.memory_limit {self.memory_limit!r} is below 100MB: DuckDB cannot extract "
            "with it; give it at least '1GB' (it spills to disk beyond the limit)",
        )


@dataclass(frozen=True)
class QConfig(Section):
    """The item frequency table Q and the negative-sampling proposal drawn from it."""

    SECTION: ClassVar[str] = "q"
    LIMITS: ClassVar[dict[str, str]] = {"smoothing": ">0", "alpha": "[0,1]", "uniform_mix": "[0,1]"}

    smoothing: float = 1.0  # additive count smoothing: every item has q > 0
    alpha: float = 1.0  # proposal ~ count^alpha (1 = frequency, 0 = uniform)
    uniform_mix: float = 0.05  # share of the proposal mass spread uniformly


@dataclass(frozen=True)
class ModelConfig(Section):
    """SASRec-style causal transformer with a metadata-enriched item tower."""

    SECTION: ClassVar[str] = "model"
    LIMITS: ClassVar[dict[str, str]] = {
        "d_model": ">=1", "n_blocks": ">=1", "n_heads": ">=1", "max_len": ">=2",
        "dropout": "[0,1)", "id_dim": ">=1", "meta_dim": ">=1", "temperature": ">0",
        "profile_size": ">=0", "profile_history": ">=1",
    }  # fmt: skip

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
    # Long-term profile: a learned bonus for the tracks of the plays before the window, by
    # decayed counts in wall-clock time (recmodel.retriever.profile); 0 = none.
    profile_size: int = 64
    profile_history: int = 1_000  # the profile reads at most this many plays before the window

    def _check_rules(self) -> None:
        _check(self.d_model % self.n_heads == 0, "model.d_model must be divisible by model.n_heads")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Pretraining with sampled softmax (and the no-logQ baseline, which shares it)."""

    SECTION: ClassVar[str] = "train"
    LIMITS: ClassVar[dict[str, str]] = {
        "epochs": ">=1", "batch_size": ">=1", "lr": ">0", "sparse_lr": ">=0",
        "weight_decay": ">=0", "warmup_steps": ">=0", "grad_clip": ">=0", "n_negatives": ">=1",
        "patience": ">=1", "eval_users": ">=0", "threads": ">=0", "processes": ">=0",
        "shard_events": ">=0", "nodes": ">=1", "master_port": ">=1",
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "negatives": ("shared", "in_batch", "both"),
        "logq": ("all", "none", "negatives_only"),
        "device": ("auto", "cpu", "cuda"),
    }

    seed: int = 0
    epochs: int = 10  # upper bound; early stopping on validation NDCG@10 usually ends sooner
    batch_size: int = 128  # training windows per step (global, across DDP ranks)
    lr: float = 1e-3  # AdamW for dense weights
    sparse_lr: float = 1e-2  # lazy (sparse) optimizer for the item-id embedding table
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 = no clipping
    n_negatives: int = 256  # shared sampled negatives per batch
    negatives: str = "shared"  # "shared", "in_batch" or "both"
    logq: str = "all"  # "all", "none" or "negatives_only"
    # Leave a window's other targets out of each position's negatives (docs/quality.md:
    # validation NDCG@10 0.2063 against 0.2102 without, so off by default).
    mask_window_targets: bool = False
    patience: int = 2  # epochs without validation NDCG@10 improvement before stopping
    eval_users: int = 2_000  # validation users scored each epoch (0 = all)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch CPU threads; 0 = cores / 2, as two trainings run side by side
    processes: int = 0  # data-parallel workers in the step; 0 = one per visible GPU (1 on CPU)
    # A run with more events than this leaves them on disk: each rank of the pretraining steps
    # reads its own user shards of about this many events, one at a time, and the test users
    # are scored shard by shard (recmodel.core.user_shards). 0 = always load every event.
    shard_events: int = 4_000_000
    # Machines each pretraining step runs on together (Metaflow @parallel): one rank each of
    # one data-parallel group, which rendezvous at the first machine on master_port.
    nodes: int = 1
    master_port: int = 29_500


@dataclass(frozen=True)
class RankerConfig(Section):
    """The built-in ranker whose scores the retriever is distilled from."""

    SECTION: ClassVar[str] = "ranker"
    LIMITS: ClassVar[dict[str, str]] = {
        "n_candidates": ">=1", "n_own_candidates": ">=0", "own_tau_days": ">0",
        "n_popular_candidates": ">=0", "n_folds": ">=2", "max_iter": ">=1",
        "learning_rate": ">0", "max_leaf_nodes": ">=2", "max_train_rows": ">=0",
    }  # fmt: skip

    n_candidates: int = 100  # retriever top-K per request
    n_own_candidates: int = 50  # + the user's own tracks by decayed plays (whole history)
    own_tau_days: float = 14.0  # ... with this decay time
    n_popular_candidates: int = 20  # + the most played tracks
    # The pretrained retriever's score and rank as features. Off by default: the served system
    # re-ranks the finetuned retriever's candidates, whose scores the ranker never saw in
    # training (default preset, test NDCG@10 of two_stage_ranked: 0.2841 with, 0.3011 without).
    retriever_features: bool = False
    n_folds: int = 2  # cross-fitting folds over users
    max_iter: int = 400  # HistGradientBoosting iterations (validation: 400 at 0.05 > 200 at 0.1)
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    # Each booster is fit on the candidates of a seeded sample of whole users holding at most
    # this many rows (0 = every row); every request is still scored. The trees' fit time and
    # binned copy grow with the rows they see, not with the log.
    max_train_rows: int = 2_000_000
    seed: int = 0


@dataclass(frozen=True)
class FinetuneConfig(Section):
    """Pairwise logit-loss distillation of the ranker into the retriever."""

    SECTION: ClassVar[str] = "finetune"
    LIMITS: ClassVar[dict[str, str]] = {
        "epochs": ">=0", "batch_size": ">=1", "lr": ">0", "sparse_lr": ">=0",
        "softmax_weight": ">=0", "patience": ">=1",
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"pair_weighting": ("none", "rank_gap")}

    epochs: int = 4
    batch_size: int = 32  # requests per step
    lr: float = 2e-3  # tuned on validation NDCG@10 of the default preset (2e-4 never improved)
    sparse_lr: float = 2e-2
    pair_weighting: str = "none"  # "none" or "rank_gap"
    softmax_weight: float = 0.5  # weight of the next-item sampled-softmax term on the requests
    patience: int = 2


@dataclass(frozen=True)
class BaselinesConfig(Section):
    """Classic baselines, each tuned on validation over its grid and refit before the test.

    The grids hold what peers use: ALS confidence up to alpha 100 with 32-128 factors,
    item-kNN with 20-200 neighbours and three weightings, the decay of user_recent from a day
    to three months. ``search`` walks them by coordinate ascent or in full
    (:mod:`recmodel.baselines.tuning`).
    """

    SECTION: ClassVar[str] = "baselines"
    LIMITS: ClassVar[dict[str, str]] = {
        "itemknn_neighbours": ">=1", "als_factors": ">=1", "als_regularization": ">=0",
        "als_alpha": ">=0", "als_iterations": ">=1", "user_recent_tau_days": ">0",
        "tune_users": ">=0",
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "itemknn_weighting": ("cosine", "bm25", "tfidf"),
        "search": ("coordinate", "grid"),
    }

    itemknn_neighbours: tuple[int, ...] = (20, 50, 100, 200)  # grid
    itemknn_weighting: tuple[str, ...] = ("cosine", "bm25", "tfidf")  # grid
    als_factors: tuple[int, ...] = (32, 64, 128)  # grid
    als_regularization: tuple[float, ...] = (0.01, 0.1, 1.0)  # grid
    als_alpha: tuple[float, ...] = (1.0, 10.0, 40.0, 100.0)  # grid; confidence = 1 + alpha * plays
    als_iterations: int = 15
    user_recent_tau_days: tuple[float, ...] = (1.0, 3.0, 7.0, 14.0, 30.0, 90.0)  # grid
    tune_users: int = 2_000  # validation users scored per setting (0 = all)
    # Item-kNN is skipped, with the reason in the report, when its similarity matrix (tracks x
    # the grid's largest neighbours) and the play matrix would need more than this.
    itemknn_memory_limit: str = "16GB"

    def _check_rules(self) -> None:
        _check(
            memory_bytes(self.itemknn_memory_limit) is not None,
            f"baselines.itemknn_memory_limit {self.itemknn_memory_limit!r} is not a size; "
            "write e.g. '16GB' or '512MB'",
        )

    search: str = "coordinate"  # or "grid": every point of the product
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig(Section):
    """Metrics and the report (DESIGN.md §3)."""

    SECTION: ClassVar[str] = "eval"
    LIMITS: ClassVar[dict[str, str]] = {
        "ks": ">=1", "max_test_users": ">=0", "chunk_items": ">=1", "bootstrap_samples": ">=1",
        "gate_margin": ">=0",
    }  # fmt: skip
    GATE_METRICS: ClassVar[tuple[str, ...]] = ("recall", "ndcg", "hitrate")  # one value per user

    ks: tuple[int, ...] = (10, 50, 100)
    filter_seen: bool = False  # music is re-listened: keep already-heard tracks by default
    max_test_users: int = 0  # 0 = all test users
    chunk_items: int = 65_536  # catalog chunk of the top-k scan (bounds memory)
    bootstrap_samples: int = 1_000
    # Champion gating (recmodel.serving.champion): sasrec_two_stage and the champion on this
    # run's test users; rejected when the paired 95% interval of the difference on gate_metric
    # lies wholly below -gate_margin (significantly worse by more than it), else promoted.
    gate_metric: str = "ndcg@10"
    gate_margin: float = 0.005  # how much worse than the champion a run may be
    champion_eligible: bool = True  # false: gated and reported, never tagged champion (smoke tests)
    seed: int = 0

    def _check_rules(self) -> None:
        name, _, k = self.gate_metric.partition("@")
        _check(
            name in self.GATE_METRICS and k.isdigit() and int(k) in self.ks,
            f"eval.gate_metric must be recall@k, ndcg@k or hitrate@k with k in eval.ks "
            f"{list(self.ks)}; got {self.gate_metric!r}",
        )


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
