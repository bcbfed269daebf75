-- Stage 10: events in dense indices; test events of items outside the vocabulary are dropped
-- here (a model cannot recommend them).
-- Grain: one row per filtered event whose item is in the vocabulary.
-- Columns: user_idx INT, item_idx INT, ts BIGINT, window TINYINT, session_id INT,
--          user_id, item_id (kept for the tie rule and the test targets).
create or replace temp table final_events as

with

events as (
    select * from filtered_events
),

final as (
    select
        u.user_idx,
        v.item_idx,
        e.ts,
        e."window",
        e.session_id,
        e.user_id,
        e.item_id
    from events as e
    inner join user_vocab as u on e.user_id = u.user_id
    inner join item_vocab as v on e.item_id = v.item_id
)

select * from final
