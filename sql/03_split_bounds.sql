-- Stage 03: split boundaries of the global temporal protocol.
-- Grain: one row.
-- Columns: t_min, t_max, t_finetune, t_val, t_test (BIGINT unix seconds), gap_seconds BIGINT.
-- Windows are [t_min, t_finetune) pretrain, [t_finetune, t_val) finetune, [t_val, t_test) val,
-- [t_test, t_max] test. With split_by = 'events' each window starts at the latest minute from
-- which on the listen+ events reach its cumulative share (test_share, then + val_share, then
-- + finetune_share), so the windows follow the log's own activity: gaps of months, bursts of
-- days, sparse or dense. With split_by = 'days', t_test = t_max - test_days, t_val = t_test -
-- val_days and t_finetune = t_val - finetune_days. Leave-last-out reports only t_min and t_max.
-- The shares come from per-minute counts (one row per active minute), not a holistic quantile
-- over every event, so the stage can spill.
create or replace temp table split_bounds as

with

events as (
    select ts from sessions
),

extent as (
    select min(ts) as t_min, max(ts) as t_max, count(*) as n_events from events
),

minutes as (
    select ts // 60 as minute, count(*) as n_events from events group by ts // 60
),

from_minute as (
    -- events at or after each active minute
    select
        minute,
        sum(n_events) over (order by minute desc rows between unbounded preceding and current row)
            as n_after
    from minutes
),

by_share as (
    select
        60 * max(minute) filter (where n_after >= $test_share * extent.n_events) as t_test,
        60 * max(minute) filter (
            where n_after >= ($test_share + $val_share) * extent.n_events
        ) as t_val,
        60 * max(minute) filter (
            where n_after >= ($test_share + $val_share + $finetune_share) * extent.n_events
        ) as t_finetune
    from from_minute
    cross join extent
),

lengths as (
    select
        cast(round($test_days * 86400) as bigint) as test_seconds,
        cast(round($val_days * 86400) as bigint) as val_seconds,
        cast(round($finetune_days * 86400) as bigint) as finetune_seconds
),

by_days as (
    select
        t_max - test_seconds - val_seconds - finetune_seconds as t_finetune,
        t_max - test_seconds - val_seconds as t_val,
        t_max - test_seconds as t_test
    from extent
    cross join lengths
),

final as (
    select
        extent.t_min,
        extent.t_max,
        case when $split_by = 'events' then by_share.t_finetune else by_days.t_finetune end
            as t_finetune,
        case when $split_by = 'events' then by_share.t_val else by_days.t_val end as t_val,
        case when $split_by = 'events' then by_share.t_test else by_days.t_test end as t_test,
        cast(round($gap_minutes * 60) as bigint) as gap_seconds
    from extent
    cross join by_share
    cross join by_days
)

select * from final
