-- Agents and the durable task queue. Times are Unix milliseconds; ids are UUID text.
-- `seq` gives every row a store-wide insertion order: lists page on it (newest first)
-- and the queue uses it as the last tie-breaker, so ordering never depends on clocks alone.

CREATE TABLE agents (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    -- No foreign key: the built-in agent belongs to the system owner (the nil UUID),
    -- which is deliberately not an account (an account would take the first-admin slot).
    owner_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    -- JSON array of capability strings (text, read with jsonb functions).
    capabilities TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    token_prefix TEXT NOT NULL,
    -- Set only for agents the server manages itself ('builtin'); unique so that start-up
    -- can create-or-rotate it in one statement.
    system_key   TEXT UNIQUE,
    online       BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_at BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX agents_online ON agents(online, last_seen_at);

CREATE TABLE tasks (
    seq                BIGSERIAL PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    user_id            TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    query              TEXT NOT NULL,
    capability         TEXT NOT NULL,
    priority           TEXT NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    -- Higher runs first; stored so the claim can sort on an index.
    priority_rank      BIGINT NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('queued', 'running', 'completed', 'failed', 'canceled')),
    progress           BIGINT NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    -- The agent the submitter asked for (only it may claim the task), if any.
    requested_agent_id TEXT,
    -- The agent running or that ran the task; back to requested_agent_id on re-queue.
    agent_id           TEXT,
    -- JSON text of the result value.
    result             TEXT,
    error              TEXT,
    attempts           BIGINT NOT NULL DEFAULT 0,
    timeout_s          BIGINT NOT NULL,
    lease_expires_at   BIGINT,
    created_at         BIGINT NOT NULL,
    started_at         BIGINT,
    completed_at       BIGINT,
    updated_at         BIGINT NOT NULL
);
-- The claim: queued tasks of a capability in queue order.
CREATE INDEX tasks_queue ON tasks(status, capability, priority_rank DESC, created_at, seq);
-- The reaper: running tasks by lease end.
CREATE INDEX tasks_leases ON tasks(status, lease_expires_at);
CREATE INDEX tasks_by_user ON tasks(user_id, seq);
-- Agent counters and analytics.
CREATE INDEX tasks_by_agent ON tasks(agent_id, status);
CREATE INDEX tasks_by_created ON tasks(created_at);
CREATE INDEX tasks_by_completed ON tasks(completed_at);
