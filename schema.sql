-- stigmem-node schema, version 1.
-- The one schema of the node.  It is applied once to a new database (PRAGMA user_version
-- 0 -> 1); later versions add numbered migrations in stigmem_node/store/db.py.
-- Times are TEXT in RFC 3339 UTC with microseconds ("2026-11-23T02:07:58.123456Z"),
-- so that they sort as text; nonce expiry is INTEGER epoch milliseconds.

-- Node identity and settings that must survive restarts: node_id, node_url,
-- current_key_id, declaration scopes.
CREATE TABLE IF NOT EXISTS node_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- This node's Ed25519 keys.  The active key signs; retiring keys still verify until
-- retire_after; retired keys are kept for the record.  Raw 32-byte keys, base64url.
CREATE TABLE IF NOT EXISTS node_keys (
    key_id       TEXT PRIMARY KEY,
    public_key   TEXT NOT NULL UNIQUE,
    private_key  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    retire_after TEXT
);

-- Registered peers.  allowed_scopes is a sorted JSON array; declaration is the signed
-- declaration exactly as received.
CREATE TABLE IF NOT EXISTS peers (
    id                TEXT PRIMARY KEY,
    node_id           TEXT NOT NULL UNIQUE,
    node_url          TEXT NOT NULL,
    federation_pubkey TEXT NOT NULL,
    allowed_scopes    TEXT NOT NULL,
    declaration       TEXT NOT NULL,
    signed_at         TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending_approval', 'active', 'suspended', 'revoked', 'rejected')),
    reject_reason     TEXT,
    created_at        TEXT NOT NULL,
    approved_at       TEXT,
    approved_by       TEXT,
    updated_at        TEXT NOT NULL
);

-- Every key a peer may sign with.  The key of its declaration is added at registration;
-- a refreshed well-known may add a rotated one.  retire_after NULL = no end.
CREATE TABLE IF NOT EXISTS peer_keys (
    peer_id      TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    key_id       TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    added_at     TEXT NOT NULL,
    retire_after TEXT,
    PRIMARY KEY (peer_id, key_id)
);

-- Single-use peer-token nonces, kept until exp + the largest leeway any process may use
-- + a margin (epoch ms; see tokens.nonce_kept_until).
CREATE TABLE IF NOT EXISTS nonce_cache (
    nonce         TEXT PRIMARY KEY,
    peer_id       TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonce_cache_expiry ON nonce_cache (expires_at_ms);

-- Facts, append-only.  seq is the commit-ordered replication cursor.  entry is the
-- fact's pull-page entry ({"fact", "origin", "origin_sig", ...}) encoded once at write
-- time, so serving a page never re-encodes; origin_sig signs (id, cid, origin, scope
-- grant, valid_until).
CREATE TABLE IF NOT EXISTS facts (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    cid            TEXT NOT NULL,
    entity         TEXT NOT NULL,
    relation       TEXT NOT NULL,
    value_type     TEXT NOT NULL,
    value_v        TEXT NOT NULL,
    interpret_as   TEXT NOT NULL DEFAULT 'content',
    source         TEXT NOT NULL,
    timestamp      TEXT NOT NULL,
    hlc            TEXT NOT NULL,
    valid_until    TEXT,
    confidence     REAL NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    scope          TEXT NOT NULL CHECK (scope IN ('local', 'team', 'company', 'public')),
    origin_node_id TEXT NOT NULL,
    origin_sig     TEXT,
    entry          TEXT NOT NULL,
    received_from  TEXT,
    received_at    TEXT
);
CREATE INDEX IF NOT EXISTS facts_entity ON facts (entity, relation);
CREATE INDEX IF NOT EXISTS facts_cid ON facts (cid);
-- A fact's content never changes.  Only its signature (origin_sig, and the entry that
-- carries it) is renewed, when the node rotates its key.
CREATE TRIGGER IF NOT EXISTS facts_no_update BEFORE UPDATE OF seq, id, cid, entity, relation, value_type,
    value_v, interpret_as, source, timestamp, hlc, valid_until, confidence, scope, origin_node_id,
    received_from, received_at ON facts
BEGIN SELECT RAISE(ABORT, 'facts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS facts_no_delete BEFORE DELETE ON facts
BEGIN SELECT RAISE(ABORT, 'facts are append-only'); END;

-- Subscriber state per peer.
CREATE TABLE IF NOT EXISTS replication_state (
    peer_id         TEXT PRIMARY KEY REFERENCES peers(id) ON DELETE CASCADE,
    cursor          TEXT,
    last_attempt_at TEXT,
    last_success_at TEXT,
    last_error      TEXT,
    facts_ingested  INTEGER NOT NULL DEFAULT 0,
    facts_rejected  INTEGER NOT NULL DEFAULT 0
);

-- Append-only, hash-chained audit trail: hash = SHA-256(prev_hash || canonical row).
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    peer_id     TEXT,
    actor       TEXT,
    reason      TEXT,
    detail      TEXT NOT NULL,
    remote_addr TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_peer ON audit_log (peer_id, seq);
CREATE INDEX IF NOT EXISTS audit_log_event ON audit_log (event_type, seq);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts);

-- Operator API keys, stored only as HMAC-SHA256(pepper, key).  id is the public part
-- shown in the key itself and used for lookup.
CREATE TABLE IF NOT EXISTS api_keys (
    id             TEXT PRIMARY KEY,
    key_hash       TEXT NOT NULL,
    pepper_version INTEGER NOT NULL,
    permissions    TEXT NOT NULL,
    label          TEXT,
    created_at     TEXT NOT NULL,
    expires_at     TEXT,
    revoked_at     TEXT,
    last_used_at   TEXT
);
