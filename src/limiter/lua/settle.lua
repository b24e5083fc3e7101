-- tollgate: settle actual − estimate on every key of one call (one tenant).
--
-- KEYS[i]  as in bucket.lua: "<prefix>{<tenant>}:<limit name>" holding
--          "<level_u> <updated_ms>"; a missing key is a full bucket.
-- ARGV     for KEYS[i], ARGV[4i-3..4i] = capacity_u, rate (units per per_ms),
--          per_ms, delta_u (positive charges and may leave debt; negative
--          refunds, never above capacity).
--          ARGV[4n+1], tests only: a fixed clock in ms used instead of TIME.
-- Returns  {now_ms, level_1..level_n}.
-- The C twin is tg_bucket_settle in src/limiter.c.
local MARGIN_MS = 1000
local n = #KEYS
local now
if ARGV[4 * n + 1] then
    now = tonumber(ARGV[4 * n + 1])
else
    if redis.replicate_commands then redis.replicate_commands() end -- TIME, then writes (Redis < 5)
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local out = {now}
for i = 1, n do
    local a = 4 * i - 4
    local cap, rate, per = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local l = cap
    local v = redis.call('GET', KEYS[i])
    if v then
        local sl, st = string.match(v, '^(-?%d+) (-?%d+)$')
        if sl then
            l = tonumber(sl)
            if l >= cap then
                l = cap
            else
                local elapsed = now - tonumber(st)
                if elapsed < 0 then elapsed = 0 end
                l = l + math.floor(elapsed * rate * 1000000 / per)
                if l >= cap then l = cap end
            end
        end
    end
    l = l - tonumber(ARGV[a + 4])
    if l > cap then l = cap end
    local ttl = MARGIN_MS
    if l < cap then ttl = ttl + math.ceil((cap - l) * per / (rate * 1000000)) end
    redis.call('SET', KEYS[i], string.format('%d %d', l, now), 'PX', string.format('%d', ttl))
    out[1 + i] = l
end
return out
