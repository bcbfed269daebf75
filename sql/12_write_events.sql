-- Stage 12: write the events table.
-- Grain: one row per final event, sorted by (user_idx, ts, item_id) - the tie rule.
-- Columns: user_idx INT, item_idx INT, ts BIGINT, window TINYINT, session_id INT (per user,
--          numbered before filtering: a user's ids may skip the sessions filtering removed).
copy (
    with

    events as (
        select * from final_events
    ),

    final as (
        select user_idx, item_idx, ts, "window", session_id
        from events
        order by user_idx, ts, item_id
    )

    select * from final
) to $events_path (format parquet)
