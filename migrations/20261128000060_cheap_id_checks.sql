-- The id format checks, without a bounded repetition. `~ '^[!-~]{1,128}$'` cost about
-- 9 µs per evaluation (PostgreSQL's regex engine expands `{1,128}` into 128 states), and
-- a CHECK is evaluated on every UPDATE of the row, whatever columns it sets: the job's
-- claim and completion of each send paid it twice, about a tenth of all the CPU
-- Postgres spent per send. The same rule, written as "printable ASCII, no space, at
-- least one character" (`^[!-~]+$`) and "at most 128 bytes" (the characters allowed are
-- one byte each), costs about 0.3 µs.
--
-- Same names, same rows accepted: every stored id passed the old check, so passes the
-- new one; the validation below reads each table once (a minute or so on tens of
-- millions of sends; run the upgrade when no pass runs).
ALTER TABLE sends
    DROP CONSTRAINT sends_verification_id_format,
    ADD CONSTRAINT sends_verification_id_format
        CHECK (verification_id IS NULL
               OR (verification_id ~ '^[!-~]+$' AND octet_length(verification_id) <= 128)),
    DROP CONSTRAINT sends_order_id_format,
    ADD CONSTRAINT sends_order_id_format
        CHECK (order_id IS NULL
               OR (order_id ~ '^[!-~]+$' AND octet_length(order_id) <= 128));

ALTER TABLE conversions
    DROP CONSTRAINT conversions_message_id_format,
    ADD CONSTRAINT conversions_message_id_format
        CHECK (message_id ~ '^[!-~]+$' AND octet_length(message_id) <= 128);
