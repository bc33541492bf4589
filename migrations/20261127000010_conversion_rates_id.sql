-- Every leased table is keyed by one bigint id, so one lease protocol (src/lease.rs)
-- claims, renews, completes and releases sends, conversions and rate windows alike.
ALTER TABLE conversion_rates ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX conversion_rates_id ON conversion_rates (id);
