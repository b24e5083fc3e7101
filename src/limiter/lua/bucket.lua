-- tollgate: a batch of all-or-nothing token-bucket checks of one tenant.
--
-- A gateway sends every check of a tenant that arrived in one turn of its event
-- loop as one call; the checks are judged in order, each all-or-nothing, exactly
-- as if each had been a call of its own at the same instant.
--
-- KEYS[k]  the distinct buckets of the batch, "<prefix>{<tenant>}:<limit name>"
--          (one hash tag per call). Value: the string "<level_u> <updated_ms>",
--          two decimal integers; level in micro-units, negative = debt. A missing
--          key is a full bucket.
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME.
-- ARGV     for KEYS[k], ARGV[3k-1..3k+1] = capacity_u, rate (units per per_ms,
--          "%.17g"), per_ms. Then m = the number of checks, then one string of
--          m rows of nk little-endian IEEE doubles: row j, column k = the cost_u
--          of check j on KEYS[k], or -1 when check j does not use that bucket
--          (binary, read by struct.unpack: a tonumber per cost was most of the
--          script's time).
-- Returns  {now_ms, allowed, level_1..level_nk}: how many checks were allowed and
--          the levels before the first check (refilled, not yet charged). The
--          gateway replays the checks on these levels with the same arithmetic
--          (doubles, as Lua's numbers) to learn each check's answer and levels;
--          `allowed` lets it verify the replay. A denied check writes nothing; a
--          bucket no allowed check charged is not written.
-- Every written key expires when it would be full again (+ margin).
-- The C twin is tg_bucket_refill/tg_bucket_check in src/limiter.c and the replay
-- in src/limiter_redis.c: change them together, operation for operation, or the
-- parity test fails.
local MARGIN_MS = 1000
local nk = #KEYS
local now
if ARGV[1] ~= '' then
    now = tonumber(ARGV[1])
else
    if redis.replicate_commands then redis.replicate_commands() end -- TIME, then writes (Redis < 5)
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Written for speed: Redis runs it for every round of checks. One MGET, no
-- closures, rows judged straight from struct.unpack's results.
local vals = redis.call('MGET', unpack(KEYS))
local cap, rate, per, level, dirty = {}, {}, {}, {}, {}
local out = {now, 0}
for k = 1, nk do -- refill
    local c, r, p = tonumber(ARGV[3 * k - 1]), tonumber(ARGV[3 * k]), tonumber(ARGV[3 * k + 1])
    cap[k], rate[k], per[k] = c, r, p
    local l = c
    local v = vals[k]
    if v then
        local sl, st = string.match(v, '^(-?%d+) (-?%d+)$')
        if sl then
            l = tonumber(sl)
            if l >= c then
                l = c
            else
                local elapsed = now - tonumber(st)
                if elapsed < 0 then elapsed = 0 end
                l = l + math.floor(elapsed * r * 1000000 / p)
                if l >= c then l = c end
            end
        end
    end
    level[k] = l
    out[k + 2] = l
end

local a = 3 * nk + 2
local m = tonumber(ARGV[a])
local total, packed = m * nk, ARGV[a + 1]
if #packed ~= 8 * total then return redis.error_reply('tollgate: cost rows do not match') end
local allowed, got, pos = 0, 0, 1
while got < total do -- struct.unpack returns its values on the C stack: in chunks of whole rows
    local n = total - got
    if n > 4000 then n = 4000 - 4000 % nk end
    local costs = {struct.unpack('<' .. string.rep('d', n), packed, pos)}
    pos = costs[n + 1]
    for i = 0, n - nk, nk do
        local ok = true
        for k = 1, nk do
            local c = costs[i + k]
            if c >= 0 and level[k] < c then
                ok = false
                break
            end
        end
        if ok then
            allowed = allowed + 1
            for k = 1, nk do
                local c = costs[i + k]
                if c >= 0 then
                    level[k] = level[k] - c
                    dirty[k] = true
                end
            end
        end
    end
    got = got + n
end
out[2] = allowed
for k = 1, nk do -- store what an allowed check charged
    if dirty[k] then
        local l, c = level[k], cap[k]
        local ttl = MARGIN_MS
        if l < c then ttl = ttl + math.ceil((c - l) * per[k] / (rate[k] * 1000000)) end
        redis.call('SET', KEYS[k], string.format('%d %d', l, now), 'PX', string.format('%d', ttl))
    end
end
return out
