-- Counts of stage 04 for the summary (stage 11), taken before split_events is dropped.
-- Grain: one row per split window and one (window NULL) for all windows.
-- Columns: as in 11_summary.sql.
create or replace temp table split_events_counts as

with

final as (
    select
        'split' as stage,
        "window",
        count(*) as events,
        count(distinct user_id) as users,
        count(distinct item_id) as items,
        cast(null as bigint) as sessions
    from split_events
    group by grouping sets (("window"), ())
)

select * from final
