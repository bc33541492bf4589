-- A pass's heartbeat: renewed with its leases on the database's clock. A running pass
-- whose heartbeat is older than heartbeat_timeout has stopped without recording how
-- (killed, or it lost the database): `status` shows it as abandoned.
ALTER TABLE passes
    ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN heartbeat_timeout interval;
