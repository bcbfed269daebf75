-- Stage 03: split boundaries of the global temporal protocol.
-- Grain: one row.
-- Columns: t_min, t_max, t_finetune, t_val, t_test (BIGINT unix seconds), gap_seconds BIGINT.
-- Windows are [t_min, t_finetune) pretrain, [t_finetune, t_val) finetune, [t_val, t_test) val,
-- [t_test, t_max] test, where t_test = t_max - test_days, t_val = t_test - val_days and
-- t_finetune = t_val - finetune_days. Leave-last-out reports only t_min and t_max.
create or replace temp table split_bounds as

with

events as (
    select ts from sessions
),

extent as (
    select min(ts) as t_min, max(ts) as t_max from events
),

lengths as (
    select
        cast(round($test_days * 86400) as bigint) as test_seconds,
        cast(round($val_days * 86400) as bigint) as val_seconds,
        cast(round($finetune_days * 86400) as bigint) as finetune_seconds,
        cast(round($gap_minutes * 60) as bigint) as gap_seconds
),

final as (
    select
        t_min,
        t_max,
        t_max - test_seconds - val_seconds - finetune_seconds as t_finetune,
        t_max - test_seconds - val_seconds as t_val,
        t_max - test_seconds as t_test,
        gap_seconds
    from extent
    cross join lengths
)

select * from final
