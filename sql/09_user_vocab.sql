-- Stage 09: the user vocabulary.
-- Grain: one row per kept user.
-- Columns: user_idx INT (0..U-1 ordered by user_id), user_id.
create or replace temp table user_vocab as

with

users as (
    select distinct user_id from filtered_events
),

final as (
    select
        cast(row_number() over (order by user_id) - 1 as integer) as user_idx,
        user_id
    from users
)

select * from final
