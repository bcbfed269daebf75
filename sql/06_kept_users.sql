-- Stage 06: users with enough history to be modelled.
-- Grain: one row per user with at least min_user_events pre-test listen+ events on kept items.
-- Columns: user_id, pre_test_events BIGINT.
create or replace temp table kept_users as

with

pre_test as (
    select user_id, item_id from split_events where "window" < $window_test
),

on_kept_items as (
    select user_id from pre_test semi join kept_items using (item_id)
),

counted as (
    select user_id, count(*) as pre_test_events
    from on_kept_items
    group by user_id
),

final as (
    select user_id, pre_test_events
    from counted
    where pre_test_events >= $min_user_events
)

select * from final
