-- Counts of stage 01 for the summary (stage 11), taken before clean_events is dropped.
-- Grain: one row per summary stage: listen (listen+ events, users, items) and skip (events).
-- Columns: as in 11_summary.sql.
create or replace temp table clean_events_counts as

with

counts as (
    select
        count(*) filter (where is_listen) as listens,
        count(*) filter (where not is_listen) as skips,
        count(distinct user_id) filter (where is_listen) as users,
        count(distinct item_id) filter (where is_listen) as items
    from clean_events
),

listen as (
    select
        'listen' as stage,
        cast(null as tinyint) as "window",
        listens as events,
        users,
        items,
        cast(null as bigint) as sessions
    from counts
),

skip as (
    select
        'skip' as stage,
        cast(null as tinyint) as "window",
        skips as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from counts
),

final as (
    select * from listen
    union all select * from skip
)

select * from final
