-- stigmem-node schema for PostgreSQL, version 1: the tables, columns, keys and rules of
-- schema.sql (the SQLite schema), which tests/test_schema_parity.py checks column by
-- column.  Applied once to an empty database by stigmem_node/store/postgres.py (which
-- keeps the version in stigmem_schema), then the same numbered migrations as SQLite.
-- Types: TEXT as in SQLite; INTEGER that can grow past 2^31 is BIGINT; REAL is DOUBLE
-- PRECISION (SQLite's REAL is 8 bytes).

CREATE TABLE node_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The private keys never leave this table's owner: no grant to PUBLIC (docs/security.md).
CREATE TABLE node_keys (
    key_id       TEXT PRIMARY KEY,
    public_key   TEXT NOT NULL UNIQUE,
    private_key  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    retire_after TEXT
);
REVOKE ALL ON node_keys FROM PUBLIC;

CREATE TABLE peers (
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

CREATE TABLE peer_keys (
    peer_id      TEXT NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    key_id       TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    added_at     TEXT NOT NULL,
    retire_after TEXT,
    PRIMARY KEY (peer_id, key_id)
);

CREATE TABLE nonce_cache (
    nonce         TEXT PRIMARY KEY,
    peer_id       TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX nonce_cache_expiry ON nonce_cache (expires_at_ms);

-- seq of facts and audit rows: handed out in commit order.  A sequence alone is not:
-- a transaction that took seq 5 may commit after one that took seq 6, and a reader
-- between the two commits would move its cursor past 5 for ever.  So the trigger below
-- takes the node-wide write lock (an advisory lock held until commit, the same one every
-- write transaction takes at BEGIN) before it draws the next value: values are drawn by
-- one transaction at a time, and each commits before the next draws.  An explicit seq
-- (stigmem-node migrate copying a SQLite node) is kept.
CREATE FUNCTION stigmem_ordered_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(TG_ARGV[0]::bigint);
    IF NEW.seq IS NULL THEN
        NEW.seq := nextval(TG_ARGV[1]::regclass);
    END IF;
    RETURN NEW;
END
$$;

CREATE SEQUENCE facts_seq AS BIGINT;
CREATE TABLE facts (
    seq            BIGINT PRIMARY KEY,
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
    confidence     DOUBLE PRECISION NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    scope          TEXT NOT NULL CHECK (scope IN ('local', 'team', 'company', 'public')),
    origin_node_id TEXT NOT NULL,
    origin_sig     TEXT,
    entry          TEXT NOT NULL,
    received_from  TEXT,
    received_at    TEXT
);
ALTER SEQUENCE facts_seq OWNED BY facts.seq;
CREATE INDEX facts_entity ON facts (entity, relation);
CREATE INDEX facts_cid ON facts (cid);
CREATE TRIGGER facts_seq BEFORE INSERT ON facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_ordered_seq('8386093285', 'facts_seq');

-- A fact's content never changes.  Only its signature (origin_sig, and the entry that
-- carries it) is renewed, when the node rotates its key.
CREATE FUNCTION stigmem_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only', TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER facts_no_update BEFORE UPDATE OF seq, id, cid, entity, relation, value_type,
    value_v, interpret_as, source, timestamp, hlc, valid_until, confidence, scope, origin_node_id,
    received_from, received_at ON facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER facts_no_delete BEFORE DELETE ON facts
    FOR EACH ROW EXECUTE FUNCTION stigmem_append_only();
CREATE TRIGGER facts_no_truncate BEFORE TRUNCATE ON facts
    FOR EACH STATEMENT EXECUTE FUNCTION stigmem_append_only();

CREATE TABLE replication_state (
    peer_id         TEXT PRIMARY KEY REFERENCES peers(id) ON DELETE CASCADE,
    cursor          TEXT,
    last_attempt_at TEXT,
    last_success_at TEXT,
    last_error      TEXT,
    facts_ingested  BIGINT NOT NULL DEFAULT 0,
    facts_rejected  BIGINT NOT NULL DEFAULT 0
);

CREATE SEQUENCE audit_log_seq AS BIGINT;
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
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
ALTER SEQUENCE audit_log_seq OWNED BY audit_log.seq;
CREATE INDEX audit_log_peer ON audit_log (peer_id, seq);
CREATE INDEX audit_log_event ON audit_log (event_type, seq);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE TRIGGER audit_log_seq BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION stigmem_ordered_seq('8386093285', 'audit_log_seq');

CREATE TABLE api_keys (
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
REVOKE ALL ON api_keys FROM PUBLIC;
