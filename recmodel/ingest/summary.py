"""The ``data_summary`` of an extraction, and the checks that stop a run on an unusable result.

The summary SQL (``sql/11_summary.sql`` and ``sql/counts/``) yields rows ``(stage, window,
events, users, items, sessions)``; :func:`build_summary` nests them by stage and window and adds
the split times, the drop counts, the totals and one row per window (:func:`window_table`).
:func:`check_sanity` raises an :class:`~recmodel.core.errors.InputError` that names the counts
and the setting behind them when nothing usable is left, and :func:`check_windows` when a
window is too small to serve its purpose: a finetune window without requests cannot train the
ranker, a validation window without users cannot stop the training, a test window without
users cannot judge it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from recmodel.core.columns import Window
from recmodel.core.config import ExtractConfig
from recmodel.core.errors import InputError

# Stage names of the summary SQL, in pipeline order.
FLAT_STAGES = ("raw", "raw_complete", "raw_in_window", "listen", "skip", "sessionized")
WINDOWED_STAGES = ("split", "filtered", "final")
SPLIT_TIMES = ("t_min", "t_max", "t_finetune", "t_val", "t_test")


def _time(epoch: int | None) -> dict[str, Any]:
    iso = None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()
    return {"epoch": epoch, "iso": iso}


def _requests(rows: list[tuple]) -> dict[str, int]:
    """Requests per window after pretrain: users with events in it and history before it."""
    found = {window: int(users) for stage, window, _, users, *_ in rows if stage == "requests"}
    return {Window.NAMES[code]: found.get(code, 0) for code in Window.NAMES if code > 0}


def _stage_counts(rows: list[tuple]) -> dict[str, dict]:
    """Summary rows ``(stage, window, events, users, items, sessions)`` -> nested dict.

    Stages and windows without any row (nothing reached them) are reported as zeros.
    """
    found = {
        (stage, window): {
            key: int(value)
            for key, value in zip(("events", "users", "items", "sessions"), values, strict=True)
            if value is not None
        }
        for stage, window, *values in rows
    }
    empty = {"events": 0, "users": 0, "items": 0}
    stages = {stage: found.get((stage, None), dict(empty)) for stage in FLAT_STAGES}
    windows = {None: "all", **Window.NAMES}
    for stage in WINDOWED_STAGES:
        # A window nothing reached has zero of whatever the stage counts.
        counted = [key for key in found.get((stage, None), empty) if key != "sessions"]
        stages[stage] = {
            name: found.get((stage, code), dict.fromkeys(counted, 0))
            for code, name in windows.items()
        }
    return stages


def build_summary(
    rows: list[tuple],
    bounds: dict,
    kept: dict[str, int],
    cfg: ExtractConfig,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data_summary``: counts per stage and window, split times, drops and totals."""
    stages = _stage_counts(rows)
    listen, skip = stages["listen"]["events"], stages["skip"]["events"]
    filtered, final = stages["filtered"], stages["final"]
    names = SPLIT_TIMES if cfg.protocol == "temporal" else ("t_min", "t_max")
    split_times = {name: _time(bounds[name]) for name in names}
    if cfg.protocol == "temporal":
        split_times["gap_seconds"] = bounds["gap_seconds"]
    return {
        "protocol": cfg.protocol,
        "split_times": split_times,
        "stages": stages,
        "dropped": {
            "missing_ids_or_timestamp": stages["raw"]["events"] - stages["raw_complete"]["events"],
            "outside_rolling_window": stages["raw_complete"]["events"]
            - stages["raw_in_window"]["events"],
            "duplicates": stages["raw_in_window"]["events"] - listen - skip,
            "skips": skip,
            "consecutive_repeats": listen - stages["sessionized"]["events"],
            "leakage_gap": stages["sessionized"]["events"] - stages["split"]["all"]["events"],
            "frequency_thresholds": stages["split"]["all"]["events"] - filtered["all"]["events"],
            "test_out_of_vocabulary": filtered["test"]["events"] - final["test"]["events"],
        },
        "kept": {"items_min_item_events": kept["items"], "users_min_user_events": kept["users"]},
        "n_events": final["all"]["events"],
        "n_users": final["all"]["users"],
        "n_items": final["all"]["items"],
        "n_sessions": final["all"].get("sessions", 0),
        "n_test_users": final["test"]["users"],
        "requests": _requests(rows),
        "split_rule": split_rule(cfg) if cfg.protocol == "temporal" else "leave-last-out",
        "duckdb_settings": settings,
    }


def check_sanity(summary: dict[str, Any], cfg: ExtractConfig) -> None:
    """Raise InputError when the thresholds left nothing usable, naming the counts."""
    stages = summary["stages"]
    listen, skip = stages["listen"]["events"], stages["skip"]["events"]
    if listen == 0:
        raise InputError(
            f"no listen+ events: 0 of {listen + skip} clean events (of "
            f"{stages['raw']['events']} raw rows) have played_ratio_pct >= "
            f"listen_threshold_pct={cfg.listen_threshold_pct}"
        )
    split = stages["split"]["all"]
    if summary["n_events"] == 0:
        raise InputError(
            f"every event was filtered out by the thresholds: "
            f"{summary['kept']['items_min_item_events']} of {split['items']} items have "
            f">= min_item_events={cfg.min_item_events} pre-test listen+ events and "
            f"{summary['kept']['users_min_user_events']} of {split['users']} users have "
            f">= min_user_events={cfg.min_user_events} on those items"
        )
    check_windows(summary, cfg)


def split_rule(cfg: ExtractConfig) -> str:
    """How the temporal windows were cut, in words."""
    if cfg.split_by == "events":
        return (
            f"by share of listen+ events: test {cfg.test_share:g}, validation "
            f"{cfg.val_share:g}, finetune {cfg.finetune_share:g}, pretrain the rest"
        )
    return (
        f"by days: test {cfg.test_days:g}, validation {cfg.val_days:g}, finetune "
        f"{cfg.finetune_days:g}, pretrain the rest"
    )


def window_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per window: its bounds, listen+ events, users, tracks and requests."""
    times = summary.get("split_times", {})
    final = summary.get("stages", {}).get("final", {})
    requests = summary.get("requests", {})
    starts = ("t_min", "t_finetune", "t_val", "t_test")
    ends = ("t_finetune", "t_val", "t_test", "t_max")
    rows = []
    for name, start, end in zip(Window.NAMES.values(), starts, ends, strict=True):
        counts = final.get(name, {})
        rows.append(
            {
                "window": name,
                "start": times.get(start, {}).get("iso"),
                "end": times.get(end, {}).get("iso"),
                "events": counts.get("events", 0),
                "users": counts.get("users", 0),
                "tracks": counts.get("items", 0),
                "requests": requests.get(name),
            }
        )
    return rows


WINDOW_PURPOSE = {
    "finetune": "train the ranker and distil it",
    "val": "stop the training and tune the baselines",
    "test": "judge the models",
}


def check_windows(summary: dict[str, Any], cfg: ExtractConfig) -> None:
    """Raise InputError when a window after pretrain holds too few requests to serve its purpose.

    A request is a user with events in the window and history before it. The message names the
    window, its counts and bounds, the log's time span and the setting that fixes it.
    """
    if cfg.min_window_users == 0:
        return
    rows = {row["window"]: row for row in window_table(summary)}
    for name, purpose in WINDOW_PURPOSE.items():
        row = rows[name]
        if (row["requests"] or 0) >= cfg.min_window_users and row["events"] > 0:
            continue
        times = summary.get("split_times", {})
        span = f"{times.get('t_min', {}).get('iso')} .. {times.get('t_max', {}).get('iso')}"
        counts = ", ".join(f"{r['window']} {r['events']}" for r in rows.values())
        raise InputError(
            f"the {name} window [{row['start']}, {row['end']}) holds {row['events']} listen+ "
            f"events of {row['users']} users, {row['requests']} of them with history before it "
            f"(at least extract.min_window_users={cfg.min_window_users} are needed to {purpose}). "
            f"The log spans {span}; listen+ events per window: {counts}. Fix: {_window_fix(name, cfg)}"
        )


def _window_fix(name: str, cfg: ExtractConfig) -> str:
    if cfg.protocol == "leave_last_out":
        return (
            "raise extract.loo_finetune_events, lower extract.min_user_events, or use a log "
            "with more users"
        )
    if cfg.split_by == "days":
        return (
            f'cut the windows by share of events (extract.split_by = "events", the default), '
            f"which follows gaps and bursts, or lengthen extract.{name}_days (now "
            f"{getattr(cfg, name + '_days')})"
        )
    return (
        f"raise extract.{name}_share (now {getattr(cfg, name + '_share')}), lower "
        f"extract.min_window_users, or use a log with more users"
    )
