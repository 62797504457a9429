-- Real-time message history, for resume. One log-wide sequence: a message's cursor is
-- the same for every recipient. `user_id` NULL means a broadcast. A sequence never
-- hands a number out twice, even after the newest messages are pruned (SQLite's
-- AUTOINCREMENT); it may skip one (an insert that failed), which the broker allows:
-- each publication names the one before it.
CREATE SEQUENCE message_seq AS BIGINT;
CREATE TABLE messages (
    seq        BIGINT PRIMARY KEY DEFAULT nextval('message_seq'),
    user_id    TEXT,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER SEQUENCE message_seq OWNED BY messages.seq;
CREATE INDEX messages_by_user ON messages(user_id, seq);

-- How far each stream ('*' for broadcasts, else a user id) has been pruned: every
-- message of the stream at or below `pruned_through` is gone, so a resume from an older
-- position gets `reset`.
CREATE TABLE message_streams (
    stream         TEXT PRIMARY KEY,
    pruned_through BIGINT NOT NULL
);
