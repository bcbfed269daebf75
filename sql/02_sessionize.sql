-- Stage 02: sessionize listen+ events.
-- Grain: one row per listen+ event that survives repeat removal.
-- Columns: user_id, item_id, ts, track_length_seconds, session_id INT (0-based per user).
-- Tie rule: a user's events are ordered by (ts, item_id); every later stage uses the same order.
-- A pause strictly longer than the session gap starts a new session (a pause of exactly the gap
-- does not). With repeat removal on, an event is dropped when the previous listen+ event of the
-- same session is the same item (A, A, B, A -> A, B, A); skips between them do not separate them.
create or replace temp table sessions as

with

listens as (
    select user_id, item_id, ts, track_length_seconds
    from clean_events
    where is_listen
),

with_previous as (
    select
        *,
        lag(ts) over by_time as prev_ts,
        lag(item_id) over by_time as prev_item_id
    from listens
    window by_time as (partition by user_id order by ts, item_id)
),

flagged as (
    select
        *,
        prev_ts is null or ts - prev_ts > $session_gap_minutes * 60 as starts_session
    from with_previous
),

numbered as (
    select
        *,
        sum(cast(starts_session as integer)) over (
            partition by user_id order by ts, item_id rows unbounded preceding
        ) - 1 as session_number
    from flagged
),

final as (
    select
        user_id,
        item_id,
        ts,
        track_length_seconds,
        cast(session_number as integer) as session_id
    from numbered
    where not ($drop_consecutive_repeats and not starts_session and item_id = prev_item_id)
)

select * from final
