-- Real-time message history, for resume. One log-wide sequence: a message's cursor is
-- the same for every recipient. `user_id` NULL means a broadcast. AUTOINCREMENT so a
-- sequence number is never reused, even after the newest messages are pruned.
CREATE TABLE messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX messages_by_user ON messages(user_id, seq);

-- How far each stream ('*' for broadcasts, else a user id) has been pruned: every
-- message of the stream at or below `pruned_through` is gone, so a resume from an older
-- position gets `reset`.
CREATE TABLE message_streams (
    stream         TEXT PRIMARY KEY,
    pruned_through INTEGER NOT NULL
);
