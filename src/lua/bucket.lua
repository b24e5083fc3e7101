-- tollgate: all-or-nothing token-bucket check over every key of one call.
--
-- KEYS[i]  "<prefix>{<tenant>}:<limit name>" (one hash tag per call). Value: the
--          string "<level_u> <updated_ms>", two decimal integers; level in
--          micro-units, negative = debt. A missing key is a full bucket.
-- ARGV     for KEYS[i], ARGV[4i-3..4i] = capacity_u, rate (units per per_ms,
--          "%.17g"), per_ms, cost_u.
--          ARGV[4n+1], tests only: a fixed clock in ms used instead of TIME.
-- Returns  {allowed 1|0, first denying key (1-based) or 0, now_ms, level_1..level_n}:
--          levels after the check (charged if allowed; refilled, and not stored,
--          if denied). A denial writes nothing at all.
-- Every written key expires when it would be full again (+ margin).
-- The C twin is tg_bucket_refill/tg_bucket_check in src/limiter.c: change both
-- together, operation for operation, or the parity test fails.
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

local function refill(key, cap, rate, per)
    local v = redis.call('GET', key)
    if not v then return cap end
    local l, t = string.match(v, '^(-?%d+) (-?%d+)$')
    if not l then return cap end
    l = tonumber(l)
    if l >= cap then return cap end
    local elapsed = now - tonumber(t)
    if elapsed < 0 then elapsed = 0 end
    l = l + math.floor(elapsed * rate * 1000000 / per)
    if l >= cap then return cap end
    return l
end

local function store(key, l, cap, rate, per)
    local ttl = MARGIN_MS
    if l < cap then ttl = ttl + math.ceil((cap - l) * per / (rate * 1000000)) end
    redis.call('SET', key, string.format('%d %d', l, now), 'PX', string.format('%d', ttl))
end

local level, denied = {}, 0
for i = 1, n do
    local a = 4 * i - 4
    level[i] = refill(KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
    if denied == 0 and level[i] < tonumber(ARGV[a + 4]) then denied = i end
end
if denied == 0 then
    for i = 1, n do
        local a = 4 * i - 4
        level[i] = level[i] - tonumber(ARGV[a + 4])
        store(KEYS[i], level[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
    end
end
local out = {denied == 0 and 1 or 0, denied, now}
for i = 1, n do out[3 + i] = level[i] end
return out
