-- `prune --before`: conversions by when they converted (sms conversions, and OTP
-- conversions whose send is gone), and rate windows by their start.
CREATE INDEX conversions_converted_at ON conversions (converted_at);
CREATE INDEX conversion_rates_window_start ON conversion_rates (window_start);
