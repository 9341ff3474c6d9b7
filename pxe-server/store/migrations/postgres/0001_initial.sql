-- tugboot fleet store, PostgreSQL schema v1. Timestamps are unix seconds (BIGINT).
-- Same tables, columns and constraints as migrations/sqlite/0001_initial.sql; only the types differ.

CREATE TABLE machines (
    id                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mac               TEXT    NOT NULL UNIQUE,
    smbios_uuid       TEXT,
    serial            TEXT,
    board             TEXT,
    profile           TEXT,
    labels            TEXT    NOT NULL DEFAULT '{}',
    state             TEXT    NOT NULL DEFAULT 'unknown'
                              CHECK (state IN ('unknown', 'adopted', 'approved', 'revoked')),
    first_seen        BIGINT  NOT NULL,
    last_seen         BIGINT  NOT NULL,
    last_booted_image TEXT
);
CREATE INDEX machines_serial ON machines (serial);
CREATE INDEX machines_smbios_uuid ON machines (smbios_uuid);

CREATE TABLE lease_pools (
    name       TEXT   PRIMARY KEY,
    first_addr BIGINT NOT NULL,
    last_addr  BIGINT NOT NULL,
    CHECK (first_addr <= last_addr)
);

-- One row per address of every pool, created with the pool: allocation is a single UPDATE of
-- one row (claimed with FOR UPDATE SKIP LOCKED), and (pool, addr) being the primary key is what
-- makes a double hand-out impossible even with several tugboot servers on one database.
CREATE TABLE leases (
    pool       TEXT   NOT NULL REFERENCES lease_pools (name) ON DELETE CASCADE,
    addr       BIGINT NOT NULL,
    client_id  BYTEA,
    mac        TEXT,
    hostname   TEXT,
    state      TEXT   NOT NULL
                      CHECK (state IN ('free', 'offered', 'bound', 'released', 'declined')),
    expires_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (pool, addr)
);
-- A client holds at most one address per pool (and keeps its affinity after a release).
CREATE UNIQUE INDEX leases_client ON leases (pool, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX leases_expiry ON leases (pool, expires_at);
-- Never-used addresses, in order: the common allocation is one index probe, not a sort.
CREATE INDEX leases_unused ON leases (pool, addr) WHERE state = 'free' AND client_id IS NULL;

CREATE TABLE images (
    name            TEXT    NOT NULL,
    version         BIGINT  NOT NULL CHECK (version >= 0),
    manifest_digest TEXT    NOT NULL,
    manifest        BYTEA   NOT NULL,
    published       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE rollouts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_name     TEXT   NOT NULL,
    image_version  BIGINT NOT NULL,
    group_selector TEXT   NOT NULL,
    stages         TEXT   NOT NULL,
    thresholds     TEXT   NOT NULL,
    state          TEXT   NOT NULL
                          CHECK (state IN ('pending', 'running', 'paused', 'completed', 'aborted')),
    current_stage  BIGINT NOT NULL DEFAULT 0 CHECK (current_stage >= 0),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    FOREIGN KEY (image_name, image_version) REFERENCES images (name, version)
);

CREATE TABLE reports (
    device_id     BIGINT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    report_id     TEXT   NOT NULL,
    boot_id       TEXT   NOT NULL,
    slot          TEXT   NOT NULL CHECK (slot IN ('a', 'b')),
    image_version BIGINT NOT NULL CHECK (image_version >= 0),
    checks        TEXT   NOT NULL,
    uptime_secs   BIGINT NOT NULL CHECK (uptime_secs >= 0),
    last_error    TEXT,
    received_at   BIGINT NOT NULL,
    PRIMARY KEY (device_id, report_id)
);
CREATE INDEX reports_received_at ON reports (received_at);

CREATE TABLE device_certs (
    serial     TEXT   PRIMARY KEY,
    device_id  BIGINT NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    not_after  BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX device_certs_device ON device_certs (device_id);
