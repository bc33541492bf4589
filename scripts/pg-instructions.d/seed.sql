-- scripts/pg-instructions: 60,000 pending sends of one app, each under a lease, as a
-- pass's claims leave them.
INSERT INTO apps (app_id) VALUES ('bench-app');
INSERT INTO sends (app_id, verification_id, sent_at, next_check_at)
SELECT 'bench-app', 'bench-' || g, now() - interval '1 minute', now() - interval '1 minute'
FROM generate_series(1, 60000) AS g;
INSERT INTO send_leases (send_id, token, owner, expires_at)
SELECT id, '00000000-0000-0000-0000-000000000001', 'bench', now() + interval '1 hour'
FROM sends;
