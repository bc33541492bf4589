-- The job's schema: the apps it knows, the sends they record, the provider's records
-- and attempts for each send, and one row per pass.

-- Apps allowed to record sends. A send for an app not listed here is refused.
CREATE TABLE apps (
    app_id     text PRIMARY KEY
               CONSTRAINT apps_app_id_format CHECK (app_id ~ '^[A-Za-z0-9_-]{4,32}$'),
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per OTP/SMS send, written by the apps (or `otp-reconcile import sends`).
-- The job owns state, attempts, next_check_at, the lease and last_error.
CREATE TABLE sends (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id           text NOT NULL REFERENCES apps (app_id),
    verification_id  text,
    order_id         text,
    number           text,
    channel          text,
    sent_at          timestamptz NOT NULL,

    -- pending: never checked; recheck: due again at next_check_at;
    -- settled: final; expired: still not final at max age, last answer kept;
    -- rejected: the provider refused it, reason in last_error.
    state            text NOT NULL DEFAULT 'pending',
    -- Checks made: answers received or failures left for later. A pass that stops
    -- on bad credentials does not count one.
    attempts         integer NOT NULL DEFAULT 0,
    next_check_at    timestamptz NOT NULL DEFAULT now(),
    last_checked_at  timestamptz,
    last_error       text,

    -- A claim: who holds the send, until when. Completion writes carry the token.
    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,

    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT sends_has_an_id CHECK (verification_id IS NOT NULL OR order_id IS NOT NULL),
    CONSTRAINT sends_verification_id_format
        CHECK (verification_id IS NULL OR verification_id ~ '^[!-~]{1,128}$'),
    CONSTRAINT sends_order_id_format
        CHECK (order_id IS NULL OR order_id ~ '^[!-~]{1,128}$'),
    CONSTRAINT sends_channel CHECK (channel IS NULL OR channel IN ('sms', 'call', 'sna')),
    CONSTRAINT sends_state CHECK (state IN ('pending', 'recheck', 'settled', 'expired', 'rejected')),
    CONSTRAINT sends_lease_whole CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);

-- The same id twice is one send.
CREATE UNIQUE INDEX sends_verification_id_key ON sends (verification_id)
    WHERE verification_id IS NOT NULL;
CREATE UNIQUE INDEX sends_order_id_key ON sends (app_id, order_id)
    WHERE order_id IS NOT NULL;
-- Claiming reads only sends that can still be due: settled, expired and rejected rows,
-- the bulk of a table of millions, are not in this index.
CREATE INDEX sends_due ON sends (next_check_at)
    WHERE state IN ('pending', 'recheck');
-- Exports and replays select by sent_at (and app).
CREATE INDEX sends_sent_at ON sends (sent_at, app_id);

-- The provider's record for a send: the verification outcome and the raw answer.
CREATE TABLE records (
    send_id         bigint PRIMARY KEY REFERENCES sends (id) ON DELETE CASCADE,
    matched         bigint,
    verified_at     timestamptz,
    ori_receiver    text,
    channel         text,
    order_id        text,
    flow_id         bigint,
    -- The mcc of the record's first attempt that has one (for conversion rates).
    mcc             bigint,
    still_sending   boolean NOT NULL,
    -- The answer's `data`, as the provider sent it.
    raw             jsonb NOT NULL,
    first_stored_at timestamptz NOT NULL,
    changed_at      timestamptz NOT NULL
);

-- Every sms, call and sna attempt of a record, in the provider's order per channel.
-- Money is NUMERIC, exactly as the provider wrote it.
CREATE TABLE attempts (
    send_id            bigint NOT NULL REFERENCES sends (id) ON DELETE CASCADE,
    channel            text NOT NULL CONSTRAINT attempts_channel CHECK (channel IN ('sms', 'call', 'sna')),
    -- 1-based position in its channel's list in the record.
    position           integer NOT NULL CHECK (position >= 1),
    -- sms status, call terminationCode, sna status.
    status             bigint,
    -- sms reason, call terminationReason, sna reason.
    reason             text,
    mcc                bigint,
    mnc                bigint,
    -- sms submitTm, call submitTime, sna postVerificationTime.
    submitted_at       timestamptz,
    -- sms sendTm, call callTime.
    sent_at            timestamptz,
    -- call ringingTime, answerTime.
    ringing_at         timestamptz,
    answered_at        timestamptz,
    -- sms doneTm, call hangupTime, sna verificationBackTime.
    completed_at       timestamptz,
    -- sms sender, call displayNum.
    sender             text,
    -- sms chargeCnt.
    charge_count       bigint,
    -- call callDuration and chargedDuration (seconds), billPeriodstring, code.
    call_duration      bigint,
    charged_duration   bigint,
    bill_period        text,
    supplier_code      text,
    -- call rate.
    rate               numeric,
    -- sms pay, call cost: the total in the quotation currency.
    amount             numeric,
    settle_pay         numeric,
    settle_price       numeric,
    settle_currency    text,
    quote_exchange     numeric,
    PRIMARY KEY (send_id, channel, position)
);

-- One row per run of the job.
CREATE TABLE passes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('run', 'replay')),
    owner       text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    parameters  jsonb NOT NULL,
    -- running, done, max_runtime, credentials_refused, interrupted, failed.
    outcome     text NOT NULL DEFAULT 'running',
    -- The pass's counts (claimed, settled, rechecks, rejected, expired, retried,
    -- failed, released, requests, ...).
    summary     jsonb NOT NULL DEFAULT '{}'::jsonb,
    error       text
);
CREATE INDEX passes_started_at ON passes (started_at DESC);
