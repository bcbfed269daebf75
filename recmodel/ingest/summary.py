"""The ``data_summary`` of an extraction, and the checks that stop a run on an unusable result.

The summary SQL (``sql/11_summary.sql`` and ``sql/counts/``) yields rows ``(stage, window,
events, users, items, sessions)``; :func:`build_summary` nests them by stage and window and adds
the split times, the drop counts and the totals. :func:`check_sanity` raises an
:class:`~recmodel.ingest.checks.InputError` that names the counts and the setting behind them
when nothing usable is left.
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
    if summary["n_test_users"] < cfg.min_test_users:
        test = stages["split"]["test"]
        raise InputError(
            f"only {summary['n_test_users']} test users remain (listen+ events in the test "
            f"window and history before it), fewer than min_test_users={cfg.min_test_users}; "
            f"before filtering the test window had {test['events']} events of "
            f"{test['users']} users ({cfg.protocol} split)"
        )
