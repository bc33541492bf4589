-- scripts/pg-instructions: the pass's batch statements as SQL functions of the first id
-- of a batch of 1,000 sends (ids lo .. lo + 999, all leased by seed.sql). Copies of the
-- statements in src/db/sends/mod.rs (`complete`) and src/db/records.rs (the records and
-- attempts inserts), with the values a pass binds built here; keep them in step.

-- The arrays of a completion: every send settled, no error.
CREATE FUNCTION completion_batch(lo bigint, OUT ids bigint[], OUT leases uuid[],
                                 OUT states text[], OUT due timestamptz[], OUT errors text[])
LANGUAGE sql AS $$
    SELECT array_agg(g), array_agg('00000000-0000-0000-0000-000000000001'::uuid),
           array_agg('settled'::text), array_agg(now()), array_agg(NULL::text)
    FROM generate_series(lo, lo + 999) AS g
$$;

-- `sends::complete`'s statement ($7, keep unchanged, false), for the two below.
CREATE FUNCTION completion(first bigint) RETURNS bigint LANGUAGE sql AS $$
    WITH b AS (SELECT * FROM completion_batch(first)),
         u AS (SELECT u.* FROM b, unnest(b.ids, b.leases, b.states, b.due, b.errors)
                                AS u(id, lease, state, next_check_at, last_error)),
         ended AS (DELETE FROM send_leases l USING u b
                   WHERE l.send_id = b.id AND l.token = b.lease RETURNING b.*),
         written AS (
         UPDATE sends t
         SET state = u.state,
             next_check_at = CASE WHEN false AND t.state = u.state THEN t.next_check_at ELSE u.next_check_at END,
             last_error = CASE WHEN false AND t.state = u.state THEN t.last_error ELSE u.last_error END,
             attempts = CASE WHEN false AND t.state = u.state THEN t.attempts ELSE t.attempts + 1 END,
             last_checked_at = CASE WHEN false AND t.state = u.state THEN t.last_checked_at ELSE now() END,
             updated_at = CASE WHEN false AND t.state = u.state THEN t.updated_at ELSE now() END
         FROM ended u
         WHERE t.id = u.id
         RETURNING t.id, u.lease, t.app_id, t.sent_at),
         marked AS (
         INSERT INTO rate_dirty (app_id, hour)
         SELECT DISTINCT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
         FROM written
         ORDER BY 1, 2)
    SELECT count(*) FROM written
$$;

-- `sends::complete` with `Completing::Pass`: the flag, then the completion.
CREATE FUNCTION complete_pass(lo bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT set_config('otp_reconcile.pass_marks_hours', 'on', true);
    SELECT completion(lo)
$$;

-- The same update by any other writer (a replay whose sends change state, a fix by
-- hand): without the flag the row triggers mark the hours (the statement's own marks,
-- a few rows a batch, are left in).
CREATE FUNCTION complete_by_hand(lo bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT completion(lo)
$$;

-- `records::store_new`'s insert of records, under a pass's flag: answers of 600 bytes
-- or so, the size the simulator's are.
CREATE FUNCTION records_insert_pass(lo bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT set_config('otp_reconcile.pass_marks_hours', 'on', true);
    WITH inserted AS (
        INSERT INTO records (send_id, matched, verified_at, ori_receiver, channel, order_id,
                             flow_id, mcc, still_sending, raw, first_stored_at, changed_at)
        SELECT g, 1, now(), '+15551234567', 'sms', NULL, 7, 310, false,
               ('{"verificationId":"bench-' || g || '","pad":"' || repeat('x', 540) || '"}')::json,
               now(), now()
        FROM generate_series(lo, lo + 999) AS g
        RETURNING send_id)
    SELECT count(*) FROM inserted
$$;

-- `records::store_new`'s insert of attempts, with the spend it adds to `spend_days` (one
-- settled sms attempt per send), under a pass's flag.
CREATE FUNCTION attempts_insert_pass(lo bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT set_config('otp_reconcile.pass_marks_hours', 'on', true);
    WITH incoming AS (
             SELECT g AS send_id, 'sms'::text AS channel, 1 AS position, 2::bigint AS status,
                    'DELIVRD'::text AS reason, 310::bigint AS mcc, 260::bigint AS mnc,
                    now() AS submitted_at, now() AS sent_at, NULL::timestamptz AS ringing_at,
                    NULL::timestamptz AS answered_at, now() AS completed_at,
                    'SENDER'::text AS sender, 1::bigint AS charge_count,
                    NULL::bigint AS call_duration, NULL::bigint AS charged_duration,
                    NULL::text AS bill_period, NULL::text AS supplier_code,
                    NULL::numeric AS rate, 0.0123::numeric AS amount,
                    0.0123::numeric AS settle_pay, 0.0123::numeric AS settle_price,
                    'USD'::text AS settle_currency, 1::numeric AS quote_exchange
             FROM generate_series(lo, lo + 999) AS g),
         spend AS (
             INSERT INTO spend_days AS d (day, currency, pay, attempts)
             SELECT (s.sent_at AT TIME ZONE 'UTC')::date, x.currency, sum(x.pay), sum(x.n)
             FROM (SELECT send_id, settle_currency, settle_pay, 1 FROM incoming
                   WHERE settle_pay IS NOT NULL) AS x(send_id, currency, pay, n)
             JOIN (SELECT id, sent_at FROM sends
                   WHERE id = ANY (ARRAY(SELECT generate_series(lo, lo + 999)))) AS s(id, sent_at)
               ON s.id = x.send_id
             GROUP BY 1, 2
             HAVING sum(x.n) <> 0 OR sum(x.pay) <> 0
             ORDER BY 1, 2
             ON CONFLICT ON CONSTRAINT spend_days_once DO UPDATE
             SET pay = d.pay + EXCLUDED.pay, attempts = d.attempts + EXCLUDED.attempts),
         inserted AS (INSERT INTO attempts SELECT * FROM incoming RETURNING 1)
    SELECT count(*) FROM inserted
$$;
