-- Stage 11: counts per stage of extraction and per split window.
-- Grain: one row per (stage, window); window is NULL on the row that covers all windows, and
-- stages before the split have only that row.
-- Columns: stage VARCHAR, window TINYINT, events BIGINT, users BIGINT, items BIGINT,
--          sessions BIGINT (NULL where not counted: sessions only on the final stage as a whole).
-- Users and items are not counted on the raw rows (not yet deduplicated) nor on the skips.
-- The requests rows count, per window after pretrain, the users with events in the window and
-- history before it (in the users column): whom the window can judge or train on.
-- The raw, listen, skip, sessionized, split and filtered rows were counted by sql/counts/ right
-- after their stage (the raw rows before stage 01), so that each stage's table could be dropped
-- after its last reader and the raw log is read once.
with

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

user_windows as (
    select distinct user_idx, "window" from final_events
),

user_first as (
    select user_idx, min("window") as first_window from user_windows group by user_idx
),

requests as (
    select
        'requests' as stage,
        user_windows."window",
        cast(null as bigint) as events,
        count(*) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from user_windows
    inner join user_first on user_first.user_idx = user_windows.user_idx
    where user_windows."window" > user_first.first_window
    group by user_windows."window"
),

final as (
    select * from raw_events_counts
    union all select * from clean_events_counts
    union all select * from sessions_counts
    union all select * from split_events_counts
    union all select * from filtered_events_counts
    union all select * from final_windows
    union all select * from final_all
    union all select * from requests
)

select * from final
