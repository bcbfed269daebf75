-- Stage 11: counts per stage of extraction and per split window.
-- Grain: one row per (stage, window); window is NULL on the row that covers all windows, and
-- stages before the split have only that row.
-- Columns: stage VARCHAR, window TINYINT, events BIGINT, users BIGINT, items BIGINT,
--          sessions BIGINT (NULL where not counted: sessions only on the final stage as a whole).
-- Users and items are not counted on the raw rows (not yet deduplicated) nor on the skips.
-- Repeat removal keeps the first event of every run, so it never removes a user or an item:
-- the sessionized stage reports the listen+ users and items without counting them again.
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

clean_counts as materialized (
    select
        count(*) filter (where is_listen) as listens,
        count(*) filter (where not is_listen) as skips,
        count(distinct user_id) filter (where is_listen) as users,
        count(distinct item_id) filter (where is_listen) as items
    from clean_events
),

raw as (
    select
        'raw' as stage,
        cast(null as tinyint) as "window",
        events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from raw_counts
),

raw_complete as (
    select
        'raw_complete' as stage,
        cast(null as tinyint) as "window",
        complete_events as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from raw_counts
),

raw_in_window as (
    select
        'raw_in_window' as stage,
        cast(null as tinyint) as "window",
        in_window_events as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from raw_counts
),

listen as (
    select
        'listen' as stage,
        cast(null as tinyint) as "window",
        listens as events,
        users,
        items,
        cast(null as bigint) as sessions
    from clean_counts
),

skip as (
    select
        'skip' as stage,
        cast(null as tinyint) as "window",
        skips as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from clean_counts
),

sessionized as (
    select
        'sessionized' as stage,
        cast(null as tinyint) as "window",
        session_counts.events,
        clean_counts.users,
        clean_counts.items,
        cast(null as bigint) as sessions
    from (select count(*) as events from sessions) as session_counts
    cross join clean_counts
),

split as (
    select
        'split' as stage,
        "window",
        count(*) as events,
        count(distinct user_id) as users,
        count(distinct item_id) as items,
        cast(null as bigint) as sessions
    from split_events
    group by grouping sets (("window"), ())
),

filtered as (
    -- Events only: users and items after filtering are counted once more on the final stage.
    select
        'filtered' as stage,
        "window",
        count(*) as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from filtered_events
    group by grouping sets (("window"), ())
),

final_windows as (
    select
        'final' as stage,
        "window",
        count(*) as events,
        count(distinct user_idx) as users,
        count(distinct item_idx) as items,
        cast(null as bigint) as sessions
    from final_events
    group by "window"
),

final_all as (
    select
        'final' as stage,
        cast(null as tinyint) as "window",
        count(*) as events,
        count(distinct user_idx) as users,
        count(distinct item_idx) as items,
        -- One BIGINT key per (user, session): cheaper to count than a struct of two columns.
        count(distinct cast(user_idx as bigint) * 4294967296 + session_id) as sessions
    from final_events
),

final as (
    select * from raw
    union all select * from raw_complete
    union all select * from raw_in_window
    union all select * from listen
    union all select * from skip
    union all select * from sessionized
    union all select * from split
    union all select * from filtered
    union all select * from final_windows
    union all select * from final_all
)

select * from final
