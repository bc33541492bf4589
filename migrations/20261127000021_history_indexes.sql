-- Per-pass and `status` queries read only what is not final, through partial indexes;
-- the history (settled, expired, rejected sends; posted windows; acknowledged
-- conversions) is never scanned by them.

-- The sends not final yet, by app and time: whether a rate window is final (no send in
-- it is pending or recheck), and `status`'s counts per state and app (index-only).
CREATE INDEX sends_open ON sends (app_id, sent_at) INCLUDE (state, next_check_at)
    WHERE state IN ('pending', 'recheck');

-- Posted windows whose numbers changed since (`--repost-rates`, `status`).
CREATE INDEX conversion_rates_changed ON conversion_rates (app_id)
    WHERE state = 'sent' AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent);

-- Rejected conversions, for `status`.
CREATE INDEX conversions_rejected ON conversions (app_id) WHERE state = 'rejected';
