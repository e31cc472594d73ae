-- DR drills (issue #12): what a drill report records beyond the foundation's columns, and the
-- policies' drill assertions.

ALTER TABLE pf_dr_drill_reports
    -- The job that ran the drill (pf_jobs.id).
    ADD COLUMN job_id            uuid,
    ADD COLUMN policy_id         uuid,
    -- LATEST | RANDOM_WITHIN_WINDOW | RECORD
    ADD COLUMN selection         text NOT NULL DEFAULT 'LATEST',
    -- Name of the restore target the drill restored into (DR_RESTORE_TARGETS), never a URL.
    ADD COLUMN target            text NOT NULL DEFAULT '',
    -- The scratch schema in the target, and when it was dropped (NULL while it exists).
    ADD COLUMN scratch_schema    text,
    ADD COLUMN scratch_dropped_at timestamptz,
    -- A kept scratch schema is dropped by the sweeper after this time.
    ADD COLUMN keep_until        timestamptz,
    -- Phase timings: [{"name": "fetch_sealed", "ms": 12}, ...] in the order run.
    ADD COLUMN phases            jsonb NOT NULL DEFAULT '[]',
    -- Snapshot time of the backup drilled (RPO = started_at - snapshot_at).
    ADD COLUMN snapshot_at       timestamptz,
    -- The organization as on the wire (tenant key text).
    ADD COLUMN tenant_key        text NOT NULL DEFAULT '';
-- One report per drill command, whatever the number of deliveries and attempts.
CREATE UNIQUE INDEX pf_dr_drill_reports_command ON pf_dr_drill_reports (command_id);
CREATE INDEX pf_dr_drill_reports_policy ON pf_dr_drill_reports (policy_id, started_at DESC);
CREATE INDEX pf_dr_drill_reports_scratch ON pf_dr_drill_reports (keep_until)
    WHERE scratch_schema IS NOT NULL AND scratch_dropped_at IS NULL;

-- Named SQL assertions run against a drill's scratch copy: [{"name": "...", "sql": "..."}].
ALTER TABLE pf_backup_policies
    ADD COLUMN drill_assertions jsonb NOT NULL DEFAULT '[]';
