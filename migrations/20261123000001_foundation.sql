-- drfleet metadata schema, v1.
-- Every tenant-owned row carries organization_id; every statement that changes such rows
-- filters on it.

-- Named table sets. organization_id NULL = a tier every organization may use.
-- The built-in tier `full` (all_tables) = every base table of DR_TENANT_SCHEMA that has the
-- tenant column, found from the catalog at run time.
CREATE TABLE pf_backup_tiers (
    id              uuid PRIMARY KEY,
    organization_id uuid,
    name            text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    all_tables      boolean NOT NULL DEFAULT false,
    tables          text[] NOT NULL DEFAULT '{}',
    description     text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (all_tables OR cardinality(tables) > 0)
);
CREATE UNIQUE INDEX pf_backup_tiers_name
    ON pf_backup_tiers (COALESCE(organization_id, '00000000-0000-0000-0000-000000000000'::uuid), name);
INSERT INTO pf_backup_tiers (id, organization_id, name, all_tables, description)
VALUES ('00000000-0000-0000-0000-00000000f011', NULL, 'full', true,
        'every base table of the tenant schema that has the tenant column');

-- Per-tenant policies evaluated by the scheduler.
CREATE TABLE pf_backup_policies (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name            text NOT NULL,
    tier            text NOT NULL,
    schedule        text NOT NULL,          -- cron expression, UTC
    retention_count integer CHECK (retention_count IS NULL OR retention_count > 0),
    retention_days  integer CHECK (retention_days IS NULL OR retention_days > 0),
    rpo_seconds     bigint CHECK (rpo_seconds IS NULL OR rpo_seconds > 0),
    rto_seconds     bigint CHECK (rto_seconds IS NULL OR rto_seconds > 0),
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

-- One row per backup: started -> completed | failed.
CREATE TABLE pf_backup_records (
    id                uuid PRIMARY KEY,
    organization_id   uuid NOT NULL,
    command_id        uuid NOT NULL,
    tier              text NOT NULL,
    policy_id         text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('started', 'completed', 'failed')),
    key_id            text,
    object_key        text,
    manifest_key      text,
    manifest          jsonb,
    byte_size         bigint,
    checksum_sha256   text,
    row_count         bigint,
    table_count       integer,
    snapshot_at       timestamptz,
    started_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    duration_ms       bigint,
    error_code        text,
    last_verified_at  timestamptz,
    verify_status     text CHECK (verify_status IN ('ok', 'failed')),
    verify_error_code text
);
CREATE INDEX pf_backup_records_org ON pf_backup_records (organization_id, status, completed_at DESC);

CREATE TABLE pf_restore_jobs (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    command_id       uuid NOT NULL,
    backup_record_id uuid NOT NULL,
    mode             text NOT NULL CHECK (mode IN ('staging', 'promote')),
    target           text NOT NULL DEFAULT '',
    operator         text NOT NULL,
    status           text NOT NULL CHECK (status IN ('initiated', 'completed', 'failed')),
    staging_schema   text,
    checks           jsonb NOT NULL DEFAULT '[]',
    row_count        bigint,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    error_code       text
);
CREATE INDEX pf_restore_jobs_org ON pf_restore_jobs (organization_id, started_at DESC);

CREATE TABLE pf_dr_drill_reports (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    command_id       uuid NOT NULL,
    backup_record_id uuid,
    tier             text NOT NULL DEFAULT '',
    passed           boolean,
    measured_rto_ms  bigint,
    measured_rpo_ms  bigint,
    rto_objective_ms bigint,
    rpo_objective_ms bigint,
    checks           jsonb NOT NULL DEFAULT '[]',
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    error_code       text
);
CREATE INDEX pf_dr_drill_reports_org ON pf_dr_drill_reports (organization_id, started_at DESC);

-- Tamper-evident audit log: one hash chain per organization (chain_org; the nil UUID for
-- events whose organization could not be read). hash = sha256(prev_hash || canonical event).
CREATE TABLE pf_audit_events (
    seq             bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    event_type      text NOT NULL,
    organization_id uuid,
    chain_org       uuid NOT NULL,
    chain_seq       bigint NOT NULL,
    occurred_at     timestamptz NOT NULL,
    causation_id    text NOT NULL DEFAULT '',
    correlation_id  text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL,
    canonical       bytea NOT NULL,
    prev_hash       bytea NOT NULL,
    hash            bytea NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain_org, chain_seq)
);
CREATE INDEX pf_audit_events_org ON pf_audit_events (organization_id, occurred_at);

-- Command dedup: one row per command_id ever seen with a readable id, written in the same
-- transaction as the command's effect (its job, or its rejection event).
CREATE TABLE pf_commands (
    command_id      uuid PRIMARY KEY,
    organization_id uuid,
    kind            text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
    reason_code     text,
    job_id          uuid,
    received_at     timestamptz NOT NULL DEFAULT now()
);

-- Durable jobs. A delivery is acked once its job row is committed; workers claim jobs with
-- FOR UPDATE SKIP LOCKED, hold a lease they renew by heartbeat, and a job whose lease ran out
-- (worker killed) is claimed again by another worker.
CREATE TABLE pf_jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('backup', 'restore', 'drill', 'verify')),
    organization_id  uuid NOT NULL,
    command_id       uuid NOT NULL UNIQUE,
    correlation_id   text NOT NULL DEFAULT '',
    actor            text NOT NULL DEFAULT '',
    spec             jsonb NOT NULL,
    -- Jobs sharing a key never run at once (e.g. one backup per tenant and tier).
    concurrency_key  text NOT NULL,
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    not_before       timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    error_code       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX pf_jobs_claimable ON pf_jobs (kind, created_at) WHERE state IN ('queued', 'running');
CREATE UNIQUE INDEX pf_jobs_one_running ON pf_jobs (concurrency_key) WHERE state = 'running';

-- Transactional outbox: events are written here in the same transaction as the state change
-- they report, then relayed to dr.events with publisher confirms and deleted.
CREATE TABLE pf_outbox (
    seq         bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    routing_key text NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Head (last position and hash) of each audit chain, updated with every append, so that
-- deleting the newest rows is detected.
CREATE TABLE pf_audit_heads (
    chain_org uuid PRIMARY KEY,
    chain_seq bigint NOT NULL,
    hash      bytea NOT NULL
);
