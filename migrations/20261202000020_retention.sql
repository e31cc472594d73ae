-- Retention (issue #11): GFS sweeps per policy, legal holds, crash-safe deletion.

-- A swept backup goes completed → expiring (decision recorded, objects being deleted) →
-- deleted (objects gone; the row stays as evidence).
ALTER TABLE pf_backup_records DROP CONSTRAINT pf_backup_records_status_check;
ALTER TABLE pf_backup_records ADD CONSTRAINT pf_backup_records_status_check
    CHECK (status IN ('started', 'completed', 'failed', 'expiring', 'deleted'));
ALTER TABLE pf_backup_records
    -- When the sweep decided to expire it, and why (e.g. `not kept by keep_daily 7`).
    ADD COLUMN expiring_at       timestamptz,
    ADD COLUMN retention_reason  text,
    -- The policy whose sweep expired it.
    ADD COLUMN expired_by_policy uuid,
    ADD COLUMN deleted_at        timestamptz,
    -- Legal hold: never expired while set. held_reason/held_by/held_at describe the current
    -- hold (cleared on release; the events keep the history).
    ADD COLUMN legal_hold        boolean NOT NULL DEFAULT false,
    ADD COLUMN held_reason       text,
    ADD COLUMN held_by           text,
    ADD COLUMN held_at           timestamptz,
    -- A failed backup's leftover objects (every attempt's) were removed by a sweep after the
    -- grace period (DR_RETENTION_ORPHAN_GRACE).
    ADD COLUMN leftovers_removed_at timestamptz,
    ADD CONSTRAINT pf_backup_records_deleted_at CHECK ((status = 'deleted') = (deleted_at IS NOT NULL));
-- What a rerun finishes first.
CREATE INDEX pf_backup_records_expiring ON pf_backup_records (expired_by_policy)
    WHERE status = 'expiring';

ALTER TABLE pf_jobs DROP CONSTRAINT pf_jobs_kind_check;
ALTER TABLE pf_jobs ADD CONSTRAINT pf_jobs_kind_check
    CHECK (kind IN ('backup', 'restore', 'drill', 'verify', 'policy', 'retention'));

ALTER TABLE pf_schedule_slots DROP CONSTRAINT pf_schedule_slots_kind_check;
ALTER TABLE pf_schedule_slots ADD CONSTRAINT pf_schedule_slots_kind_check
    CHECK (kind IN ('backup', 'verify', 'drill', 'retention'));
