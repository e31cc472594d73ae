-- Operability (issue #14): trace context carried with jobs and outbox rows, job progress.

-- W3C trace context (`traceparent`, and `tracestate` after a newline when present) of the
-- command that created the job / of the span that wrote the outbox row; NULL when tracing
-- was off.
ALTER TABLE pf_jobs ADD COLUMN trace_context text;
ALTER TABLE pf_outbox ADD COLUMN trace_context text;

-- Progress of a running job, written at most every 2 s by the job itself.
ALTER TABLE pf_jobs
    ADD COLUMN progress_rows  bigint,
    ADD COLUMN progress_bytes bigint,
    ADD COLUMN progress_table text,
    ADD COLUMN progress_at    timestamptz;
