-- Counts of stage 02 for the summary (stage 11), taken before sessions is dropped.
-- Grain: one row (stage sessionized). Repeat removal keeps the first event of every run, so it
-- never removes a user or an item: the row reports the listen+ users and items.
-- Columns: as in 11_summary.sql.
create or replace temp table sessions_counts as

with

listen as (
    select users, items
    from clean_events_counts
    where stage = 'listen'
),

final as (
    select
        'sessionized' as stage,
        cast(null as tinyint) as "window",
        (select count(*) from sessions) as events,
        users,
        items,
        cast(null as bigint) as sessions
    from listen
)

select * from final
