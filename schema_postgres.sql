-- stigmem-node schema for PostgreSQL, version 1: the tables, columns, keys and rules of
-- schema.sql (the SQLite schema), which tests/test_schema_parity.py checks column by
-- column.  Applied once to an empty database by stigmem_node/store/postgres.py (which
-- keeps the version in stigmem_schema), then the same numbered migrations as SQLite.
-- Types: TEXT COLLATE "C" as in SQLite; INTEGER that can grow past 2^31 is BIGINT; REAL is DOUBLE
-- PRECISION (SQLite's REAL is 8 bytes).

CREATE TABLE node_meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);

-- The private keys never leave this table's owner: no grant to PUBLIC (docs/security.md).
CREATE TABLE node_keys (
    key_id       TEXT COLLATE "C" PRIMARY KEY,
    public_key   TEXT COLLATE "C" NOT NULL UNIQUE,
    private_key  TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    status       TEXT COLLATE "C" NOT NULL CHECK (status IN ('active', 'retiring', 'retired')),
    retire_after TEXT COLLATE "C"
);
REVOKE ALL ON node_keys FROM PUBLIC;

CREATE TABLE peers (
    id                TEXT COLLATE "C" PRIMARY KEY,
    node_id           TEXT COLLATE "C" NOT NULL UNIQUE,
    node_url          TEXT COLLATE "C" NOT NULL,
    federation_pubkey TEXT COLLATE "C" NOT NULL,
    allowed_scopes    TEXT COLLATE "C" NOT NULL,
    declaration       TEXT COLLATE "C" NOT NULL,
    signed_at         TEXT COLLATE "C" NOT NULL,
    status            TEXT COLLATE "C" NOT NULL CHECK (status IN ('pending_approval', 'active', 'suspended', 'revoked', 'rejected')),
    reject_reason     TEXT COLLATE "C",
    created_at        TEXT COLLATE "C" NOT NULL,
    approved_at       TEXT COLLATE "C",
    approved_by       TEXT COLLATE "C",
    updated_at        TEXT COLLATE "C" NOT NULL
);

CREATE TABLE peer_keys (
    peer_id      TEXT COLLATE "C" NOT NULL REFERENCES peers(id) ON DELETE CASCADE,
    key_id       TEXT COLLATE "C" NOT NULL,
    public_key   TEXT COLLATE "C" NOT NULL,
    added_at     TEXT COLLATE "C" NOT NULL,
    retire_after TEXT COLLATE "C",
    PRIMARY KEY (peer_id, key_id)
);

CREATE TABLE nonce_cache (
    nonce         TEXT COLLATE "C" PRIMARY KEY,
    peer_id       TEXT COLLATE "C" NOT NULL,
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
    id             TEXT COLLATE "C" NOT NULL UNIQUE,
    cid            TEXT COLLATE "C" NOT NULL,
    entity         TEXT COLLATE "C" NOT NULL,
    relation       TEXT COLLATE "C" NOT NULL,
    value_type     TEXT COLLATE "C" NOT NULL,
    value_v        TEXT COLLATE "C" NOT NULL,
    interpret_as   TEXT COLLATE "C" NOT NULL DEFAULT 'content',
    source         TEXT COLLATE "C" NOT NULL,
    timestamp      TEXT COLLATE "C" NOT NULL,
    hlc            TEXT COLLATE "C" NOT NULL,
    valid_until    TEXT COLLATE "C",
    confidence     DOUBLE PRECISION NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    scope          TEXT COLLATE "C" NOT NULL CHECK (scope IN ('local', 'team', 'company', 'public')),
    origin_node_id TEXT COLLATE "C" NOT NULL,
    origin_sig     TEXT COLLATE "C",
    entry          TEXT COLLATE "C" NOT NULL,
    received_from  TEXT COLLATE "C",
    received_at    TEXT COLLATE "C"
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
    peer_id         TEXT COLLATE "C" PRIMARY KEY REFERENCES peers(id) ON DELETE CASCADE,
    cursor          TEXT COLLATE "C",
    last_attempt_at TEXT COLLATE "C",
    last_success_at TEXT COLLATE "C",
    last_error      TEXT COLLATE "C",
    facts_ingested  BIGINT NOT NULL DEFAULT 0,
    facts_rejected  BIGINT NOT NULL DEFAULT 0
);

CREATE SEQUENCE audit_log_seq AS BIGINT;
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    ts          TEXT COLLATE "C" NOT NULL,
    event_type  TEXT COLLATE "C" NOT NULL,
    peer_id     TEXT COLLATE "C",
    actor       TEXT COLLATE "C",
    reason      TEXT COLLATE "C",
    detail      TEXT COLLATE "C" NOT NULL,
    remote_addr TEXT COLLATE "C",
    prev_hash   TEXT COLLATE "C" NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL
);
ALTER SEQUENCE audit_log_seq OWNED BY audit_log.seq;
CREATE INDEX audit_log_peer ON audit_log (peer_id, seq);
CREATE INDEX audit_log_event ON audit_log (event_type, seq);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE TRIGGER audit_log_seq BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION stigmem_ordered_seq('8386093285', 'audit_log_seq');

CREATE TABLE api_keys (
    id             TEXT COLLATE "C" PRIMARY KEY,
    key_hash       TEXT COLLATE "C" NOT NULL,
    pepper_version INTEGER NOT NULL,
    permissions    TEXT COLLATE "C" NOT NULL,
    label          TEXT COLLATE "C",
    created_at     TEXT COLLATE "C" NOT NULL,
    expires_at     TEXT COLLATE "C",
    revoked_at     TEXT COLLATE "C",
    last_used_at   TEXT COLLATE "C"
);
REVOKE ALL ON api_keys FROM PUBLIC;
