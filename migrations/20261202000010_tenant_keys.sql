-- Tenant keys of any type (issue #19): uuid, bigint/integer or text. Metadata tables keep
-- keying a tenant by its organization id (uuid): the key itself when it is a UUID, otherwise
-- UUIDv5 of the key's text (drfleet_protocol::tenant). The key's text is kept beside it where
-- a job needs it to select the tenant's rows; NULL (rows from before) = organization_id::text.
ALTER TABLE pf_jobs ADD COLUMN tenant_key text
    CHECK (tenant_key IS NULL OR octet_length(tenant_key) BETWEEN 1 AND 256);
ALTER TABLE pf_backup_records ADD COLUMN tenant_key text
    CHECK (tenant_key IS NULL OR octet_length(tenant_key) BETWEEN 1 AND 256);
