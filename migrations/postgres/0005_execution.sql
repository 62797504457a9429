-- Task execution controls (contract v2, Tasks): attempts per task, idempotency keys,
-- delayed start, retry backoff, attempt history and fair scheduling. Times are Unix ms.

-- Attempts this task may make before a retryable failure fails it for good (1-10).
ALTER TABLE tasks ADD COLUMN max_attempts BIGINT NOT NULL DEFAULT 3
    CHECK (max_attempts BETWEEN 1 AND 10);
-- The submitter's key, shown with the task; uniqueness lives in `idempotency_keys`.
ALTER TABLE tasks ADD COLUMN idempotency_key TEXT;
-- The start time the submitter asked for, if any.
ALTER TABLE tasks ADD COLUMN run_at BIGINT;
-- When a queued task may next be handed out: its run_at, or the end of a retry backoff.
-- The claim filters on it, so neither a delayed nor a backing-off task is ever taken early.
ALTER TABLE tasks ADD COLUMN available_at BIGINT NOT NULL DEFAULT 0;
-- How the current attempt ended, written by the statement that ends it and copied into
-- `task_attempts` by the trigger below. NULL while an attempt runs; a statement that
-- does not say gets an outcome derived from the new status.
ALTER TABLE tasks ADD COLUMN attempt_outcome TEXT;
UPDATE tasks SET available_at = created_at;

-- The claim: queued tasks of a capability, by priority and user for the fair choice,
-- then oldest first.
DROP INDEX tasks_queue;
CREATE INDEX tasks_queue ON tasks(status, capability, priority_rank, user_id, created_at,
                                  available_at, requested_agent_id);
-- Running tasks per user (fair scheduling) and a user's queued tasks in order.
CREATE INDEX tasks_by_user_status ON tasks(user_id, status, priority_rank, created_at, seq);

-- One row per attempt (a hand-back that does not use an attempt keeps its number, so a
-- number may appear twice), oldest first by `id`.
CREATE TABLE task_attempts (
    id         BIGSERIAL PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    attempt    BIGINT NOT NULL,
    agent_id   TEXT,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT,
    outcome    TEXT NOT NULL CHECK (outcome IN ('running', 'completed', 'failed', 'lease_expired',
                                                'handed_back', 'canceled', 'timed_out')),
    error      TEXT
);
CREATE INDEX task_attempts_by_task ON task_attempts(task_id, id);

-- Fair scheduling: when each user's task was last handed out ("never" = no row).
CREATE TABLE task_dispatch (
    user_id         TEXT PRIMARY KEY,
    last_claimed_at BIGINT NOT NULL
);

-- The history is kept by row triggers, so every transition writes its attempt row in
-- the same statement (atomic, and no extra round trip on the hot path).
CREATE FUNCTION task_attempt_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_attempts (task_id, attempt, agent_id, started_at, outcome)
    VALUES (NEW.id, NEW.attempts, NEW.agent_id, NEW.started_at, 'running');
    -- Fair scheduling: when this user's task was last handed out.
    INSERT INTO task_dispatch (user_id, last_claimed_at) VALUES (NEW.user_id, NEW.updated_at)
    ON CONFLICT (user_id) DO UPDATE SET last_claimed_at = excluded.last_claimed_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_attempt_started AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN (NEW.status = 'running' AND OLD.status <> 'running')
EXECUTE FUNCTION task_attempt_started();

CREATE FUNCTION task_attempt_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_attempts
       SET ended_at = NEW.updated_at,
           outcome = COALESCE(NEW.attempt_outcome,
                              CASE NEW.status WHEN 'queued' THEN 'handed_back'
                                              ELSE NEW.status END),
           error = CASE WHEN COALESCE(NEW.attempt_outcome, NEW.status)
                             IN ('failed', 'lease_expired', 'timed_out')
                        THEN NEW.error END
     WHERE task_id = NEW.id AND outcome = 'running';
    RETURN NULL;
END
$$;

CREATE TRIGGER task_attempt_ended AFTER UPDATE OF status ON tasks
FOR EACH ROW
WHEN (OLD.status = 'running' AND NEW.status <> 'running')
EXECUTE FUNCTION task_attempt_ended();

-- Idempotency: a key names one task per user; a key older than 24 h may be taken over
-- by a new task. The primary key is what makes parallel submits create one task.
CREATE TABLE idempotency_keys (
    user_id    TEXT NOT NULL,
    key        TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);
