-- Conversions posted back to the provider, and per-country conversion rates.

-- One row per conversion, written by the apps (or `otp-reconcile import conversions`).
-- The job owns state, attempts, next_attempt_at, the lease, sent_at and last_error.
CREATE TABLE conversions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- otp: message_id is a verificationId; sms: the SMS msgid.
    kind             text NOT NULL CONSTRAINT conversions_kind CHECK (kind IN ('otp', 'sms')),
    app_id           text NOT NULL REFERENCES apps (app_id),
    message_id       text NOT NULL
                     CONSTRAINT conversions_message_id_format CHECK (message_id ~ '^[!-~]{1,128}$'),
    -- Empty: the number of the send whose verification_id is message_id.
    number           text,
    converted_at     timestamptz NOT NULL,

    -- pending: to post; sent: acknowledged (status 0), never posted again;
    -- rejected: refused (-14, -22, ...), reason in last_error.
    state            text NOT NULL DEFAULT 'pending'
                     CONSTRAINT conversions_state CHECK (state IN ('pending', 'sent', 'rejected')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    last_error       text,
    -- True once an attempt's outcome was unknown (its pass died holding the lease, or
    -- the request timed out or lost its connection after being sent): the provider may
    -- have it already, so a later acknowledgement may be a duplicate.
    in_doubt         boolean NOT NULL DEFAULT false,

    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,

    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT conversions_once UNIQUE (kind, message_id),
    CONSTRAINT conversions_lease_whole CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);
CREATE INDEX conversions_due ON conversions (next_attempt_at) WHERE state = 'pending';
-- Rates join OTP conversions to sends by verification id.
CREATE INDEX conversions_otp_message ON conversions (app_id, message_id) WHERE kind = 'otp';

-- One row per (app, mcc, window): the conversion rate computed for a closed window and
-- what was posted of it. Posted once; a later change is reported, not posted, unless a
-- pass is told to repost.
CREATE TABLE conversion_rates (
    app_id           text NOT NULL REFERENCES apps (app_id),
    mcc              bigint NOT NULL,
    window_start     timestamptz NOT NULL,
    window_length    interval NOT NULL,
    -- The latest computation.
    converted        bigint NOT NULL,
    sent             bigint NOT NULL CHECK (sent > 0),
    computed_at      timestamptz NOT NULL,

    -- pending: to post; sent: acknowledged; rejected: refused, reason in last_error.
    state            text NOT NULL DEFAULT 'pending'
                     CONSTRAINT conversion_rates_state CHECK (state IN ('pending', 'sent', 'rejected')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    -- What was posted, and when (callbackTime).
    posted_converted bigint,
    posted_sent      bigint,
    posted_rate      numeric,
    posted_at        timestamptz,
    in_doubt         boolean NOT NULL DEFAULT false,

    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,

    PRIMARY KEY (app_id, mcc, window_start, window_length),
    CONSTRAINT conversion_rates_lease_whole CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);
CREATE INDEX conversion_rates_due ON conversion_rates (next_attempt_at) WHERE state = 'pending';
