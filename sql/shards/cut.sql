-- Sharded extraction, before round 1: the end of the whole log.
-- Grain: one row. Columns: t_cut BIGINT (NULL when the log has no timestamp).
-- Stage 01 takes the log's end as the cut when none is set; each shard sees only its users'
-- events, so the end is taken once over every event and bound to all shards as $cut_epoch.
select max(cast("timestamp" as bigint)) as t_cut
from raw_events
