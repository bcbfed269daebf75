-- Ranker features of every retrieval candidate (recmodel/ranker_features.py documents each).
--
-- Grain: one row per candidate, i.e. per (request = user at its request time, item), in
--        row_id order.
-- Columns: row_id, retriever_score, retriever_rank, item_count, item_count_recent,
--          user_history_len, user_item_count, secs_since_item, user_artist_count,
--          user_artist_share, secs_since_artist, user_genre_count, user_genre_share,
--          tempo_dist, track_length, user_item_decay_1d, user_item_decay_7d,
--          user_item_decay_30d, user_artist_decay_7d, user_item_decay_rank. NULL means
--          "unknown" (the model treats it as missing).
-- Inputs (registered views): ranker_candidates (row_id, user_idx, item_idx, request_ts,
--          retriever_score, retriever_rank), ranker_history (user_idx, item_idx, ts: events
--          strictly before each user's request), ranker_items (item_idx, artist_idx, genre_idx,
--          tempo_bucket, track_length, item_count, item_count_recent: counts over every
--          user, which a part of the users cannot count itself). Code 0 means unknown metadata.
-- Params: $recent_listens (int): how many of a user's last listens form the recent profile.
-- Decayed plays: sum over the user's plays of exp(-age / tau), age from the play to the
-- request, tau of 1, 7 and 30 days: re-listening from the whole history in wall-clock time.

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

requests as (
    select distinct user_idx, request_ts from candidates
),

user_item as (
    select
        history.user_idx,
        history.item_idx,
        count(*) as n,
        max(history.ts) as last_ts,
        sum(exp(-(requests.request_ts - history.ts) / 86400.0)) as decay_1d,
        sum(exp(-(requests.request_ts - history.ts) / (7 * 86400.0))) as decay_7d,
        sum(exp(-(requests.request_ts - history.ts) / (30 * 86400.0))) as decay_30d
    from history
    join requests using (user_idx)
    semi join candidates using (user_idx, item_idx)
    group by history.user_idx, history.item_idx
),

user_item_ranked as (
    -- among the request's candidates the user played: 1 = the most played lately (7 days)
    select
        *,
        rank() over (partition by user_idx order by decay_7d desc) as decay_rank
    from user_item
),

user_artist as (
    select
        history_meta.user_idx,
        history_meta.artist_idx,
        count(*) as n,
        max(history_meta.ts) as last_ts,
        sum(exp(-(requests.request_ts - history_meta.ts) / (7 * 86400.0))) as decay_7d
    from history_meta
    join requests using (user_idx)
    where history_meta.artist_idx > 0
    group by history_meta.user_idx, history_meta.artist_idx
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
        i.item_count_recent::double as item_count_recent,
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
        i.track_length::double as track_length,
        coalesce(ui.decay_1d, 0)::double as user_item_decay_1d,
        coalesce(ui.decay_7d, 0)::double as user_item_decay_7d,
        coalesce(ui.decay_30d, 0)::double as user_item_decay_30d,
        case when i.artist_idx > 0 then coalesce(ua.decay_7d, 0) end::double
            as user_artist_decay_7d,
        ui.decay_rank::double as user_item_decay_rank
    from candidates as c
    join items as i using (item_idx)
    left join user_profile as up using (user_idx)
    left join user_item_ranked as ui using (user_idx, item_idx)
    left join user_artist as ua on ua.user_idx = c.user_idx and ua.artist_idx = i.artist_idx
    left join user_genre as ug on ug.user_idx = c.user_idx and ug.genre_idx = i.genre_idx
)

select * from final
order by row_id
