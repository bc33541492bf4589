-- `prune` removes a send's records, attempts and record revisions itself, in the same
-- statement as the send, children first (src/db/sends/prune.rs). The ON DELETE CASCADE
-- foreign keys to sends only added a row-by-row trigger per removed send (and a check
-- per inserted child) that found nothing left to do: they go.
--
-- What is no longer enforced by the database: that a record, attempt or revision names
-- an existing send. The job writes them only for sends it holds under a lease (which
-- exist), and only `prune` deletes sends; a send deleted by hand now leaves its
-- children behind (delete them first, or use `prune`).
ALTER TABLE records DROP CONSTRAINT records_send_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_send_id_fkey;
ALTER TABLE record_revisions DROP CONSTRAINT record_revisions_send_id_fkey;
