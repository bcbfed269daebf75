-- Sharded extraction, last merge: the test targets from every shard's (stage 15).
-- Grain and columns: as in 15_write_test_targets.sql, sorted by (user_idx, item_idx): one row
-- per pair, so the order is total.
copy (
    with

    targets as (
        select user_id, item_id, user_idx, item_idx, heard_before
        from read_parquet($shard_test_targets)
    ),

    final as (
        select * from targets
        order by user_idx, item_idx
    )

    select * from final
) to $test_targets_path (format parquet)
