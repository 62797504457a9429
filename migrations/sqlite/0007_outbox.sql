-- The transactional outbox: a store change that is announced writes its messages here
-- in the change's own transaction, so the change and its announcement commit together
-- (or not at all). The relay (`realtime::outbox`) publishes the rows oldest first and
-- deletes them. `user_id` NULL means a broadcast; `data` is the JSON text of the data
-- object; AUTOINCREMENT so an id is never reused: it is the publication's idempotency
-- key.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- The idempotency key of a publication (the outbox row id it came from): a row the
-- relay published but could not delete before a crash is published again at start,
-- and the log answers the earlier message instead of appending a second one.
ALTER TABLE messages ADD COLUMN dedupe INTEGER;
CREATE UNIQUE INDEX messages_dedupe ON messages(dedupe) WHERE dedupe IS NOT NULL;
