-- Incremental conversion rates: the hours (per app) whose sends changed since their
-- rate windows were last computed. Filled by statement-level triggers, in the same
-- transaction as the write, one INSERT ... SELECT DISTINCT per statement; whatever
-- writes sends, records or conversions (the job, `import`, the apps themselves) marks
-- them. A pass computes only the windows that hold a marked hour and whose sends are
-- all final, and removes those marks in the same statement (see src/rates.rs).
--
-- Append-only: a writer never relies on a mark another transaction made, so a
-- computation that removes the marks it sees never loses a change committed after it.
CREATE TABLE rate_dirty (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id  text NOT NULL,
    -- The hour of sent_at (UTC) of the sends that changed. A day window is dirty when
    -- one of its hours is.
    hour    timestamptz NOT NULL
);
CREATE INDEX rate_dirty_hour ON rate_dirty (hour, app_id);

-- New sends: their hours. A send inserted pending keeps its window's mark until the
-- window is final.
CREATE FUNCTION rate_dirty_sends_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows
    ORDER BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER sends_rate_dirty_insert AFTER INSERT ON sends
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rate_dirty_sends_inserted();

-- Changed sends: the old and new hours of those whose state (other than between
-- pending and recheck, which changes no number and no window's finality), app, time or
-- verification id changed. Claims, releases and re-checks mark nothing.
CREATE FUNCTION rate_dirty_sends_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT x.app_id, date_bin('1 hour', x.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows n
    JOIN old_rows o ON o.id = n.id
    CROSS JOIN LATERAL (VALUES (n.app_id, n.sent_at), (o.app_id, o.sent_at)) AS x(app_id, sent_at)
    WHERE (n.app_id, n.sent_at, n.verification_id) IS DISTINCT FROM (o.app_id, o.sent_at, o.verification_id)
       OR (n.state <> o.state
           AND NOT (n.state IN ('pending', 'recheck') AND o.state IN ('pending', 'recheck')))
    ORDER BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER sends_rate_dirty_update AFTER UPDATE ON sends
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rate_dirty_sends_updated();

-- Records stored or whose mcc changed: their sends' hours.
CREATE FUNCTION rate_dirty_records_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows n JOIN sends s ON s.id = n.send_id
    ORDER BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER records_rate_dirty_insert AFTER INSERT ON records
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rate_dirty_records_inserted();

CREATE FUNCTION rate_dirty_records_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows n
    JOIN old_rows o ON o.send_id = n.send_id
    JOIN sends s ON s.id = n.send_id
    WHERE n.mcc IS DISTINCT FROM o.mcc
    ORDER BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER records_rate_dirty_update AFTER UPDATE ON records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rate_dirty_records_updated();

-- OTP conversions added: the hours of the sends they convert (a conversion stored
-- before its send is counted when the send is inserted, which marks its hour).
CREATE FUNCTION rate_dirty_conversions_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows c
    JOIN sends s ON s.verification_id = c.message_id AND s.app_id = c.app_id
    WHERE c.kind = 'otp'
    ORDER BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER conversions_rate_dirty_insert AFTER INSERT ON conversions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rate_dirty_conversions_inserted();

-- A database upgraded to this schema: every hour of the last eight days, and every
-- hour holding a send not final yet, is computed once more.
INSERT INTO rate_dirty (app_id, hour)
SELECT DISTINCT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
FROM sends
WHERE sent_at >= now() - interval '8 days' OR state IN ('pending', 'recheck')
ORDER BY 1, 2;
