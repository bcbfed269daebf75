-- Ranker features of every retrieval candidate (recmodel/ranker_features.py documents each).
--
-- Grain: one row per candidate, i.e. per (request = user at its request time, item), in
--        row_id order.
-- Columns: row_id, retriever_score, retriever_rank, item_count, item_count_recent,
--          user_history_len, user_item_count, secs_since_item, user_artist_count,
--          user_artist_share, secs_since_artist, user_genre_count, user_genre_share,
--          tempo_dist, track_length. NULL means "unknown" (the model treats it as missing).
-- Inputs (registered views): ranker_candidates (row_id, user_idx, item_idx, request_ts,
--          retriever_score, retriever_rank), ranker_history (user_idx, item_idx, ts: events
--          strictly before each user's request), ranker_items (item_idx, artist_idx, genre_idx,
--          tempo_bucket, track_length, item_count). Code 0 means unknown metadata.
-- Params: $recent_start (int64 s): start of the "recent popularity" period;
--         $recent_listens (int): how many of a user's last listens form the recent profile.

with

candidates as (select * from ranker_candidates),
history as (select * from ranker_history),
items as (select * from ranker_items),

history_meta as (
    select
        history.user_idx,
        history.item_idx,
        history.ts,
        items.artist_idx,
        items.genre_idx,
        items.tempo_bucket,
        row_number() over (partition by history.user_idx order by history.ts desc) as from_end
    from history
    join items using (item_idx)
),

user_profile as (
    select
        user_idx,
        count(*) as history_len,
        avg(tempo_bucket) filter (
            where from_end <= $recent_listens and tempo_bucket > 0
        ) as recent_tempo
    from history_meta
    group by user_idx
),

item_recent as (
    select item_idx, count(*) as n
    from history
    where ts >= $recent_start
    group by item_idx
),

user_item as (
    select user_idx, item_idx, count(*) as n, max(ts) as last_ts
    from history
    semi join candidates using (user_idx, item_idx)
    group by user_idx, item_idx
),

user_artist as (
    select user_idx, artist_idx, count(*) as n, max(ts) as last_ts
    from history_meta
    where artist_idx > 0
    group by user_idx, artist_idx
),

user_genre as (
    select user_idx, genre_idx, count(*) as n
    from history_meta
    where genre_idx > 0
    group by user_idx, genre_idx
),

final as (
    select
        c.row_id,
        c.retriever_score::double as retriever_score,
        c.retriever_rank::double as retriever_rank,
        i.item_count::double as item_count,
        coalesce(ir.n, 0)::double as item_count_recent,
        coalesce(up.history_len, 0)::double as user_history_len,
        coalesce(ui.n, 0)::double as user_item_count,
        (c.request_ts - ui.last_ts)::double as secs_since_item,
        case when i.artist_idx > 0 then coalesce(ua.n, 0) end::double as user_artist_count,
        case
            when i.artist_idx > 0 then coalesce(ua.n, 0) / nullif(up.history_len, 0)
        end::double as user_artist_share,
        (c.request_ts - ua.last_ts)::double as secs_since_artist,
        case when i.genre_idx > 0 then coalesce(ug.n, 0) end::double as user_genre_count,
        case
            when i.genre_idx > 0 then coalesce(ug.n, 0) / nullif(up.history_len, 0)
        end::double as user_genre_share,
        case
            when i.tempo_bucket > 0 then abs(i.tempo_bucket - up.recent_tempo)
        end::double as tempo_dist,
        i.track_length::double as track_length
    from candidates as c
    join items as i using (item_idx)
    left join user_profile as up using (user_idx)
    left join item_recent as ir using (item_idx)
    left join user_item as ui using (user_idx, item_idx)
    left join user_artist as ua on ua.user_idx = c.user_idx and ua.artist_idx = i.artist_idx
    left join user_genre as ug on ug.user_idx = c.user_idx and ug.genre_idx = i.genre_idx
)

select * from final
order by row_id
