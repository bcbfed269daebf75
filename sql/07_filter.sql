-- Stage 07: events of kept users; pre-test events only on kept items.
-- Grain: one row per labelled event that passes the frequency thresholds.
-- Columns: user_id, item_id, ts, track_length_seconds, session_id, window.
-- Test-window events keep every item here; those whose item is not in the vocabulary are dropped
-- when the final events are built (stage 10), so the summary can count them.
create or replace temp table filtered_events as

with

events as (
    select * from split_events
),

of_kept_users as (
    select * from events semi join kept_users using (user_id)
),

item_flags as (
    select item_id, true as is_kept from kept_items
),

final as (
    select
        e.user_id,
        e.item_id,
        e.ts,
        e.track_length_seconds,
        e.session_id,
        e."window"
    from of_kept_users as e
    left join item_flags as k on e.item_id = k.item_id
    where e."window" = $window_test or k.is_kept
)

select * from final
