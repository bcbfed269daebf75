"""One data contract: the column names every table in the pipeline uses."""


class Columns:
    """Column names of the canonical event table and of every derived table."""

    # Canonical input (DESIGN.md §2): Yambda-compatible.
    USER = "user_id"
    ITEM = "item_id"
    TIMESTAMP = "timestamp"
    PLAYED_RATIO = "played_ratio_pct"
    TRACK_LENGTH = "track_length_seconds"
    IS_ORGANIC = "is_organic"

    # Item metadata.
    ARTIST = "artist_id"
    ALBUM = "album_id"
    GENRE = "genre"
    TEMPO = "tempo"
    EMBEDDING = "embedding"

    # Dense indices produced by extraction (0 is padding / unknown everywhere).
    USER_IDX = "user_idx"
    ITEM_IDX = "item_idx"
    ARTIST_IDX = "artist_idx"
    ALBUM_IDX = "album_idx"
    GENRE_IDX = "genre_idx"
    TEMPO_BUCKET = "tempo_bucket"
    SESSION = "session_id"
    WINDOW = "window"
    TS = "ts"  # event time as int64 seconds after cleaning

    # Q table.
    COUNT = "count"
    Q = "q"
    LOG_Q = "log_q"

    # Model outputs: every model writes the same long table.
    MODEL = "model"
    SCORE = "score"
    RANK = "rank"
    REQUEST_TS = "request_ts"

    REQUIRED_EVENTS = (USER, ITEM, TIMESTAMP)
    OPTIONAL_EVENTS = (PLAYED_RATIO, TRACK_LENGTH, IS_ORGANIC)


class Window:
    """Split windows of the evaluation protocol, in time order.

    The history of a request in window ``w`` is every event in a window ``< w``.
    """

    PRETRAIN = 0  # every model is fit on these events
    FINETUNE = 1  # ranker labels (cross-fitted by user) and the distillation requests
    VAL = 2  # early stopping and tuning
    TEST = 3  # reported metrics; never seen in training
    NAMES = {PRETRAIN: "pretrain", FINETUNE: "finetune", VAL: "val", TEST: "test"}


MODEL_NAMES = (
    "popularity",
    "user_popular",
    "user_recent",
    "itemknn",
    "als",
    "sasrec_no_logq",
    "sasrec_pretrain",
    "sasrec_two_stage",
    "two_stage_ranked",
)
