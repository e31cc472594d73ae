-- How long a PROMOTE held the live tables' locks (NULL for STAGING and for restores before
-- this column existed).
ALTER TABLE pf_restore_jobs ADD COLUMN lock_ms bigint;
