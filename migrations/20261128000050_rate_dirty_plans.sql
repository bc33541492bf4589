-- The rate_dirty triggers of sends and records (migration 20261127000020) mark the same
-- hours as before, with plans that stay cheap whatever the size of the statement.
--
-- PL/pgSQL keeps a statement's plan for the whole session, planned at its first call
-- with the transition tables' sizes of that call. A session whose first UPDATE of sends
-- was one row (a release, a renewal) kept a nested loop over old_rows x new_rows, and a
-- claim or a completion of 1,000 sends then compared a million pairs (seconds per
-- statement). The join of the transition tables is now planned at each call (EXECUTE:
-- a hash or merge join for a batch), and the sends of changed records are read by
-- primary key (`id = ANY (ARRAY(...))`), never by a hash join over all of sends.

CREATE OR REPLACE FUNCTION rate_dirty_sends_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $sql$
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT x.app_id, date_bin('1 hour', x.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM new_rows n
    JOIN old_rows o ON o.id = n.id
    CROSS JOIN LATERAL (VALUES (n.app_id, n.sent_at), (o.app_id, o.sent_at)) AS x(app_id, sent_at)
    WHERE (n.app_id, n.sent_at, n.verification_id) IS DISTINCT FROM (o.app_id, o.sent_at, o.verification_id)
       OR (n.state <> o.state
           AND NOT (n.state IN ('pending', 'recheck') AND o.state IN ('pending', 'recheck')))
    ORDER BY 1, 2
    $sql$;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION rate_dirty_records_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM sends s
    WHERE s.id = ANY (ARRAY(SELECT n.send_id FROM new_rows n))
    ORDER BY 1, 2;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION rate_dirty_records_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $sql$
    INSERT INTO rate_dirty (app_id, hour)
    SELECT DISTINCT s.app_id, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    FROM sends s
    WHERE s.id = ANY (ARRAY(SELECT n.send_id
                            FROM new_rows n
                            JOIN old_rows o ON o.send_id = n.send_id
                            WHERE n.mcc IS DISTINCT FROM o.mcc))
    ORDER BY 1, 2
    $sql$;
    RETURN NULL;
END $$;
