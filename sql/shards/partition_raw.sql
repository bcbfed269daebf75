-- Sharded extraction, before round 1: the raw events written once, a folder per user shard.
-- Grain: one row per raw event, in the file of its user's shard (shard=K/ under $raw_dir; a
-- shard without users has no folder). Columns: those of raw_events; the shard is the folder.
-- Every shard task then reads its own folder instead of the whole log.
copy (
    select *, hash(user_id) % $n_shards as shard
    from raw_events
) to $raw_dir (format parquet, partition_by (shard), overwrite_or_ignore true)
