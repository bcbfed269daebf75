-- Stage 13: write the item table.
-- Grain: one row per vocabulary item, sorted by item_idx (row i describes item_idx i + 1).
-- Columns: item_idx, item_id, count, artist_idx, album_idx, genre_idx, tempo_bucket,
--          track_length_seconds, embedding (see stage 08).
copy (
    with

    items as (
        select * from item_vocab
    ),

    final as (
        select
            item_idx,
            item_id,
            count,
            artist_idx,
            album_idx,
            genre_idx,
            tempo_bucket,
            track_length_seconds,
            embedding
        from items
        order by item_idx
    )

    select * from final
) to $items_path (format parquet)
