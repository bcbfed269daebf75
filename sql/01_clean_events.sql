-- Stage 01: clean events.
-- Grain: one row per distinct raw event (exact duplicates over every input column collapse into
-- one) whose user, item and timestamp are all present.
-- Columns: user_id, item_id, ts BIGINT (unix seconds), track_length_seconds DOUBLE,
--          is_listen BOOLEAN (played ratio at or above the listen+ threshold; an event without a
--          played ratio counts as a listen, so logs without the column keep every event).
-- Rolling windows: events after $cut_epoch (NULL = the end of the log) and, when
-- $history_seconds > 0, events older than that before the cut are left out.
create or replace temp table clean_events as

with

raw as (
    select * from raw_events
),

cut as (
    select coalesce(cast($cut_epoch as bigint), max(cast("timestamp" as bigint))) as t_cut
    from raw_events
),

typed as (
    select
        user_id,
        item_id,
        cast("timestamp" as bigint) as ts,
        cast(played_ratio_pct as double) as played_ratio_pct,
        cast(track_length_seconds as double) as track_length_seconds,
        cast(is_organic as tinyint) as is_organic
    from raw, cut
    where user_id is not null
      and item_id is not null
      and "timestamp" is not null
      and cast("timestamp" as bigint) <= cut.t_cut
      and ($history_seconds <= 0 or cast("timestamp" as bigint) > cut.t_cut - $history_seconds)
),

deduplicated as (
    select distinct * from typed
),

final as (
    select
        user_id,
        item_id,
        ts,
        track_length_seconds,
        coalesce(played_ratio_pct >= $listen_threshold_pct, true) as is_listen
    from deduplicated
)

select * from final
