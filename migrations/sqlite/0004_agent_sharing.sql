-- Private and shared agents (contract v2, Agents): an agent runs only its owner's tasks
-- unless an admin made it shared. The built-in agent (the one with a system key) is shared.
ALTER TABLE agents ADD COLUMN shared INTEGER NOT NULL DEFAULT 0 CHECK (shared IN (0, 1));
UPDATE agents SET shared = 1 WHERE system_key IS NOT NULL;
