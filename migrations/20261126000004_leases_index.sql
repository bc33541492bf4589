-- The sends under a lease: few at any time. Lets a pass find and clear leases that
-- expired on sends no claim will come back for (a replay that died holding settled,
-- rejected or expired sends), and lets `status` count leases without a scan.
CREATE INDEX sends_leased ON sends (lease_expires_at) WHERE lease_token IS NOT NULL;
