-- tollgate: what bucket.lua and settle.lua share — the clock, the one refill of a bucket
-- and the store. Redis scripts cannot load one another: scripts/embed.cmake puts this
-- file in place of their `--@include _shared.lua` line (and embeds no file of its own
-- for a name starting with '_').
--
-- A bucket's value is the string "<level_u> <updated_ms>", two decimal integers; level
-- in micro-units, negative = debt. A missing or malformed value is a full bucket.
-- The C twin of refill is tg_bucket_refill in src/limiter/bucket.c: change them together,
-- operation for operation, or the parity test fails.
local MARGIN_MS = 1000

-- The time in ms: `fixed` (tests only) when given and not "", else the server's TIME.
local function clock_ms(fixed)
    if fixed and fixed ~= '' then return tonumber(fixed) end
    if redis.replicate_commands then redis.replicate_commands() end -- TIME, then writes (Redis < 5)
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The level at `now` of value v, for capacity_u c and rate r units per p ms: never above c.
local function refill(v, c, r, p, now)
    if not v then return c end
    local sl, st = string.match(v, '^(-?%d+) (-?%d+)$')
    if not sl then return c end
    local l = tonumber(sl)
    if l >= c then return c end
    local elapsed = now - tonumber(st)
    if elapsed < 0 then elapsed = 0 end
    l = l + math.floor(elapsed * r * 1000000 / p)
    if l >= c then l = c end
    return l
end

-- Writes level l at `now`; the key expires when it would be full again (+ margin).
local function store(key, l, c, r, p, now)
    local ttl = MARGIN_MS
    if l < c then ttl = ttl + math.ceil((c - l) * p / (r * 1000000)) end
    redis.call('SET', key, string.format('%d %d', l, now), 'PX', string.format('%d', ttl))
end
