-- tollgate: a batch of all-or-nothing token-bucket checks of one tenant.
--
-- A gateway sends every check of a tenant that arrived in one turn of its event
-- loop as one call; the checks are judged in order, each all-or-nothing, exactly
-- as if each had been a call of its own at the same instant.
--
-- KEYS[k]  the distinct buckets of the batch, "<prefix>{<tenant>}:<limit name>"
--          (one hash tag per call), valued as _shared.lua says. Units leased to
--          gateways (lease.lua) are not room here: a check sees the level L only.
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME.
-- ARGV     for KEYS[k], ARGV[4k-2..4k+1] = capacity_u, rate (units per per_ms,
--          "%.17g"), per_ms, floor_u (the limit's reserve: a background check passes
--          only if the level after its cost stays at or above it). Then m = the number
--          of checks, then one string of m rows of nk + 1 little-endian IEEE doubles:
--          row j, column k = the cost_u of check j on KEYS[k], or -1 when check j does
--          not use that bucket; column nk + 1 = 1 for a background check, else 0
--          (binary, read by struct.unpack: a tonumber per cost was most of the
--          script's time). Optionally then nk deltas: the pending settles of the
--          batch's buckets (actual - estimate, as settle.lua applies them), applied
--          before the checks, so that a check sees the settle of the request before.
-- Returns  {now_ms, allowed, level_1..level_nk}: how many checks were allowed and
--          the levels before the first check (refilled and settled, not yet charged). The
--          gateway replays the checks on these levels with the same arithmetic
--          (doubles, as Lua's numbers) to learn each check's answer and levels;
--          `allowed` lets it verify the replay. A denied check writes nothing; a
--          bucket no allowed check charged is not written.
-- Every written key expires when it would be full again (+ margin).
-- The clock, load (refill) and store are _shared.lua's. The C twin is tg_bucket_refill and
-- tg_bucket_check in src/limiter/bucket.c and the replay in src/limiter/redis.c: change
-- them together, operation for operation, or the parity test fails.
--@include _shared.lua
local nk = #KEYS
local now = clock_ms(ARGV[1])

-- Written for speed: Redis runs it for every round of checks. One MGET, no
-- closures, rows judged straight from struct.unpack's results.
local vals = redis.call('MGET', unpack(KEYS))
local cap, rate, per, level, dirty, lease, floor = {}, {}, {}, {}, {}, {}, {}
local out = {now, 0}
local a = 4 * nk + 2
local settling = ARGV[a + 2] ~= nil
for k = 1, nk do -- refill, then the settles riding along
    local c, r, p = tonumber(ARGV[4 * k - 2]), tonumber(ARGV[4 * k - 1]), tonumber(ARGV[4 * k])
    cap[k], rate[k], per[k], floor[k] = c, r, p, tonumber(ARGV[4 * k + 1])
    local l, o, first, last, leases = load(vals[k], c, r, p, now)
    if o > 0 then lease[k] = {o, first, last, leases} end
    if settling then
        local d = tonumber(ARGV[a + 1 + k])
        if d ~= 0 then -- as settle.lua: a charge may leave debt, a refund stops at c - o
            l = l - d
            if l > c - o then l = c - o end
            dirty[k] = true
        end
    end
    level[k] = l
    out[k + 2] = l
end

local m = tonumber(ARGV[a])
local w = nk + 1
local total, packed = m * w, ARGV[a + 1]
if #packed ~= 8 * total then return redis.error_reply('tollgate: cost rows do not match') end
local allowed, got, pos = 0, 0, 1
while got < total do -- struct.unpack returns its values on the C stack: in chunks of whole rows
    local n = total - got
    if n > 4000 then n = 4000 - 4000 % w end
    local costs = {struct.unpack('<' .. string.rep('d', n), packed, pos)}
    pos = costs[n + 1]
    for i = 0, n - w, w do
        local ok = true
        local bg = costs[i + w] == 1
        for k = 1, nk do
            local c = costs[i + k]
            if c >= 0 and level[k] < (bg and c + floor[k] or c) then
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
        local ls = lease[k]
        if ls then
            store(KEYS[k], level[k], cap[k], rate[k], per[k], now, ls[1], ls[2], ls[3], ls[4])
        else
            store(KEYS[k], level[k], cap[k], rate[k], per[k], now)
        end
    end
end
return out
