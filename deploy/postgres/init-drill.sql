-- The database DR drills restore into (the compose stack's DR_RESTORE_TARGETS `drill`):
-- empty, so every drill recreates its tables from the backup's manifest.
CREATE DATABASE drfleet_drill OWNER drfleet;
