-- Stage 08: the item vocabulary with its metadata codes.
-- Grain: one row per item with at least one pre-test event after filtering.
-- Columns: item_idx INT (1..N by pre-test count descending, ties by item_id; 0 is padding),
--          item_id, count BIGINT (pre-test listen+ events), artist_idx, album_idx, genre_idx INT
--          (dense codes 1.. by the pre-test events of their items, ties by id; 0 = unknown),
--          tempo_bucket INT (1..tempo_buckets by item quantile of tempo, equal tempos share a
--          bucket; 0 = unknown), track_length_seconds DOUBLE (median over the item's pre-test
--          events, NULL when unknown), embedding FLOAT[] (NULL when unknown).
create or replace temp table item_vocab as

with

pre_test as (
    select item_id, track_length_seconds
    from filtered_events
    where "window" < $window_test
),

metadata as (
    -- The item table may list an item twice; keep one row deterministically.
    select item_id, artist_id, album_id, genre, tempo, embedding
    from raw_items
    where item_id is not null
    qualify row_number() over (
        partition by item_id
        order by artist_id nulls last, album_id nulls last, genre nulls last, tempo nulls last
    ) = 1
),

item_counts as (
    select item_id, count(*) as count
    from pre_test
    group by item_id
),

length_counts as (
    -- median() keeps every value of a group in memory and cannot spill; a track has few
    -- distinct lengths, so the median is taken over (item, length) counts instead.
    select item_id, track_length_seconds as length, count(*) as n
    from pre_test
    where track_length_seconds is not null
    group by item_id, track_length_seconds
),

length_ranks as (
    select
        item_id,
        length,
        sum(n) over (partition by item_id order by length rows unbounded preceding) as up_to,
        sum(n) over (partition by item_id) as total
    from length_counts
),

item_lengths as (
    -- The mean of the values at the 1-based sorted positions floor((n+1)/2) and floor(n/2)+1:
    -- the middle value for odd n, the mean of the two middle values for even n.
    select
        item_id,
        (min(length) filter (where up_to >= (total + 1) // 2)
         + min(length) filter (where up_to >= total // 2 + 1)) / 2 as track_length_seconds
    from length_ranks
    group by item_id
),

item_stats as (
    select c.item_id, c.count, l.track_length_seconds
    from item_counts as c
    left join item_lengths as l on c.item_id = l.item_id
),

indexed as (
    select
        *,
        row_number() over (order by count desc, item_id) as item_idx
    from item_stats
),

described as (
    select
        indexed.*,
        metadata.artist_id,
        metadata.album_id,
        metadata.genre,
        cast(metadata.tempo as double) as tempo,
        cast(metadata.embedding as float[]) as embedding
    from indexed
    left join metadata on indexed.item_id = metadata.item_id
),

artist_codes as (
    select artist_id, row_number() over (order by sum(count) desc, artist_id) as artist_idx
    from described
    where artist_id is not null
    group by artist_id
),

album_codes as (
    select album_id, row_number() over (order by sum(count) desc, album_id) as album_idx
    from described
    where album_id is not null
    group by album_id
),

genre_codes as (
    select genre, row_number() over (order by sum(count) desc, genre) as genre_idx
    from described
    where genre is not null
    group by genre
),

tempo_ranks as (
    -- The default frame (range up to the current row) counts ties together, so equal tempos
    -- get one rank; integer arithmetic keeps bucket edges exact.
    select
        item_idx,
        count(*) over (order by tempo) as at_or_below,
        count(*) over () as with_tempo
    from described
    where tempo is not null
),

tempo_codes as (
    select
        item_idx,
        ($tempo_buckets * at_or_below + with_tempo - 1) // with_tempo as tempo_bucket
    from tempo_ranks
),

final as (
    select
        cast(d.item_idx as integer) as item_idx,
        d.item_id,
        cast(d.count as bigint) as count,
        cast(coalesce(a.artist_idx, 0) as integer) as artist_idx,
        cast(coalesce(al.album_idx, 0) as integer) as album_idx,
        cast(coalesce(g.genre_idx, 0) as integer) as genre_idx,
        cast(coalesce(t.tempo_bucket, 0) as integer) as tempo_bucket,
        d.track_length_seconds,
        d.embedding
    from described as d
    left join artist_codes as a on d.artist_id = a.artist_id
    left join album_codes as al on d.album_id = al.album_id
    left join genre_codes as g on d.genre = g.genre
    left join tempo_codes as t on d.item_idx = t.item_idx
)

select * from final
