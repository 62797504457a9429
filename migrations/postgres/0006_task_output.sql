-- Task output: the chunks an agent streams while it works, numbered per task.
-- `output_seq` is the last seq handed out for the task and `output_bytes` the text
-- stored so far; an append bumps both in the same statement that checks the task is
-- still the agent's running task (which locks the row until commit), then inserts its
-- chunks, in one transaction, so numbers are gapless and never shared.
ALTER TABLE tasks ADD COLUMN output_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN output_bytes BIGINT NOT NULL DEFAULT 0;

CREATE TABLE task_output (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    stream  TEXT NOT NULL CHECK (stream IN ('output', 'log')),
    text    TEXT NOT NULL,
    -- Unix milliseconds.
    at      BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
