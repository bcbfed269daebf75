-- Stage 16: the item frequency table Q that negatives are drawn from.
-- Grain: one row per vocabulary item, sorted by item_idx.
-- Columns: item_idx INT, item_id, count BIGINT (listen+ events in the pretrain window, the
--          training targets), q DOUBLE, log_q DOUBLE.
-- q = (count + smoothing) / (sum(count) + smoothing * N): additive smoothing gives every one of
-- the N items q > 0, so log_q is finite, and q sums to 1.
copy (
    with

    events as (
        select item_idx
        from read_parquet($events_path)
        where "window" = $window_pretrain
    ),

    items as (
        select item_idx, item_id
        from read_parquet($items_path)
    ),

    counted as (
        select item_idx, count(*) as count
        from events
        group by item_idx
    ),

    catalog as (
        select items.item_idx, items.item_id, coalesce(counted.count, 0) as count
        from items
        left join counted on items.item_idx = counted.item_idx
    ),

    totals as (
        select sum(count) as total_count, count(*) as n_items from catalog
    ),

    smoothed as (
        select
            catalog.item_idx,
            catalog.item_id,
            catalog.count,
            (catalog.count + $smoothing) / (totals.total_count + $smoothing * totals.n_items) as q
        from catalog
        cross join totals
    ),

    final as (
        select
            cast(item_idx as integer) as item_idx,
            item_id,
            cast(count as bigint) as count,
            cast(q as double) as q,
            ln(q) as log_q
        from smoothed
        order by item_idx
    )

    select * from final
) to $out_path (format parquet)
