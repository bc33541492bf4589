-- A send's lease moves out of its row, into `send_leases` (src/db/lease.rs,
-- `leased_by_table!`). A claim wrote the lease columns and `next_check_at` of every send
-- it took: a new version of the row with a new entry in each of its six indexes, and
-- the `rate_dirty` trigger's transition tables, for a write that changes nothing the
-- sends say. About a third of the CPU Postgres spent per send. Now a claim locks the
-- due sends and inserts a narrow row per lease (one index entry); the completion
-- deletes it in the same statement that writes the send.
--
-- A send stays due while leased (its `next_check_at` is no longer moved to the lease's
-- expiry): a claim skips the sends whose lease is live, and takes over those whose
-- lease expired. Sends leased when this runs keep the due time the old claim gave them
-- (the lease's expiry), and their leases move here.
--
-- No foreign key to sends, as for records and attempts: the job writes leases only for
-- sends it locked, `prune` removes no leased send, and a pass clears leases of sends
-- that are gone.
CREATE TABLE send_leases (
    send_id    bigint PRIMARY KEY,
    token      uuid NOT NULL,
    -- host:pid of the pass (`status` names the passes whose heartbeat stopped).
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL
);

INSERT INTO send_leases (send_id, token, owner, expires_at)
SELECT id, lease_token, coalesce(lease_owner, ''), lease_expires_at
FROM sends
WHERE lease_token IS NOT NULL;

-- Drops the index sends_leased and the check sends_lease_whole with them.
ALTER TABLE sends
    DROP COLUMN lease_token,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_expires_at;
