-- tollgate: settle actual − estimate on every key of one call (one tenant).
--
-- KEYS[i]  as in bucket.lua: "<prefix>{<tenant>}:<limit name>", valued as _shared.lua says.
-- ARGV     for KEYS[i], ARGV[4i-3..4i] = capacity_u, rate (units per per_ms),
--          per_ms, delta_u (positive charges and may leave debt; negative
--          refunds, never above capacity less what is leased out).
--          ARGV[4n+1], tests only: a fixed clock in ms used instead of TIME.
-- Returns  {now_ms, level_1..level_n}.
-- The clock, load (refill) and store are _shared.lua's; the C twin is tg_bucket_settle in
-- src/limiter/bucket.c.
--@include _shared.lua
local n = #KEYS
local now = clock_ms(ARGV[4 * n + 1])

local out = {now}
for i = 1, n do
    local a = 4 * i - 4
    local cap, rate, per = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local l, o, first, last, leases = load(redis.call('GET', KEYS[i]), cap, rate, per, now)
    l = l - tonumber(ARGV[a + 4])
    if l > cap - o then l = cap - o end
    store(KEYS[i], l, cap, rate, per, now, o, first, last, leases)
    out[1 + i] = l
end
return out
