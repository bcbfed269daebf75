-- Stage 05: tracks frequent enough to be modelled.
-- Grain: one row per item with at least min_item_events pre-test listen+ events.
-- Columns: item_id, pre_test_events BIGINT.
-- Counted before users are filtered; users are then counted over these items only (stage 06), so
-- every kept user meets its threshold, while a kept item may end with fewer events once
-- infrequent users are gone (one pass, not iterated to a fixed point).
create or replace temp table kept_items as

with

pre_test as (
    select item_id from split_events where "window" < $window_test
),

counted as (
    select item_id, count(*) as pre_test_events
    from pre_test
    group by item_id
),

final as (
    select item_id, pre_test_events
    from counted
    where pre_test_events >= $min_item_events
)

select * from final
