-- Issue 18: backups of empty or suddenly shrunk tenants, and STAGING schemas that expire.

-- A backup with no row in any table still completes, flagged `empty`. previous_row_count is
-- the row count of the previous completed backup of the same policy (of the same tier when
-- there is no policy); warning_code is NULL, 'ROW_COUNT_DROP' or 'EMPTY_BACKUP'.
ALTER TABLE pf_backup_records
    ADD COLUMN empty              boolean NOT NULL DEFAULT false,
    ADD COLUMN previous_row_count bigint,
    ADD COLUMN warning_code       text;

-- A kept STAGING schema lives until staging_expires_at (completion + DR_STAGING_TTL; NULL on
-- jobs from before this change, which expire at finished_at + DR_STAGING_TTL). Once dropped
-- by the sweep or a discard command, staging_dropped_at and staging_drop_reason say so;
-- staging_schema keeps the name for the record.
ALTER TABLE pf_restore_jobs
    ADD COLUMN staging_expires_at  timestamptz,
    ADD COLUMN staging_dropped_at  timestamptz,
    ADD COLUMN staging_drop_reason text CHECK (staging_drop_reason IN ('expired', 'discarded')),
    ADD CONSTRAINT pf_restore_jobs_staging_drop CHECK ((staging_dropped_at IS NULL) = (staging_drop_reason IS NULL));

-- What the sweep scans: kept STAGING schemas only.
CREATE INDEX pf_restore_jobs_kept_staging ON pf_restore_jobs (finished_at)
    WHERE status = 'completed' AND mode = 'staging' AND staging_schema IS NOT NULL
      AND staging_dropped_at IS NULL;
