-- tollgate: a tenant's concurrency slots across gateways — take one of each of its
-- concurrency limits (all or none), refresh them while the request lives, give them back.
--
-- KEYS[i]  "<prefix>{<tenant>}:$slots:<limit name>": a sorted set of the slot ids in flight,
--          each scored by when it lapses (Redis TIME, ms); a lapsed id is a gateway that
--          stopped refreshing (it died): it no longer counts.
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME
-- ARGV[2]  "acquire" | "refresh" | "release"    ARGV[3] the slot id   ARGV[4] ttl (ms)
-- ARGV[4+i] the limit's max for KEYS[i] (acquire)
-- Returns  {taken (1, or 0: KEYS[denied] is full), denied, lapsed ids dropped}
--@include ../../limiter/lua/_shared.lua
local now = clock_ms(ARGV[1])
local op, id, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = #KEYS
if op == 'release' then
    for i = 1, n do redis.call('ZREM', KEYS[i], id) end
    return {1, 0, 0}
end
if op == 'refresh' then -- XX: a slot that already lapsed is not taken again behind others' backs
    for i = 1, n do
        redis.call('ZADD', KEYS[i], 'XX', now + ttl, id)
        redis.call('PEXPIRE', KEYS[i], 2 * ttl)
    end
    return {1, 0, 0}
end
local lapsed = 0
for i = 1, n do
    lapsed = lapsed + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[4 + i]) then return {0, i, lapsed} end
end
for i = 1, n do
    redis.call('ZADD', KEYS[i], now + ttl, id)
    redis.call('PEXPIRE', KEYS[i], 2 * ttl)
end
return {1, 0, lapsed}
