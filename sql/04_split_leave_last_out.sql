-- Stage 04 (leave-last-out protocol): label each event with its split window.
-- Grain: one row per sessionized event.
-- Columns: user_id, item_id, ts, track_length_seconds, session_id, window TINYINT.
-- Per user, in the (ts, item_id) order: the last event is test, the second last validation, the
-- loo_finetune_events before it finetune, everything earlier pretrain. No gap is applied.
create or replace temp table split_events as

with

events as (
    select * from sessions
),

ranked as (
    select
        *,
        row_number() over (partition by user_id order by ts desc, item_id desc) as rank_from_end
    from events
),

final as (
    select
        user_id,
        item_id,
        ts,
        track_length_seconds,
        session_id,
        cast(
            case
                when rank_from_end = 1 then $window_test
                when rank_from_end = 2 then $window_val
                when rank_from_end <= 2 + $loo_finetune_events then $window_finetune
                else $window_pretrain
            end as tinyint
        ) as "window"
    from ranked
)

select * from final
