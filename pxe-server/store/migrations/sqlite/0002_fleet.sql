-- tugboot fleet store, SQLite schema v2: one machine registry with fact provenance, reports
-- indexed by update outcome, no DHCP lease tables (DHCP keeps its own crash-safe lease log).
--
-- SQLite cannot change a column in place, so `machines`, `reports` and `device_certs` are
-- rebuilt. This runs inside sqlx's migration transaction with foreign keys ON, so no DROP may
-- cascade: the old tables are renamed first (SQLite rewrites the children's foreign keys to
-- follow their parent), the new ones are created and filled, and the old ones are dropped
-- children first, when nothing references them any more.
PRAGMA defer_foreign_keys = ON;

ALTER TABLE machines RENAME TO machines_v1;
ALTER TABLE reports RENAME TO reports_v1;
ALTER TABLE device_certs RENAME TO device_certs_v1;

CREATE TABLE machines (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    name              TEXT    UNIQUE,
    mac               TEXT    UNIQUE,
    smbios_uuid       TEXT,
    serial            TEXT,
    state             TEXT    NOT NULL DEFAULT 'unknown'
                              CHECK (state IN ('unknown', 'adopted', 'approved', 'revoked')),
    first_seen        INTEGER NOT NULL,
    last_seen         INTEGER NOT NULL,
    last_booted_image TEXT
) STRICT;
INSERT INTO machines (id, mac, smbios_uuid, serial, state, first_seen, last_seen, last_booted_image)
    SELECT id, mac, smbios_uuid, serial, state, first_seen, last_seen, last_booted_image
    FROM machines_v1 ORDER BY id;

-- Facts with provenance (tugboot_fleet::facts): an upsert replaces a fact only with one of equal
-- or higher rank, so an observation never overwrites what a device attested or the operator
-- declared, whichever server writes.
CREATE TABLE machine_facts (
    machine_id INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    source     TEXT    NOT NULL CHECK (source IN ('observed:dhcp', 'observed:http', 'observed:tftp',
                                                  'attested', 'declared:file', 'declared:operator')),
    rank       INTEGER NOT NULL CHECK (rank BETWEEN 1 AND 4),
    at         INTEGER NOT NULL,
    PRIMARY KEY (machine_id, key)
) STRICT;
-- v1's board came from unauthenticated sightings; profile and labels only from the operator API.
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT id, 'board', board, 'observed:dhcp', 1, last_seen FROM machines_v1 WHERE board IS NOT NULL;
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT id, 'profile', profile, 'declared:operator', 4, last_seen FROM machines_v1 WHERE profile IS NOT NULL;
INSERT INTO machine_facts (machine_id, key, value, source, rank, at)
    SELECT m.id, 'label.' || j.key, j.value, 'declared:operator', 4, m.last_seen
    FROM machines_v1 m, json_each(m.labels) j;

CREATE TABLE reports (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    report_id       TEXT    NOT NULL,
    boot_id         TEXT    NOT NULL,
    slot            TEXT    CHECK (slot IN ('a', 'b')),
    image_version   INTEGER NOT NULL CHECK (image_version >= 0),
    checks          TEXT    NOT NULL,
    uptime_secs     INTEGER NOT NULL CHECK (uptime_secs >= 0),
    last_error      TEXT,
    received_at     INTEGER NOT NULL,
    outcome         TEXT    CHECK (outcome IN ('committed', 'rolled-back', 'failed', 'interrupted', 'rejected', 'installed')),
    outcome_name    TEXT,
    outcome_version INTEGER CHECK (outcome_version >= 0),
    UNIQUE (device_id, report_id)
) STRICT;
INSERT INTO reports (device_id, report_id, boot_id, slot, image_version, checks, uptime_secs,
                     last_error, received_at, outcome, outcome_name, outcome_version)
    SELECT device_id, report_id, boot_id, slot, image_version, checks, uptime_secs, last_error,
           received_at, json_extract(checks, '$.outcome.outcome'),
           json_extract(checks, '$.outcome.name'), json_extract(checks, '$.outcome.version')
    FROM reports_v1 ORDER BY received_at, report_id;

CREATE TABLE device_certs (
    serial     TEXT    PRIMARY KEY,
    device_id  INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
INSERT INTO device_certs SELECT serial, device_id, issued_at, not_after, revoked_at FROM device_certs_v1;

DROP TABLE reports_v1;
DROP TABLE device_certs_v1;
DROP TABLE machines_v1;

CREATE INDEX machines_serial ON machines (serial);
CREATE INDEX machines_smbios_uuid ON machines (smbios_uuid);
CREATE INDEX machine_facts_source ON machine_facts (source);
CREATE INDEX reports_received_at ON reports (received_at);
CREATE INDEX reports_device ON reports (device_id, seq);
CREATE INDEX reports_outcome ON reports (outcome_name, outcome_version, device_id, seq);
CREATE INDEX device_certs_device ON device_certs (device_id);

DROP TABLE leases;
DROP TABLE lease_pools;
