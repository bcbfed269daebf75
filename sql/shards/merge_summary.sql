-- Sharded extraction, last merge: the summary rows of every shard (stage 11) as one.
-- Grain and columns: as in 11_summary.sql.
-- Events, users, sessions and requests add up over user shards: each user lives in one shard,
-- and a session belongs to its user. Distinct tracks do not add up (shards share tracks), so
-- they are counted again over the shards' tables: the listen+ and sessionized tracks over the
-- sessions (repeat removal keeps the first event of every run, so no track is lost), the split
-- and final tracks per window over the split events and the written events.
with

summed as (
    select
        stage,
        "window",
        cast(sum(events) as bigint) as events,
        cast(sum(users) as bigint) as users,
        cast(sum(items) as bigint) as items,
        cast(sum(sessions) as bigint) as sessions
    from summary_rows
    group by stage, "window"
),

listen_items as (
    select count(distinct item_id) as items from sessions
),

item_counts as (
    select 'listen' as stage, cast(null as tinyint) as "window", items from listen_items
    union all
    select 'sessionized' as stage, cast(null as tinyint) as "window", items from listen_items
    union all
    select 'split' as stage, "window", count(distinct item_id) as items
    from split_events
    group by grouping sets (("window"), ())
    union all
    select 'final' as stage, "window", count(distinct item_idx) as items
    from events
    group by grouping sets (("window"), ())
),

final as (
    select
        s.stage,
        s."window",
        s.events,
        s.users,
        case when s.items is null then null else coalesce(i.items, 0) end as items,
        s.sessions
    from summed as s
    left join item_counts as i
        on s.stage = i.stage and s."window" is not distinct from i."window"
)

select * from final
