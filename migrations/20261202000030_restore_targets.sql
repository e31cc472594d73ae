-- Restores into named targets (DR_RESTORE_TARGETS): pf_restore_jobs.target (already present)
-- names the database written; `timings` holds the staging engine's phase timings in ms
-- ({fetch_ms, schema_ms, load_ms, checks_ms, constraints_ms, promote_ms}), and `recreated`
-- whether the tables were created from the manifest because the target lacked them.
ALTER TABLE pf_restore_jobs
    ADD COLUMN timings   jsonb,
    ADD COLUMN recreated boolean NOT NULL DEFAULT false;
