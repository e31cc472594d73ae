-- Command dedup that an unauthenticated message cannot squat (issue #18, security).
--
-- pf_commands now records only commands that passed authentication and authorization, with
-- a fingerprint of what they ask for: sha256 over kind, organization and the canonically
-- encoded body (not the token, issued_at or correlation id). A later delivery with the same
-- command_id and the same fingerprint is a duplicate (no second job, no second event); one
-- with another fingerprint is refused with CONFLICT and a command_rejected event.
ALTER TABLE pf_commands ADD COLUMN fingerprint bytea
    CHECK (fingerprint IS NULL OR length(fingerprint) = 32);

-- Rows written before this migration have no fingerprint. Accepted ones stay (a redelivery
-- of such a command is still a duplicate); rejections that need no authentication to cause
-- — everything but NOT_FOUND and CONFLICT, which admission decides after authentication — may
-- have come from a forged message, so they no longer hold their command_id.
DELETE FROM pf_commands
 WHERE outcome = 'rejected'
   AND reason_code IN ('MALFORMED', 'UNAUTHENTICATED', 'FORBIDDEN', 'INVALID_ARGUMENT');

-- Rejections of messages that were not (or not yet) authenticated — malformed, invalid,
-- unauthenticated, forbidden — and CONFLICT refusals of a reused command_id: deduplicated by
-- the message itself, sha256(routing key, 0x00, body), so a redelivery causes no second
-- command_rejected event, while the command_id stays free for the authentic command.
CREATE TABLE pf_rejected_messages (
    digest          bytea PRIMARY KEY CHECK (length(digest) = 32),
    -- As read from the message: unauthenticated, for investigation only.
    command_id      uuid,
    organization_id uuid,
    kind            text NOT NULL,
    reason_code     text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pf_rejected_messages_received ON pf_rejected_messages (received_at);
