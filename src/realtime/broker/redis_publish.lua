-- Publish-plus-history for RedisBroker, atomic because Redis runs a script alone.
--
-- KEYS[1] the sequence counter      KEYS[2] the delivery stream
-- KEYS[3] the target's history zset KEYS[4] the set of history stream names
-- KEYS[5] the history size counter  KEYS[6] the dedupe key (only with a dedupe id)
-- ARGV[1] the stream name ('*' or the user id), also the entry's target
-- ARGV[2] the body: '<created_at_ms>:<kind length>:<kind><data json>'
-- ARGV[3] the origin token in decimal, or '' for none
-- ARGV[4] the delivery stream's approximate length bound
-- ARGV[5] the dedupe key's lifetime in seconds
--
-- Returns {seq, 1 if this is an earlier publication's answer (dedupe) else 0}.
--
-- Redis does not roll a script back when a command fails half-way, so the only command
-- that can fail (XADD, when the stream's newest id is not below the new sequence number,
-- i.e. the counter was lost but the stream was not) runs before anything is written.

if #KEYS >= 6 then
  local earlier = redis.call('GET', KEYS[6])
  if earlier then
    return {tonumber(earlier), 1}
  end
end

local seq = (tonumber(redis.call('GET', KEYS[1])) or 0) + 1
local seq_text = string.format('%d', seq)

local xadd = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq_text .. '-0',
              't', ARGV[1], 'b', ARGV[2]}
if ARGV[3] ~= '' then
  xadd[#xadd + 1] = 'o'
  xadd[#xadd + 1] = ARGV[3]
end
redis.call(unpack(xadd))

redis.call('SET', KEYS[1], seq_text)
-- The member starts with the sequence number, so two equal bodies stay two members.
redis.call('ZADD', KEYS[3], seq_text, seq_text .. ':' .. ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('INCR', KEYS[5])
if #KEYS >= 6 then
  redis.call('SET', KEYS[6], seq_text, 'EX', ARGV[5])
end
return {seq, 0}
