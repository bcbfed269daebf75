-- Counts of stage 07 for the summary (stage 11), taken before filtered_events is dropped.
-- Grain: one row per split window and one (window NULL) for all windows; events only.
-- Columns: as in 11_summary.sql.
create or replace temp table filtered_events_counts as

with

final as (
    select
        'filtered' as stage,
        "window",
        count(*) as events,
        cast(null as bigint) as users,
        cast(null as bigint) as items,
        cast(null as bigint) as sessions
    from filtered_events
    group by grouping sets (("window"), ())
)

select * from final
