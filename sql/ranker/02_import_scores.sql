-- Import a production ranker's scores (--ranker-scores): original ids -> dense indices.
--
-- Grain: one row per row of the imported file (user, item, request).
-- Columns: user_idx, item_idx (NULL where the id is not in the extracted vocabularies),
--          request_ts (int64 unix seconds), score (double), user_id, item_id (as imported),
--          user_id_text, item_id_text (as written in the file, for messages).
-- Inputs (registered views): ranker_scores_input (user_id, item_id, request_ts, score; ids
--          already cast to the vocabularies' types, and as text), ranker_user_vocab (user_idx, user_id),
--          ranker_item_vocab (item_idx, item_id).
-- Params: none.

with

scores as (select * from ranker_scores_input),
user_vocab as (select * from ranker_user_vocab),
item_vocab as (select * from ranker_item_vocab),

final as (
    select
        user_vocab.user_idx::bigint as user_idx,
        item_vocab.item_idx::integer as item_idx,
        scores.request_ts::bigint as request_ts,
        scores.score::double as score,
        scores.user_id,
        scores.item_id,
        scores.user_id_text,
        scores.item_id_text
    from scores
    left join user_vocab on user_vocab.user_id = scores.user_id
    left join item_vocab on item_vocab.item_id = scores.item_id
)

select * from final
