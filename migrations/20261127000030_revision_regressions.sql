-- A replay answer less final than the stored record (a settled send answered "still
-- sending", or unknown to the provider) is not stored: the send keeps its record and
-- attempts, and the refused answer is kept here beside them, marked as a regression.
ALTER TABLE record_revisions
    ADD COLUMN regression  boolean NOT NULL DEFAULT false,
    -- The answer the replay refused to store (regressions only).
    ADD COLUMN new_matched bigint,
    ADD COLUMN new_raw     jsonb;
