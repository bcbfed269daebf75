-- Stage 15: write the test targets.
-- Grain: one row per distinct (user, item) listened to (listen+) in the test window, for users
-- with at least one event before it; a track heard twice is one target, since the metrics treat
-- the targets as a set. Sorted by (user_idx, item_idx).
-- Columns: user_id, item_id (original ids), user_idx INT, item_idx INT, heard_before BOOLEAN
--          (the user played the track before the test window: a repeat target; else new).
copy (
    with

    events as (
        select * from final_events
    ),

    test as (
        select user_id, item_id, user_idx, item_idx
        from events
        where "window" = $window_test
    ),

    with_history as (
        select distinct user_idx
        from events
        where "window" < $window_test
    ),

    heard as (
        select distinct user_idx, item_idx
        from events
        where "window" < $window_test
    ),

    targets as (
        select distinct user_id, item_id, user_idx, item_idx
        from test semi join with_history using (user_idx)
    ),

    final as (
        select
            targets.*,
            heard.item_idx is not null as heard_before
        from targets
        left join heard using (user_idx, item_idx)
        order by user_idx, item_idx
    )

    select * from final
) to $test_targets_path (format parquet)
