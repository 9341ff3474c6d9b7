-- tugboot fleet store, PostgreSQL schema v2: one machine registry with fact provenance, reports
-- indexed by update outcome, no DHCP lease tables. Same tables, columns and constraints as
-- migrations/sqlite/0002_fleet.sql.

ALTER TABLE machines ADD COLUMN name TEXT UNIQUE;
ALTER TABLE machines ALTER COLUMN mac DROP NOT NULL;

CREATE TABLE machine_facts (
    machine_id BIGINT   NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    key        TEXT     NOT NULL,
    value      TEXT     NOT NULL,
    source     TEXT     NOT NULL CHECK (source IN ('observed:dhcp', 'observed:http', 'observed:tftp',
                                                   'attested', 'declared:file', 'declared:operator')),
    rank       BIGINT   NOT NULL CHECK (rank BETWEEN 1 AND 4),
    at         BIGINT   NOT NULL,
    PRIMARY KEY (machine_id, key)
);
CREATE INDEX machine_facts_source ON machine_facts (source);
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT id, 'board', board, 'observed:dhcp', 1, last_seen FROM machines WHERE board IS NOT NULL;
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT id, 'profile', profile, 'declared:operator', 4, last_seen FROM machines WHERE profile IS NOT NULL;
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT m.id, 'label.' || j.key, j.value, 'declared:operator', 4, m.last_seen
    FROM machines m, json_each_text(m.labels::json) j;
ALTER TABLE machines DROP COLUMN board, DROP COLUMN profile, DROP COLUMN labels;

ALTER TABLE reports ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
ALTER TABLE reports ALTER COLUMN slot DROP NOT NULL;
ALTER TABLE reports
    ADD COLUMN outcome TEXT CHECK (outcome IN ('committed', 'rolled-back', 'failed', 'interrupted', 'rejected', 'installed')),
    ADD COLUMN outcome_name TEXT,
    ADD COLUMN outcome_version BIGINT CHECK (outcome_version >= 0);
UPDATE reports SET
    outcome = checks::json -> 'outcome' ->> 'outcome',
    outcome_name = checks::json -> 'outcome' ->> 'name',
    outcome_version = (checks::json -> 'outcome' ->> 'version')::bigint
    WHERE (checks::json -> 'outcome' ->> 'outcome') IS NOT NULL;
CREATE INDEX reports_device ON reports (device_id, seq);
CREATE INDEX reports_outcome ON reports (outcome_name, outcome_version, device_id, seq);

DROP TABLE leases;
DROP TABLE lease_pools;
