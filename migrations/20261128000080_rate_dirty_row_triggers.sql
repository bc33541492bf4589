-- The rate_dirty marks of changed sends and records (migrations 20261127000020 and
-- 20261128000050) come from row-level triggers, and a pass marks the hours of what it
-- checks itself.
--
-- A statement-level trigger with transition tables makes PostgreSQL copy every row the
-- statement writes into them, old and new, whether or not the trigger then marks
-- anything. A pass's completion of 1,000 sends paid that copy for every send, and its
-- insert of their records for every record, though the pass knows which hours its
-- writes touch. A row-level trigger copies nothing: its WHEN clause is evaluated per
-- row, and its function runs only for the rows it selects. Instructions per row,
-- callgrind on a single-user backend, batches of 1,000 (README, "Benchmark"):
-- completion 146,000 -> 135,000, records insert 43,000 -> 34,500.
--
-- A pass (`run`, not `replay`) sets `otp_reconcile.pass_marks_hours` to 'on' for the
-- transaction that completes its sends and stores their records, and its completion
-- marks the hour of every send it completes (src/db/sends/mod.rs, `complete`). The
-- sends a pass claims are all pending or recheck, so their windows are not final: a
-- mark for a send that did not change waits with its window, as a trigger's mark for a
-- send that did would, and the same windows are computed. Whatever else writes sends or
-- records (the apps, `import`, `replay`, a fix by hand) leaves the setting unset, and
-- the triggers mark as before.
--
-- A row-level trigger marks an hour once per transaction (it looks for the
-- transaction's own mark first), so a bulk update by hand adds one mark per hour and
-- app, as the statement-level triggers did, not one per row. Marks of other
-- transactions are never relied on: the table stays append-only for them. The price is
-- paid by bulk writes by hand that change what a window counts: settling 1,000 sends
-- in one UPDATE without the setting costs 217,000 instructions per row (146,000
-- before), a function call per row.

DROP TRIGGER sends_rate_dirty_update ON sends;
DROP TRIGGER records_rate_dirty_insert ON records;
DROP TRIGGER records_rate_dirty_update ON records;
DROP FUNCTION rate_dirty_sends_updated();
DROP FUNCTION rate_dirty_records_inserted();
DROP FUNCTION rate_dirty_records_updated();

-- Changed sends: the old and new hours of those whose state (other than between
-- pending and recheck, which changes no number and no window's finality), app, time or
-- verification id changed; each hour once per transaction (a mark of this transaction
-- is looked up first: `xmin` is the id of the transaction that inserted it).
-- PL/pgSQL keeps the statement's plan for the session (a SQL function would plan it
-- again at every row).
CREATE FUNCTION rate_dirty_send_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT x.app_id, x.hour
    FROM (VALUES (OLD.app_id, date_bin('1 hour', OLD.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')),
                 (NEW.app_id, date_bin('1 hour', NEW.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')))
         AS x(app_id, hour)
    WHERE NOT EXISTS (SELECT 1 FROM rate_dirty d
                      WHERE d.hour = x.hour AND d.app_id = x.app_id
                        AND d.xmin = pg_current_xact_id()::xid);
    RETURN NULL;
END $$;
CREATE TRIGGER sends_rate_dirty_update AFTER UPDATE ON sends FOR EACH ROW
    WHEN (current_setting('otp_reconcile.pass_marks_hours', true) IS DISTINCT FROM 'on'
          AND ((NEW.app_id, NEW.sent_at, NEW.verification_id)
                   IS DISTINCT FROM (OLD.app_id, OLD.sent_at, OLD.verification_id)
               OR (NEW.state <> OLD.state
                   AND NOT (NEW.state IN ('pending', 'recheck') AND OLD.state IN ('pending', 'recheck')))))
    EXECUTE FUNCTION rate_dirty_send_changed();

-- Records stored, or whose mcc changed: their sends' hours, as above.
CREATE FUNCTION rate_dirty_record_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT x.app_id, x.hour
    FROM sends s
    CROSS JOIN LATERAL (VALUES (s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')))
         AS x(app_id, hour)
    WHERE s.id = NEW.send_id
      AND NOT EXISTS (SELECT 1 FROM rate_dirty d
                      WHERE d.hour = x.hour AND d.app_id = x.app_id
                        AND d.xmin = pg_current_xact_id()::xid);
    RETURN NULL;
END $$;
CREATE TRIGGER records_rate_dirty_insert AFTER INSERT ON records FOR EACH ROW
    WHEN (current_setting('otp_reconcile.pass_marks_hours', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION rate_dirty_record_changed();
CREATE TRIGGER records_rate_dirty_update AFTER UPDATE ON records FOR EACH ROW
    WHEN (current_setting('otp_reconcile.pass_marks_hours', true) IS DISTINCT FROM 'on'
          AND NEW.mcc IS DISTINCT FROM OLD.mcc)
    EXECUTE FUNCTION rate_dirty_record_changed();
