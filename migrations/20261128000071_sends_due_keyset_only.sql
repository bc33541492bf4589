-- no-transaction
-- `sends_due_keyset` (the previous migration) serves every reader of `sends_due`, whose
-- key is its first column.
DROP INDEX CONCURRENTLY sends_due;
