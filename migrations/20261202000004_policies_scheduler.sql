-- Policies as the scheduler reads them (issue #10), the slots it published, open alerts and
-- the verify rotation.

-- Retention rules replace retention_count/retention_days (keep_last/keep_within).
ALTER TABLE pf_backup_policies
    ADD COLUMN timezone             text NOT NULL DEFAULT 'UTC',
    ADD COLUMN keep_last            integer CHECK (keep_last IS NULL OR keep_last > 0),
    ADD COLUMN keep_daily           integer CHECK (keep_daily IS NULL OR keep_daily > 0),
    ADD COLUMN keep_weekly          integer CHECK (keep_weekly IS NULL OR keep_weekly > 0),
    ADD COLUMN keep_monthly         integer CHECK (keep_monthly IS NULL OR keep_monthly > 0),
    ADD COLUMN keep_yearly          integer CHECK (keep_yearly IS NULL OR keep_yearly > 0),
    ADD COLUMN keep_within_seconds  bigint CHECK (keep_within_seconds IS NULL OR keep_within_seconds > 0),
    ADD COLUMN verify_cycle_seconds bigint CHECK (verify_cycle_seconds IS NULL OR verify_cycle_seconds > 0),
    ADD COLUMN drill_schedule       text,
    -- The organization as it travels on the wire (the tenant key's text form); the scheduler
    -- publishes commands with it.
    ADD COLUMN tenant_key           text,
    -- The next slot to fire (NULL when disabled); the scheduler's due scan reads this.
    ADD COLUMN next_due_at          timestamptz,
    -- The last slot a command was published for.
    ADD COLUMN last_slot_at         timestamptz,
    -- Who last changed the policy (token sub).
    ADD COLUMN updated_by           text NOT NULL DEFAULT '';
UPDATE pf_backup_policies
   SET keep_last = retention_count,
       keep_within_seconds = retention_days::bigint * 86400,
       tenant_key = organization_id::text;
ALTER TABLE pf_backup_policies
    DROP COLUMN retention_count,
    DROP COLUMN retention_days,
    ALTER COLUMN tenant_key SET NOT NULL;
CREATE INDEX pf_backup_policies_due ON pf_backup_policies (next_due_at) WHERE enabled;

ALTER TABLE pf_jobs DROP CONSTRAINT pf_jobs_kind_check;
ALTER TABLE pf_jobs ADD CONSTRAINT pf_jobs_kind_check
    CHECK (kind IN ('backup', 'restore', 'drill', 'verify', 'policy'));

-- One row per published slot: the unique key is what makes a slot fire once, whatever the
-- number of schedulers. command_id = UUIDv5(policy_id, kind, slot_at[, backup]).
CREATE TABLE pf_schedule_slots (
    command_id       uuid PRIMARY KEY,
    policy_id        uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('backup', 'verify', 'drill')),
    slot_at          timestamptz NOT NULL,
    organization_id  uuid NOT NULL,
    -- For verify slots: the backup verified.
    backup_record_id uuid,
    published_at     timestamptz NOT NULL DEFAULT now(),
    -- Set when the job the command caused finished (or the command was refused): frees
    -- in-flight capacity.
    settled_at       timestamptz,
    UNIQUE NULLS NOT DISTINCT (policy_id, kind, slot_at, backup_record_id)
);
CREATE INDEX pf_schedule_slots_in_flight ON pf_schedule_slots (kind, published_at)
    WHERE settled_at IS NULL;

-- Verify rotation: when each retained backup of a policy with a verify cycle is next due.
-- Kept across restarts, so a restarted scheduler continues the cycle instead of starting over.
CREATE TABLE pf_verify_rotation (
    backup_record_id  uuid PRIMARY KEY,
    policy_id         uuid NOT NULL,
    due_at            timestamptz NOT NULL,
    last_scheduled_at timestamptz
);
CREATE INDEX pf_verify_rotation_due ON pf_verify_rotation (due_at);

CREATE INDEX pf_backup_records_policy ON pf_backup_records (policy_id, started_at DESC);
-- The scheduler settles a slot whose command was refused.
CREATE INDEX pf_rejected_messages_command ON pf_rejected_messages (command_id);

-- Alerts: one row per episode; at most one open episode per (policy, kind).
CREATE TABLE pf_alerts (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL,
    kind             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('warning', 'critical')),
    policy_id        uuid NOT NULL,
    backup_record_id uuid,
    code             text NOT NULL DEFAULT '',
    raised_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz
);
CREATE UNIQUE INDEX pf_alerts_one_open ON pf_alerts (policy_id, kind) WHERE resolved_at IS NULL;
CREATE INDEX pf_alerts_org ON pf_alerts (organization_id, raised_at DESC);

-- Outbox rows may also carry commands (the scheduler's): which exchange and message type.
ALTER TABLE pf_outbox
    ADD COLUMN exchange     text NOT NULL DEFAULT 'dr.events',
    ADD COLUMN message_type text NOT NULL DEFAULT 'dr.v1.EventEnvelope';
