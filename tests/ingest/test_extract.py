"""Extraction SQL: tiny handwritten logs with exact outputs, and a brute-force reference."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.columns import Window
from recmodel.core.config import ExtractConfig
from recmodel.core.errors import InputError
from recmodel.core.sql import SQL_DIR, SqlRunner
from recmodel.ingest.extract import OUTPUTS, extract

DAY, MINUTE = 86_400, 60


def connect(events, items=(), id_type: pa.DataType | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with raw_events/raw_items views over small Arrow tables.

    ``events`` are ``(user, item, ts[, played_ratio_pct[, track_length_seconds]])`` tuples;
    ``items`` are ``(item, artist, album, genre, tempo, embedding)`` tuples.
    """
    id_type = id_type or pa.int64()
    event_schema = pa.schema(
        [
            ("user_id", id_type),
            ("item_id", id_type),
            ("timestamp", pa.int64()),
            ("played_ratio_pct", pa.float64()),
            ("track_length_seconds", pa.float64()),
            ("is_organic", pa.int8()),
        ]
    )
    item_schema = pa.schema(
        [
            ("item_id", id_type),
            ("artist_id", pa.int64()),
            ("album_id", pa.int64()),
            ("genre", pa.string()),
            ("tempo", pa.float64()),
            ("embedding", pa.list_(pa.float32())),
        ]
    )
    rows = [(*event, *(None,) * (5 - len(event)), 1) for event in events]
    con = duckdb.connect()
    con.register(
        "events_arrow",
        pa.Table.from_pylist(
            [dict(zip(event_schema.names, row, strict=True)) for row in rows], schema=event_schema
        ),
    )
    con.register(
        "items_arrow",
        pa.Table.from_pylist(
            [dict(zip(item_schema.names, row, strict=True)) for row in items], schema=item_schema
        ),
    )
    con.execute("create view raw_events as select * from events_arrow")
    con.execute("create view raw_items as select * from items_arrow")
    return con


def config(**overrides) -> ExtractConfig:
    """Thresholds off and leave-last-out with no finetune events, unless overridden."""
    base = dict(
        min_user_events=1,
        min_item_events=1,
        min_window_users=0,
        protocol="leave_last_out",
        loo_finetune_events=0,
    )
    return ExtractConfig(**{**base, **overrides})


def table(result, name: str) -> dict[str, list]:
    return pq.read_table(result.paths[name]).to_pydict()


def events_by_id(result) -> list[tuple]:
    """Output events as ``(user_id, item_id, ts, window, session_id)`` in file order."""
    users, items, events = table(result, "users"), table(result, "items"), table(result, "events")
    user_of = dict(zip(users["user_idx"], users["user_id"], strict=True))
    item_of = dict(zip(items["item_idx"], items["item_id"], strict=True))
    return [
        (user_of[u], item_of[i], t, w, s)
        for u, i, t, w, s in zip(
            events["user_idx"],
            events["item_idx"],
            events["ts"],
            events["window"],
            events["session_id"],
            strict=True,
        )
    ]


def test_session_gap_boundary_pause_equal_to_gap_stays(tmp_path):
    gap = 30 * MINUTE
    times = (0, gap, 2 * gap + 1, 2 * gap + 2)  # pauses: gap, gap + 1 s, 1 s
    log = [
        (u, i, t)
        for u, items in ((1, (1, 2, 3, 4)), (2, (4, 3, 2, 1)))
        for i, t in zip(items, times, strict=True)
    ]
    result = extract(connect(log), config(session_gap_minutes=30), tmp_path)
    assert [e[4] for e in events_by_id(result)] == [0, 0, 1, 1] * 2


def test_timestamp_ties_are_ordered_by_item_id(tmp_path):
    log = [(1, 7, 100), (1, 3, 100), (1, 5, 50), (2, 7, 10), (2, 3, 20), (2, 5, 30)]
    result = extract(connect(log), config(), tmp_path)
    assert events_by_id(result)[:3] == [(1, 5, 50, 0, 0), (1, 3, 100, 2, 0), (1, 7, 100, 3, 0)]


def test_tie_rule_on_string_ids_is_lexicographic(tmp_path):
    log = [("u", "9", 100), ("u", "10", 100), ("u", "10", 0), ("v", "9", 0), ("v", "10", 5)]
    result = extract(connect(log, id_type=pa.string()), config(), tmp_path)
    assert [e[:4] for e in events_by_id(result)[:3]] == [
        ("u", "10", 0, 0),
        ("u", "10", 100, 2),
        ("u", "9", 100, 3),
    ]


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (True, [(0, 0), (120, 0), (180, 0), (3780, 1)]),
        (False, [(0, 0), (60, 0), (120, 0), (180, 0), (3780, 1)]),
    ],
)
def test_consecutive_repeats_within_a_session(tmp_path, drop, expected):
    log = [
        (1, 10, 0),
        (1, 10, 60),
        (1, 20, 120),
        (1, 10, 180),
        (1, 10, 3780),
        (2, 10, 0),
        (2, 20, 1),
    ]
    result = extract(connect(log), config(drop_consecutive_repeats=drop), tmp_path)
    assert [(e[2], e[4]) for e in events_by_id(result) if e[0] == 1] == expected
    assert result.summary["dropped"]["consecutive_repeats"] == (1 if drop else 0)


def test_cleaning_threshold_duplicates_and_missing_ids(tmp_path):
    log = [
        (1, 10, 0, 49.9),
        (1, 11, 10, 50.0),
        (1, 12, 20, None),
        (1, 13, 30, 80.0),
        (1, 13, 30, 80.0),  # exact duplicate: removed
        (1, 13, 30, 90.0),  # same listen, another ratio: a second event
        (None, 10, 40, 100.0),
        (1, None, 40, 100.0),
        (1, 10, None, 100.0),
        (2, 11, 0),
        (2, 12, 1),
        (2, 13, 2),
    ]
    result = extract(connect(log), config(), tmp_path)
    assert [e[1:3] for e in events_by_id(result) if e[0] == 1] == [
        (11, 10),
        (12, 20),
        (13, 30),
        (13, 30),
    ]
    assert result.summary["dropped"] == {
        "missing_ids_or_timestamp": 3,
        "outside_rolling_window": 0,
        "duplicates": 1,
        "skips": 1,
        "consecutive_repeats": 0,
        "leakage_gap": 0,
        "frequency_thresholds": 0,
        "test_out_of_vocabulary": 0,
    }
    assert result.summary["stages"]["raw"] == {"events": 12}
    assert result.summary["stages"]["listen"] == {"events": 7, "users": 2, "items": 3}


def test_rolling_window_keeps_the_last_days_up_to_the_cut(tmp_path):
    # The test targets are re-listens, so that they are in the vocabulary.
    log = [
        (1, 10, 0),
        (1, 11, 2 * DAY),
        (1, 12, 5 * DAY),
        (1, 13, 6 * DAY),
        (1, 14, 6 * DAY + 9),
        (1, 13, 7 * DAY),
        (1, 16, 9 * DAY),
        (2, 10, 5 * DAY + 1),
        (2, 11, 7 * DAY),
        (2, 10, 8 * DAY),
    ]
    cut = "1970-01-09T00:00:00"  # 8 days after the epoch, UTC
    result = extract(connect(log), config(cut_time=cut, history_days=3.0), tmp_path)
    kept = sorted(e[:3] for e in events_by_id(result))
    # (5 days, 8 days]: the event at exactly 5 days and the one after the cut are left out
    assert kept == [
        (1, 13, 6 * DAY),
        (1, 13, 7 * DAY),
        (1, 14, 6 * DAY + 9),
        (2, 10, 5 * DAY + 1),
        (2, 10, 8 * DAY),
        (2, 11, 7 * DAY),
    ]
    assert result.summary["dropped"]["outside_rolling_window"] == 4
    assert result.queries[0]["params"]["cut_epoch"] == 8 * DAY


def test_temporal_windows_and_leakage_gap(tmp_path):
    end = 10 * DAY
    t_ft, t_val, t_test, gap = end - 3 * DAY, end - 2 * DAY, end - DAY, 30 * MINUTE
    kept = [
        (t_ft - 1, 0),
        (t_ft + gap, 1),
        (t_val - 1, 1),
        (t_val + gap, 2),
        (t_test - 1, 2),
        (t_test + gap, 3),
        (end, 3),
    ]
    in_gap = [t_ft, t_ft + gap - 1, t_val, t_test, t_test + gap - 1]
    log = [(1, 5, t) for t, _ in kept] + [(1, 5, t) for t in in_gap]
    cfg = config(
        protocol="temporal",
        split_by="days",
        test_days=1,
        val_days=1,
        finetune_days=1,
        gap_minutes=30,
        session_gap_minutes=1e6,
    )
    result = extract(connect(log), cfg, tmp_path)
    assert [(e[2], e[3]) for e in events_by_id(result)] == kept
    times = result.summary["split_times"]
    assert [times[k]["epoch"] for k in ("t_finetune", "t_val", "t_test", "t_max")] == [
        t_ft,
        t_val,
        t_test,
        end,
    ]
    assert times["t_test"]["iso"] == "1970-01-10T00:00:00+00:00"
    assert result.summary["dropped"]["leakage_gap"] == len(in_gap)


def test_leave_last_out_windows(tmp_path):
    log = [(1, 5, t) for t in range(7)] + [(2, 5, 0), (2, 5, 1), (3, 5, 0)]
    result = extract(connect(log), config(loo_finetune_events=2), tmp_path)
    assert [(e[0], e[3]) for e in events_by_id(result)] == [
        (1, 0),
        (1, 0),
        (1, 0),
        (1, 1),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 2),
        (2, 3),
    ]
    assert result.summary["n_test_users"] == 2  # user 3 has no history before its test event
    stages = result.summary["stages"]
    assert stages["split"]["test"] == {"events": 3, "users": 3, "items": 1}
    assert stages["filtered"]["test"] == {"events": 2}
    assert stages["filtered"]["val"] == {"events": 2}
    assert stages["final"]["all"] == {"events": 9, "users": 2, "items": 1, "sessions": 2}
    assert stages["final"]["finetune"] == {"events": 2, "users": 1, "items": 1}
    assert "t_test" not in result.summary["split_times"]


ITEMS = [
    (10, 100, None, "rock", 120.0, [1.0, 2.0]),
    (20, 200, 8, "pop", 90.0, None),
    (20, None, None, None, None, None),  # a second row for item 20: the complete one wins
    (30, 100, 9, None, 120.0, [3.0, 4.0]),
    (99, 300, 1, "jazz", 60.0, [5.0, 6.0]),  # not in the log
]
VOCAB_LOG = [  # (user, item, ts, ratio, track length); last event test, second last val
    (1, 30, 0, None, 100.0),
    (1, 10, 10, None, 200.0),
    (1, 30, 20, None, None),
    (1, 40, 30, None, 180.0),
    (1, 20, 40),
    (1, 10, 50, None, 1000.0),
    (2, 30, 0, None, 300.0),
    (2, 20, 10),
    (2, 30, 20, None, 5000.0),
    (3, 10, 0, None, 220.0),
    (3, 20, 10),
]


def test_vocabulary_order_and_metadata_codes(tmp_path):
    result = extract(connect(VOCAB_LOG, ITEMS), config(tempo_buckets=2), tmp_path)
    assert table(result, "items") == {
        "item_idx": [1, 2, 3, 4],
        "item_id": [30, 10, 20, 40],  # pre-test counts 3, 2, 2, 1; the tie by item_id
        "count": [3, 2, 2, 1],
        "artist_idx": [1, 1, 2, 0],  # artist 100 has 5 pre-test events, 200 has 2
        "album_idx": [1, 0, 2, 0],  # album 9 (3 events) before album 8 (2)
        "genre_idx": [0, 2, 1, 0],  # pop and rock tie at 2 events: by name
        "tempo_bucket": [2, 2, 1, 0],  # 90 is the lower third: ceil(2 * 1/3) = 1
        "track_length_seconds": [200.0, 210.0, None, 180.0],  # medians, test events excluded
        "embedding": [[3.0, 4.0], [1.0, 2.0], None, None],
    }
    assert table(result, "users") == {"user_idx": [0, 1, 2], "user_id": [1, 2, 3]}
    assert table(result, "test_targets") == {
        "user_id": [1, 2, 3],
        "item_id": [10, 30, 20],
        "user_idx": [0, 1, 2],
        "item_idx": [2, 1, 3],
        "heard_before": [True, True, False],  # users 1 and 2 replay a track, user 3 does not
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_track_length_is_the_median_of_pre_test_events(tmp_path, seed):
    """The median from (item, length) counts equals numpy's median of the pre-test events."""
    rng = np.random.default_rng(seed)
    lengths = [None, 180.0, 181.5, 200.0, 240.0, 301.25]
    log = []
    for user in range(30):
        n = int(rng.integers(3, 40))
        times = np.sort(rng.choice(100 * DAY, n, replace=False))
        for ts in times:
            item = int(rng.integers(1, 13))
            # Items 1-3 have one length each, item 12 none, the others a mix with unknowns.
            length = lengths[item] if item <= 3 else lengths[int(rng.integers(len(lengths)))]
            length = None if item == 12 else length
            log.append((user, item, int(ts), None, length))
    cfg = config(drop_consecutive_repeats=False)  # leave-last-out: each user's last is a test
    result = extract(connect(log), cfg, tmp_path)
    by_user = defaultdict(list)
    for user, item, ts, _, length in log:
        by_user[user].append((ts, item, length))
    pre_test = defaultdict(list)
    for events in by_user.values():
        for _, item, length in sorted(events)[:-1]:
            if length is not None:
                pre_test[item].append(length)
    items = table(result, "items")
    got = dict(zip(items["item_id"], items["track_length_seconds"], strict=True))
    expected = {i: float(np.median(pre_test[i])) if pre_test[i] else None for i in got}
    assert got == expected
    assert got[12] is None and len(got) == 12
    assert sum(len(v) % 2 == 0 for v in pre_test.values()) > 2  # even counts: two middles


def test_empty_item_table_gives_unknown_codes(tmp_path):
    result = extract(connect(VOCAB_LOG), config(), tmp_path)
    items = table(result, "items")
    for column in ("artist_idx", "album_idx", "genre_idx", "tempo_bucket"):
        assert items[column] == [0, 0, 0, 0]
    assert items["embedding"] == [None] * 4


def test_frequency_thresholds_items_first_then_users(tmp_path):
    log = [
        (1, 1, 0),
        (1, 2, 10),
        (1, 1, 20),
        (1, 3, 30),
        (2, 1, 0),
        (2, 4, 10),
        (2, 2, 20),
        (3, 2, 0),
        (3, 1, 10),
        (3, 1, 20),
        (4, 1, 0),
        (4, 1, 10),
    ]
    result = extract(connect(log), config(min_item_events=2, min_user_events=2), tmp_path)
    # Items 1 and 2 reach 2 pre-test events; on them users 1 and 3 keep 2+, user 2 only 1.
    assert events_by_id(result) == [
        (1, 1, 0, 0, 0),
        (1, 2, 10, 0, 0),
        (1, 1, 20, 2, 0),
        (3, 2, 0, 0, 0),
        (3, 1, 10, 2, 0),
        (3, 1, 20, 3, 0),
    ]
    dropped = result.summary["dropped"]
    assert (dropped["frequency_thresholds"], dropped["test_out_of_vocabulary"]) == (5, 1)
    assert result.summary["kept"] == {"items_min_item_events": 2, "users_min_user_events": 2}
    assert table(result, "test_targets")["user_id"] == [3]


def test_everything_filtered_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"0 of 2 users have >= min_user_events=50"):
        extract(connect(VOCAB_LOG[:9]), config(min_user_events=50), tmp_path)
    assert not any(path.exists() for path in (tmp_path / f"{n}.parquet" for n in OUTPUTS))


def test_a_window_without_requests_is_an_input_error(tmp_path):
    # leave-last-out with loo_finetune_events=0: the finetune window is empty
    message = (
        r"the finetune window \[.*\) holds 0 listen\+ events of 0 users, 0 of them with history "
        r"before it \(at least extract.min_window_users=4 are needed to train the ranker"
    )
    with pytest.raises(InputError, match=message):
        extract(connect(VOCAB_LOG), config(min_window_users=4), tmp_path)
    assert not any(path.exists() for path in (tmp_path / f"{n}.parquet" for n in OUTPUTS))


def test_no_listen_events_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"0 of 2 clean .* listen_threshold_pct=50"):
        extract(connect([(1, 1, 0, 10.0), (1, 2, 5, 20.0)]), config(), tmp_path)


def test_queries_record_each_file_text_params_and_rows(tmp_path):
    result = extract(connect(VOCAB_LOG, ITEMS), config(), tmp_path)
    files = [q["file"] for q in result.queries]
    assert files[:7] == [
        "sql/counts/raw_events.sql",
        "sql/01_clean_events.sql",
        "sql/counts/clean_events.sql",
        "sql/02_sessionize.sql",
        "sql/counts/sessions.sql",
        "sql/03_split_bounds.sql",
        "sql/04_split_leave_last_out.sql",
    ]
    assert files[-4:] == [
        f"sql/{n}"
        for n in (
            "12_write_events.sql",
            "13_write_items.sql",
            "14_write_users.sql",
            "15_write_test_targets.sql",
        )
    ]
    for query in result.queries:
        assert query["sql"] == (SQL_DIR.parent / query["file"]).read_text()
        assert all(f"${name}" in query["sql"] for name in query["params"])
        assert query["seconds"] >= 0
    by_file = {q["file"]: q for q in result.queries}
    assert by_file["sql/01_clean_events.sql"]["params"] == {
        "listen_threshold_pct": 50.0,
        "cut_epoch": None,
        "history_seconds": 0.0,
    }
    assert by_file["sql/12_write_events.sql"]["params"] == {
        "events_path": str(tmp_path / "events.parquet")
    }
    assert by_file["sql/12_write_events.sql"]["rows"] == 11
    assert by_file["sql/13_write_items.sql"]["rows"] == 4


EVENT_TABLES = {"clean_events", "sessions", "split_events", "filtered_events", "final_events"}


@pytest.mark.parametrize("protocol", ["temporal", "leave_last_out"])
def test_each_table_is_dropped_after_its_last_reader(tmp_path, monkeypatch, protocol):
    """Tables alive when each file starts: only what a later file reads."""
    alive, real = {}, SqlRunner.run

    def spy(runner, name, params=None, fetch="rows"):
        query = "select table_name from duckdb_tables() where temporary"
        alive[name] = {table for (table,) in runner.con.execute(query).fetchall()}
        return real(runner, name, params, fetch)

    monkeypatch.setattr(SqlRunner, "run", spy)
    log = random_log(0, as_string=False)
    cfg = config(protocol=protocol, split_by="days", test_days=4, val_days=3, finetune_days=5)
    result = extract(connect(log), cfg, tmp_path)
    counts = {
        f"{t}_counts"
        for t in ("raw_events", "clean_events", "sessions", "split_events", "filtered_events")
    }
    assert alive["08_item_vocab.sql"] == {"split_bounds", "filtered_events", *counts}
    assert alive["11_summary.sql"] == {
        "split_bounds", "final_events", "item_vocab", "user_vocab", *counts
    }  # fmt: skip
    assert alive["15_write_test_targets.sql"] == {"split_bounds", "final_events"}
    # One event-sized table when a file starts: while it runs, the one it reads and the one it
    # builds.
    assert max(len(tables & EVENT_TABLES) for tables in alive.values()) == 1
    by_file = {q["file"]: q["dropped"] for q in result.queries}
    assert by_file["sql/02_sessionize.sql"] == ["clean_events"]
    assert by_file[f"sql/04_split_{protocol}.sql"] == ["sessions"]


def test_output_schemas(tmp_path):
    result = extract(connect(VOCAB_LOG, ITEMS), config(), tmp_path)
    schema = pq.read_schema(result.paths["events"])
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_idx", "int32"),
        ("item_idx", "int32"),
        ("ts", "int64"),
        ("window", "int8"),
        ("session_id", "int32"),
    ]
    assert (
        str(pq.read_schema(result.paths["items"]).field("embedding").type) == "list<element: float>"
    )


# -- brute-force reference ------------------------------------------------------------------


def reference(log, cfg: ExtractConfig):
    """Plain-Python extraction: events, item ids by index, counts, users and test targets."""
    rows = [r for r in set(log) if None not in r[:3]]
    listens = defaultdict(list)
    for user, item, ts, ratio in rows:
        if ratio is None or ratio >= cfg.listen_threshold_pct:
            listens[user].append((ts, item))
    sessions = {}
    for user, events in listens.items():
        kept, session, prev = [], -1, None
        for ts, item in sorted(events):
            new = prev is None or ts - prev[0] > cfg.session_gap_minutes * MINUTE
            session += new
            if not (cfg.drop_consecutive_repeats and not new and item == prev[1]):
                kept.append((ts, item, session))
            prev = (ts, item)
        sessions[user] = kept
    labelled = split_reference(sessions, cfg)
    pre = [(u, i) for u, i, _, w, _ in labelled if w < 3]
    item_n = defaultdict(int)
    for _, item in pre:
        item_n[item] += 1
    kept_items = {i for i, n in item_n.items() if n >= cfg.min_item_events}
    user_n = defaultdict(int)
    for user, item in pre:
        user_n[user] += item in kept_items
    kept_users = {u for u, n in user_n.items() if n >= cfg.min_user_events}
    filtered = [e for e in labelled if e[0] in kept_users and (e[3] == 3 or e[1] in kept_items)]
    counts = defaultdict(int)
    for e in filtered:
        counts[e[1]] += e[3] < 3
    vocab = sorted((i for i in counts if counts[i]), key=lambda i: (-counts[i], i))
    item_idx = {item: k + 1 for k, item in enumerate(vocab)}
    users = sorted({e[0] for e in filtered})
    user_idx = {user: k for k, user in enumerate(users)}
    final = sorted(
        (user_idx[u], item_idx[i], t, w, s, i) for u, i, t, w, s in filtered if i in item_idx
    )
    events = [e[:5] for e in sorted(final, key=lambda e: (e[0], e[2], e[5]))]
    targets = sorted({(e[0], e[1]) for e in events if e[3] == 3})
    return events, vocab, [counts[i] for i in vocab], users, targets


def loo_window(back: int, finetune_events: int) -> int:
    """Window of the event ``back`` places before a user's last one (0 = the last)."""
    if back <= 1:
        return 3 - back
    return 1 if back <= 1 + finetune_events else 0


def split_reference(sessions, cfg):
    out = []
    if cfg.protocol == "leave_last_out":
        for user, events in sessions.items():
            for back, (ts, item, s) in enumerate(reversed(events)):
                out.append((user, item, ts, loo_window(back, cfg.loo_finetune_events), s))
        return out
    t_max = max(ts for events in sessions.values() for ts, _, _ in events)
    t_test = t_max - round(cfg.test_days * DAY)
    t_val = t_test - round(cfg.val_days * DAY)
    t_ft = t_val - round(cfg.finetune_days * DAY)
    gap = round(cfg.gap_minutes * MINUTE)
    for user, events in sessions.items():
        for ts, item, s in events:
            if any(start <= ts < start + gap for start in (t_ft, t_val, t_test)):
                continue
            window = int(np.searchsorted([t_ft, t_val, t_test], ts, side="right"))
            out.append((user, item, ts, window, s))
    return out


def random_log(seed: int, as_string: bool):
    rng = np.random.default_rng(seed)
    n = 3_000
    users = rng.integers(0, 40, n)
    items = np.minimum(rng.zipf(1.3, n), 60)
    ts = rng.integers(0, 30 * DAY, n) // 1200 * 1200  # coarse times make ties
    ratio = rng.choice([None, 10.0, 49.9, 50.0, 75.0, 100.0], n)
    log = [(int(u), int(i), int(t), r) for u, i, t, r in zip(users, items, ts, ratio, strict=True)]
    log += log[:200]  # exact duplicates
    log += [(u, i, t + 60, r) for u, i, t, r in log[200:400]]  # consecutive repeats
    log += [(None, 1, 0, None), (1, 1, None, None)]
    if as_string:
        log = [(None if u is None else f"u{u}", str(i), t, r) for u, i, t, r in log]
    return log


@pytest.mark.parametrize(
    ("seed", "protocol"),
    [(0, "temporal"), (1, "temporal"), (2, "leave_last_out"), (3, "leave_last_out")],
)
def test_matches_brute_force_reference(tmp_path, seed, protocol):
    as_string, drop_repeats = seed % 2 == 1, seed in (1, 2)
    log = random_log(seed, as_string)
    cfg = ExtractConfig(
        protocol=protocol,
        min_user_events=5,
        min_item_events=3,
        min_window_users=0,
        split_by="days",
        drop_consecutive_repeats=drop_repeats,
        session_gap_minutes=40,
        test_days=4,
        val_days=3,
        finetune_days=5,
        gap_minutes=120,
        loo_finetune_events=2,
    )
    id_type = pa.string() if as_string else pa.int64()
    result = extract(connect(log, id_type=id_type), cfg, tmp_path)
    events, vocab, counts, users, targets = reference(log, cfg)
    got = table(result, "events")
    assert list(zip(*got.values(), strict=True)) == events
    assert table(result, "items")["item_id"] == vocab
    assert table(result, "items")["count"] == counts
    assert table(result, "users")["user_id"] == users
    got_targets = table(result, "test_targets")
    assert list(zip(got_targets["user_idx"], got_targets["item_idx"], strict=True)) == targets
    heard = {(e[0], e[1]) for e in events if e[3] < 3}
    assert got_targets["heard_before"] == [t in heard for t in targets]
    assert len(targets) > 10 and len(vocab) > 10


def test_connection_settings_and_cleanup(tmp_path):
    con = connect(VOCAB_LOG)
    result = extract(con, config(threads=1, memory_limit="1GB"), tmp_path / "a")
    settings = result.summary["duckdb_settings"]
    assert settings["temp_directory"] == str(tmp_path / "a" / "duckdb_spill")
    assert (settings["threads"], settings["preserve_insertion_order"]) == (1, False)
    assert con.execute("select count(*) from duckdb_tables() where temporary").fetchall() == [(0,)]
    # A directory the caller chose is kept; a second run on the same connection works.
    result = extract(con, config(), tmp_path / "b")
    assert result.summary["duckdb_settings"]["temp_directory"] == str(
        tmp_path / "a" / "duckdb_spill"
    )
    assert result.summary["n_events"] == len(VOCAB_LOG)


def burst_log(seed: int, bursts: int = 4, burst_days: int = 5, gap_days: int = 60) -> list:
    """Listens in short bursts months apart (a scrobble log), every event a listen+."""
    rng = np.random.default_rng(seed)
    log = []
    for b in range(bursts):
        start = b * (burst_days + gap_days) * DAY
        n = int(rng.integers(300, 700))
        ts = start + rng.integers(0, burst_days * DAY, n)
        users, items = rng.integers(0, 50, n), rng.integers(1, 40, n)
        log += [(int(u), int(i), int(t)) for u, i, t in zip(users, items, ts, strict=True)]
    return log


def share_bounds(ts: np.ndarray, shares: tuple[float, float, float]) -> list[int]:
    """t_test, t_val, t_finetune by a plain loop: the latest minute whose suffix reaches each
    cumulative share of the events."""
    minutes = sorted(set(int(t) // 60 for t in ts), reverse=True)
    bounds, cumulative = [], 0.0
    for share in shares:
        cumulative += share
        for minute in minutes:  # latest first: the first that reaches the share
            if (ts >= 60 * minute).sum() >= cumulative * len(ts):
                bounds.append(60 * minute)
                break
    return bounds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_by_share_of_events_match_a_plain_loop(tmp_path, seed):
    log = burst_log(seed)
    cfg = config(protocol="temporal", split_by="events", gap_minutes=0, session_gap_minutes=1)
    result = extract(connect(log), cfg, tmp_path)
    # cleaning drops exact duplicates; every other event is a listen+ of its own session
    clean = np.array(sorted({(u, i, t) for u, i, t in log}), dtype=np.int64)[:, 2]
    times = result.summary["split_times"]
    got = [times[name]["epoch"] for name in ("t_test", "t_val", "t_finetune")]
    assert got == share_bounds(clean, (cfg.test_share, cfg.val_share, cfg.finetune_share))
    windows = table(result, "events")["window"]
    shares = np.bincount(windows, minlength=4) / len(windows)
    assert shares[Window.TEST] >= cfg.test_share and shares[Window.PRETRAIN] > 0.5


def test_windows_by_days_that_fall_into_a_gap_are_an_error_naming_the_fix(tmp_path):
    log = burst_log(0, gap_days=90)  # 7 + 3.5 + 7 days before the end: in the burst and gap
    days = config(protocol="temporal", split_by="days", min_window_users=5, gap_minutes=0)
    with pytest.raises(InputError) as info:
        extract(connect(log), days, tmp_path)
    message = str(info.value)
    assert re.search(
        r"the (finetune|val) window \[.*\) holds 0 listen\+ events of 0 users", message
    )
    assert (
        "The log spans 1970-01-01" in message and "listen+ events per window: pretrain" in message
    )
    assert 'extract.split_by = "events"' in message
    by_share = dataclasses.replace(days, split_by="events")
    result = extract(connect(log), by_share, tmp_path / "share")
    assert all(n >= 5 for n in result.summary["requests"].values())
