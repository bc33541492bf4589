-- Today's spend without reading a day of sends: the settled cost (attempts.settle_pay)
-- per UTC day of the send's sent_at and per settle currency, with how many attempts
-- have one (a currency whose attempts are all gone is no longer reported).
--
-- Kept exact in the same statement as the writes, set-based, one upsert per statement:
-- a store of attempts adds what it writes and subtracts what it replaces
-- (src/db/records.rs), a prune batch subtracts what it removes (src/db/sends/prune.rs),
-- and the trigger below moves the spend of a send whose day an app changes. Attempts
-- are written by the job only; a send deleted by hand (not by `prune`) leaves its spend
-- here.
CREATE TABLE spend_days (
    day      date NOT NULL,
    -- NULL: the provider gave no settle currency.
    currency text,
    pay      numeric NOT NULL,
    attempts bigint NOT NULL,
    CONSTRAINT spend_days_once UNIQUE NULLS NOT DISTINCT (day, currency)
);

-- A send whose sent_at moves to another day takes its spend with it. A row trigger on
-- `sent_at` alone, with the day change in its WHEN: the job's own updates of sends
-- (claims, renewals, completions) never set sent_at, so they never fire it or pay for
-- transition tables.
CREATE FUNCTION spend_days_send_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spend_days AS d (day, currency, pay, attempts)
    SELECT x.day, a.settle_currency, sum(x.sign * a.settle_pay), sum(x.sign)
    FROM (VALUES ((NEW.sent_at AT TIME ZONE 'UTC')::date, 1),
                 ((OLD.sent_at AT TIME ZONE 'UTC')::date, -1)) AS x(day, sign)
    JOIN attempts a ON a.send_id = NEW.id AND a.settle_pay IS NOT NULL
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT ON CONSTRAINT spend_days_once DO UPDATE
    SET pay = d.pay + EXCLUDED.pay, attempts = d.attempts + EXCLUDED.attempts;
    RETURN NULL;
END $$;
CREATE TRIGGER sends_spend_days_moved AFTER UPDATE OF sent_at ON sends
    FOR EACH ROW
    WHEN ((OLD.sent_at AT TIME ZONE 'UTC')::date IS DISTINCT FROM (NEW.sent_at AT TIME ZONE 'UTC')::date)
    EXECUTE FUNCTION spend_days_send_moved();

-- A database upgraded to this schema: its history, read once.
INSERT INTO spend_days (day, currency, pay, attempts)
SELECT (s.sent_at AT TIME ZONE 'UTC')::date, a.settle_currency, sum(a.settle_pay), count(*)
FROM sends s JOIN attempts a ON a.send_id = s.id
WHERE a.settle_pay IS NOT NULL
GROUP BY 1, 2;
