-- What a record was before a replay changed it: the previous raw answer, verification
-- outcome and attempts, tagged with the replay's pass.

CREATE TABLE record_revisions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pass_id      bigint NOT NULL REFERENCES passes (id),
    send_id      bigint NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
    revised_at   timestamptz NOT NULL,
    -- NULL when the send had no record before the replay.
    old_matched  bigint,
    old_raw      jsonb,
    -- The attempts rows as they were (to_jsonb of each, in channel and position order).
    old_attempts jsonb NOT NULL,
    CONSTRAINT record_revisions_once UNIQUE (pass_id, send_id)
);
CREATE INDEX record_revisions_send ON record_revisions (send_id);
