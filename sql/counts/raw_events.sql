-- Counts of the raw rows for the summary (stage 11), taken before stage 01.
-- Grain: one row per summary stage: raw (every row), raw_complete (user, item and timestamp
-- present), raw_in_window (and inside the rolling window up to the cut, as stage 01 keeps them).
-- Columns: as in 11_summary.sql.
create or replace temp table raw_events_counts as

with

cut as (
    select coalesce(cast($cut_epoch as bigint), max(cast("timestamp" as bigint))) as t_cut
    from raw_events
),

raw_counts as materialized (
    select
        count(*) as events,
        count(*) filter (
            where user_id is not null and item_id is not null and "timestamp" is not null
        ) as complete_events,
        count(*) filter (
            where user_id is not null and item_id is not null and "timestamp" is not null
              and cast("timestamp" as bigint) <= cut.t_cut
              and ($history_seconds <= 0
                   or cast("timestamp" as bigint) > cut.t_cut - $history_seconds)
        ) as in_window_events
    from raw_events, cut
),

by_stage as (
    unpivot raw_counts
    on events as raw, complete_events as raw_complete, in_window_events as raw_in_window
    into name stage value events
),

final as (
    select
        stage,
        cast(null as tinyint) as "window",
        events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from by_stage
)

select * from final
