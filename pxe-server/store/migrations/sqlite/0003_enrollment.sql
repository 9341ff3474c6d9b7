-- tugboot fleet store, SQLite schema v3: enrollment lives in the store (shared by every server
-- on one database), and its rules are constraints, not checks in the code alone.
--
-- enrollment_tokens: one-time tokens, stored as the SHA-256 (hex) of the token text, with an
--   expiry and an optional binding to the MAC and/or serial the enrolling device must name.
-- enrollments: one row per certificate issued by enrollment. A token is used by at most one
--   enrollment (UNIQUE token_hash): single use by constraint. A machine has at most one active
--   enrollment (partial UNIQUE index): one identity, one enrolled certificate, whichever server
--   or request wins. A key is certified by at most one active enrollment. An operator's
--   approval of a machine with no unrevoked certificate ends its enrollment (store code), which
--   is what a second enrollment needs.
-- enrollment_requests: machines that asked to enroll without a token and wait for approval;
--   what the cap on pending requests counts.

CREATE TABLE enrollment_tokens (
    hash         TEXT    PRIMARY KEY CHECK (length(hash) = 64),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL CHECK (expires_at > created_at),
    bound_mac    TEXT,
    bound_serial TEXT,
    used_at      INTEGER,
    used_by      INTEGER REFERENCES machines (id) ON DELETE SET NULL,
    CHECK (used_by IS NULL OR used_at IS NOT NULL)
) STRICT;

CREATE TABLE enrollments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   INTEGER NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    cert_serial TEXT    NOT NULL UNIQUE REFERENCES device_certs (serial) ON DELETE CASCADE,
    key_sha256  TEXT    CHECK (key_sha256 IS NULL OR length(key_sha256) = 64),
    token_hash  TEXT    UNIQUE REFERENCES enrollment_tokens (hash),
    cert_pem    TEXT,
    enrolled_at INTEGER NOT NULL,
    active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1))
) STRICT;
CREATE UNIQUE INDEX enrollments_one_active ON enrollments (device_id) WHERE active = 1;
CREATE UNIQUE INDEX enrollments_key_active ON enrollments (key_sha256) WHERE active = 1;
CREATE INDEX enrollments_device ON enrollments (device_id);

CREATE TABLE enrollment_requests (
    machine_id INTEGER PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    key_sha256 TEXT    NOT NULL CHECK (length(key_sha256) = 64),
    first_at   INTEGER NOT NULL
) STRICT;

-- Devices enrolled before v3: the newest unrevoked certificate of each is its enrollment.
INSERT INTO enrollments (device_id, cert_serial, enrolled_at, active)
    SELECT c.device_id, c.serial, c.issued_at, 1 FROM device_certs c
    WHERE c.revoked_at IS NULL AND c.serial = (
        SELECT c2.serial FROM device_certs c2 WHERE c2.device_id = c.device_id
        AND c2.revoked_at IS NULL ORDER BY c2.issued_at DESC, c2.serial DESC LIMIT 1);
