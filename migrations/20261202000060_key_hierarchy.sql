-- The key hierarchy (docs/architecture.md "Keys"): master key (DR_MASTER_KEY, never stored)
-- → one key-encryption key per tenant (random, stored here only wrapped by a master key)
-- → one data key per artifact (in the artifact header, wrapped by the tenant key).

CREATE TABLE pf_tenant_keys (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    -- active: wraps the organization's new backups; retired: kept to open older artifacts.
    state           text NOT NULL CHECK (state IN ('active', 'retired')),
    -- AES-256-GCM sealed key: 32 bytes ciphertext || 16 bytes tag, under master_key_id.
    wrapped_key     bytea NOT NULL CHECK (length(wrapped_key) = 48),
    wrap_nonce      bytea NOT NULL CHECK (length(wrap_nonce) = 12),
    master_key_id   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    rewrapped_at    timestamptz
);
CREATE UNIQUE INDEX pf_tenant_keys_one_active ON pf_tenant_keys (organization_id)
    WHERE state = 'active';
CREATE INDEX pf_tenant_keys_org ON pf_tenant_keys (organization_id);
CREATE INDEX pf_tenant_keys_master ON pf_tenant_keys (master_key_id);

-- Ids (never material) of destroyed tenant keys: a restore of an artifact wrapped by one says
-- KEY_DESTROYED instead of "unknown key".
CREATE TABLE pf_destroyed_tenant_keys (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    shred_id        uuid NOT NULL,
    destroyed_at    timestamptz NOT NULL DEFAULT now()
);

-- Shred requests (two-person rule): one row per ShredCommand accepted.
CREATE TABLE pf_shred_requests (
    command_id      uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    subject         text NOT NULL,
    reason          text NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when a shred consumed the request.
    shred_id        uuid
);
CREATE INDEX pf_shred_requests_org ON pf_shred_requests (organization_id, requested_at DESC);

-- Performed shreds: what the shred certificate reports.
CREATE TABLE pf_shreds (
    id                  uuid PRIMARY KEY,
    organization_id     uuid NOT NULL,
    -- The command whose job performed it (the second requester's).
    command_id          uuid NOT NULL UNIQUE,
    -- [{subject, command_id, requested_at, reason}], oldest first.
    requesters          jsonb NOT NULL,
    key_ids             jsonb NOT NULL,
    records_affected    integer NOT NULL,
    objects_deleted     integer,
    objects_remaining   integer,
    performed_at        timestamptz NOT NULL DEFAULT now(),
    -- The audit event id of its `tenant_shredded` (the certificate's chain head is the audit
    -- chain's hash at that event).
    event_id            uuid
);
CREATE INDEX pf_shreds_org ON pf_shreds (organization_id, performed_at DESC);

ALTER TABLE pf_backup_records ADD COLUMN shredded_at timestamptz;

ALTER TABLE pf_jobs DROP CONSTRAINT pf_jobs_kind_check;
ALTER TABLE pf_jobs ADD CONSTRAINT pf_jobs_kind_check
    CHECK (kind IN ('backup', 'restore', 'drill', 'verify', 'policy', 'retention', 'keys'));
