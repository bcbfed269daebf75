-- Stage 14: write the user table.
-- Grain: one row per kept user, sorted by user_idx.
-- Columns: user_idx INT, user_id.
copy (
    with

    users as (
        select * from user_vocab
    ),

    final as (
        select user_idx, user_id from users order by user_idx
    )

    select * from final
) to $users_path (format parquet)
