-- Retention for one history stream of RedisBroker, atomic because Redis runs a script
-- alone: raises the stream's watermark, then deletes (a bounded number of) messages at
-- or below it.
--
-- KEYS[1] the stream's history zset  KEYS[2] the watermark hash  KEYS[3] the size counter
-- ARGV[1] the stream name (the watermark hash's field)
-- ARGV[2] newest messages always kept (max_per_stream)
-- ARGV[3] the age cutoff: messages created at or after it (Unix ms) are kept
-- ARGV[4] how many prunable messages to examine at most, newest first
-- ARGV[5] how many messages to delete at most in this call
--
-- A message goes when it is beyond the newest ARGV[2] AND older than the cutoff; like the
-- SQLite log, the watermark is the newest such message and everything at or below it
-- goes, so pruning only ever removes a prefix of the stream.
--
-- Returns {deleted, still at or below the watermark (to delete in a next call)}.

local keep = tonumber(ARGV[2])
local cutoff = tonumber(ARGV[3])
local max_scan = tonumber(ARGV[4])
local max_delete = tonumber(ARGV[5])

local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
local candidates = redis.call('ZCARD', KEYS[1]) - keep

-- The newest candidate older than the cutoff: scan from the newest candidate down, in
-- chunks. Creation times follow the sequence closely, so this usually stops at once.
if candidates > 0 then
  local lowest = math.max(0, candidates - max_scan)
  local top = candidates - 1
  local found = nil
  while top >= lowest and not found do
    local bottom = math.max(lowest, top - 255)
    local chunk = redis.call('ZRANGE', KEYS[1], bottom, top)
    for i = #chunk, 1, -1 do
      local seq, at = string.match(chunk[i], '^(%d+):(%-?%d+):')
      if tonumber(at) < cutoff then
        found = tonumber(seq)
        break
      end
    end
    top = bottom - 1
  end
  if found and found > mark then
    mark = found
    redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', mark))
  end
end

if mark == 0 then
  return {0, 0}
end
local doomed = redis.call('ZCOUNT', KEYS[1], '-inf', mark)
local deleted = math.min(doomed, max_delete)
if deleted > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, deleted - 1)
  redis.call('DECRBY', KEYS[3], deleted)
end
return {deleted, doomed - deleted}
