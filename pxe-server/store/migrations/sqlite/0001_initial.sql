-- tugboot fleet store, SQLite schema v1. Timestamps are unix seconds (INTEGER).
-- STRICT tables: a value of the wrong type is an error, not a silent conversion.

CREATE TABLE machines (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    mac               TEXT    NOT NULL UNIQUE,
    smbios_uuid       TEXT,
    serial            TEXT,
    board             TEXT,
    profile           TEXT,
    labels            TEXT    NOT NULL DEFAULT '{}',
    state             TEXT    NOT NULL DEFAULT 'unknown'
                              CHECK (state IN ('unknown', 'adopted', 'approved', 'revoked')),
    first_seen        INTEGER NOT NULL,
    last_seen         INTEGER NOT NULL,
    last_booted_image TEXT
) STRICT;
CREATE INDEX machines_serial ON machines (serial);
CREATE INDEX machines_smbios_uuid ON machines (smbios_uuid);

CREATE TABLE lease_pools (
    name       TEXT    PRIMARY KEY,
    first_addr INTEGER NOT NULL,
    last_addr  INTEGER NOT NULL,
    CHECK (first_addr <= last_addr)
) STRICT;

-- One row per address of every pool, created with the pool: allocation is a single UPDATE of
-- one row, and (pool, addr) being the primary key is what makes a double hand-out impossible.
CREATE TABLE leases (
    pool       TEXT    NOT NULL REFERENCES lease_pools (name) ON DELETE CASCADE,
    addr       INTEGER NOT NULL,
    client_id  BLOB,
    mac        TEXT,
    hostname   TEXT,
    state      TEXT    NOT NULL
                       CHECK (state IN ('free', 'offered', 'bound', 'released', 'declined')),
    expires_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pool, addr)
) STRICT;
-- A client holds at most one address per pool (and keeps its affinity after a release).
CREATE UNIQUE INDEX leases_client ON leases (pool, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX leases_expiry ON leases (pool, expires_at);
-- Never-used addresses, in order: the common allocation is one index probe, not a sort.
CREATE INDEX leases_unused ON leases (pool, addr) WHERE state = 'free' AND client_id IS NULL;

CREATE TABLE images (
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 0),
    manifest_digest TEXT    NOT NULL,
    manifest        BLOB    NOT NULL,
    published       INTEGER NOT NULL DEFAULT 0 CHECK (published IN (0, 1)),
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

CREATE TABLE rollouts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    image_name     TEXT    NOT NULL,
    image_version  INTEGER NOT NULL,
    group_selector TEXT    NOT NULL,
    stages         TEXT    NOT NULL,
    thresholds     TEXT    NOT NULL,
    state          TEXT    NOT NULL
                           CHECK (state IN ('pending', 'running', 'paused', 'completed', 'aborted')),
    current_stage  INTEGER NOT NULL DEFAULT 0 CHECK (current_stage >= 0),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    FOREIGN KEY (image_name, image_version) REFERENCES images (name, version)
) STRICT;

CREATE TABLE reports (
    device_id     INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    report_id     TEXT    NOT NULL,
    boot_id       TEXT    NOT NULL,
    slot          TEXT    NOT NULL CHECK (slot IN ('a', 'b')),
    image_version INTEGER NOT NULL CHECK (image_version >= 0),
    checks        TEXT    NOT NULL,
    uptime_secs   INTEGER NOT NULL CHECK (uptime_secs >= 0),
    last_error    TEXT,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (device_id, report_id)
) STRICT;
CREATE INDEX reports_received_at ON reports (received_at);

CREATE TABLE device_certs (
    serial     TEXT    PRIMARY KEY,
    device_id  INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX device_certs_device ON device_certs (device_id);
