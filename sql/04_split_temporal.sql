-- Stage 04 (temporal protocol): label each event with its split window.
-- Grain: one row per sessionized event outside the leakage gaps.
-- Columns: user_id, item_id, ts, track_length_seconds, session_id, window TINYINT.
-- Leakage guard: events in the first gap_seconds after each window start (t_finetune, t_val,
-- t_test) are dropped, so a session that straddles a boundary cannot hand the first events of a
-- window to the window before it. The gap is half-open: ts = start + gap_seconds is kept.
create or replace temp table split_events as

with

events as (
    select * from sessions
),

bounds as (
    select * from split_bounds
),

labelled as (
    select
        events.*,
        case
            when ts < t_finetune then $window_pretrain
            when ts < t_val then $window_finetune
            when ts < t_test then $window_val
            else $window_test
        end as split_window,
        (ts >= t_finetune and ts < t_finetune + gap_seconds)
            or (ts >= t_val and ts < t_val + gap_seconds)
            or (ts >= t_test and ts < t_test + gap_seconds) as in_gap
    from events
    cross join bounds
),

final as (
    select
        user_id,
        item_id,
        ts,
        track_length_seconds,
        session_id,
        cast(split_window as tinyint) as "window"
    from labelled
    where not in_gap
)

select * from final
