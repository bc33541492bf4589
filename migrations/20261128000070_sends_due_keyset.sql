-- no-transaction
-- A claim of due sends walks the due index in (next_check_at, id) order from where the
-- pass's previous claim stopped (a keyset), not from the start: from the start it
-- walked over every send the pass (and any other) still held under a live lease, each
-- checked against `send_leases`, before it reached one it could take. With a pipeline
-- of a few thousand sends in flight or waiting to be written, that walk was most of a
-- claim's time, and a quarter of Postgres's time per send (src/db/sends/leased.rs).
-- A keyset needs a total order, so the index carries the id: a backlog whose sends
-- share one due time (an outage's, an import's) is ordered too.
--
-- Built CONCURRENTLY, outside a transaction: `sends` holds the whole history, and a
-- plain CREATE INDEX would block the apps' inserts for the length of a scan of it. The
-- old index goes in the next migration (one statement each: CONCURRENTLY cannot run
-- in the implicit transaction of a multi-statement query). If this build fails, it
-- leaves an invalid index `sends_due_keyset`: drop it and migrate again.
CREATE INDEX CONCURRENTLY sends_due_keyset ON sends (next_check_at, id)
    WHERE state IN ('pending', 'recheck');
