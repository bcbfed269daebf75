-- Sharded extraction, last merge: the events table from every shard's events (stage 12).
-- Grain and columns: as in 12_write_events.sql, in its order (user_idx, ts, item_id). Each user
-- lives in one shard, whose file holds the user's rows in that order: sorting by user_idx and
-- the row's place in its file restores it without the item ids.
copy (
    with

    events as (
        select user_idx, item_idx, ts, "window", session_id, file_row_number
        from read_parquet($shard_events, file_row_number = true)
    ),

    final as (
        select user_idx, item_idx, ts, "window", session_id
        from events
        order by user_idx, file_row_number
    )

    select * from final
) to $events_path (format parquet)
