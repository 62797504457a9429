-- Private and shared agents (contract v2, Agents): an agent runs only its owner's tasks
-- unless an admin made it shared. The built-in agent (the one with a system key) is shared.
ALTER TABLE agents ADD COLUMN shared BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE agents SET shared = TRUE WHERE system_key IS NOT NULL;
