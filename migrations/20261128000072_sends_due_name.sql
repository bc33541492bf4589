-- The due index keeps its name: `status`, the README and the plans read `sends_due`.
ALTER INDEX sends_due_keyset RENAME TO sends_due;
