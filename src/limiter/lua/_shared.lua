-- tollgate: what bucket.lua, settle.lua and lease.lua share — the clock, reading a
-- bucket with its leases, the one refill and the store. Redis scripts cannot load one
-- another: scripts/embed.cmake puts this file in place of their `--@include _shared.lua`
-- line (and embeds no file of its own for a name starting with '_').
--
-- A bucket is one string key:
--   "<L> <updated_ms>"                                   no leases out
--   "<L> <updated_ms> <O> <first_exp> <last_exp> <leases>" leases out
-- L is the level in micro-units (negative = debt), O the units leased to gateways and
-- not yet reported spent, first_exp/last_exp the earliest and latest expiry of those
-- leases (Redis TIME, ms), <leases> one "<gateway>=<units>@<expiry_ms>" per gateway,
-- space separated. Invariant: L + O <= capacity. A missing or malformed value is a full
-- bucket with no leases. A lease past its expiry is written off as spent: O drops, L
-- does not grow (a gateway that died under-admits, never over-admits).
-- The C twin of refill is tg_bucket_refill in src/limiter/bucket.c: change them together,
-- operation for operation, or the parity test fails (with no leases out, O = 0).
local MARGIN_MS = 1000

-- The time in ms: `fixed` (tests only) when given and not "", else the server's TIME.
local function clock_ms(fixed)
    if fixed and fixed ~= '' then return tonumber(fixed) end
    if redis.replicate_commands then redis.replicate_commands() end -- TIME, then writes (Redis < 5)
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Reads value v: level, updated, O, first_exp, last_exp, leases (nil level: a full bucket).
local function parse(v)
    if not v then return nil end
    local sl, st, rest = string.match(v, '^(-?%d+) (-?%d+)(.*)$')
    if not sl then return nil end
    if rest == '' then return tonumber(sl), tonumber(st), 0, 0, 0, '' end
    local so, sf, sx, leases = string.match(rest, '^ (%d+) (%d+) (%d+) ?(.*)$')
    if not so then return tonumber(sl), tonumber(st), 0, 0, 0, '' end
    return tonumber(sl), tonumber(st), tonumber(so), tonumber(sf), tonumber(sx), leases
end

-- The level at `now` from level l updated at t, for capacity_u c and rate r units per
-- p ms, with o units leased out: never above c - o.
local function refill(l, t, c, r, p, now, o)
    local top = c - o
    if l >= top then return top end
    local elapsed = now - t
    if elapsed < 0 then elapsed = 0 end
    l = l + math.floor(elapsed * r * 1000000 / p)
    if l >= top then l = top end
    return l
end

-- Reads value v at `now`, writing off the leases that expired: returns the level, O,
-- first_exp, last_exp, leases, and the number and units written off. The level is
-- refilled piecewise, each expiry at its own instant, so that a written-off lease
-- never counts as room before it expired.
local function load(v, c, r, p, now)
    local l, t, o, first, last, leases = parse(v)
    if not l then return c, 0, 0, 0, '', 0, 0 end
    if o == 0 or now < first then return refill(l, t, c, r, p, now, o), o, first, last, leases, 0, 0 end
    local gone, keep = {}, {}
    first, last = 0, 0
    for g, sa, se in string.gmatch(leases, '(%S+)=(%d+)@(%d+)') do
        local a, e = tonumber(sa), tonumber(se)
        if e <= now then
            gone[#gone + 1] = {e, a}
        else
            keep[#keep + 1] = g .. '=' .. sa .. '@' .. se
            if first == 0 or e < first then first = e end
            if e > last then last = e end
        end
    end
    table.sort(gone, function(x, y) return x[1] < y[1] end)
    local units = 0
    for i = 1, #gone do
        local e, a = gone[i][1], gone[i][2]
        if e > t then
            l = refill(l, t, c, r, p, e, o)
            t = e
        end
        o = o - a
        units = units + a
    end
    if o < 0 then o = 0 end
    return refill(l, t, c, r, p, now, o), o, first, last, table.concat(keep, ' '), #gone, units
end

-- Writes level l at `now` with the leases; the key expires when it would be full again,
-- after its last lease (+ margin).
local function store(key, l, c, r, p, now, o, first, last, leases)
    local ttl = MARGIN_MS
    if l < c then ttl = ttl + math.ceil((c - l) * p / (r * 1000000)) end
    local v
    if o and o > 0 then
        ttl = ttl + (last > now and last - now or 0)
        v = string.format('%d %d %d %d %d %s', l, now, o, first, last, leases)
    else
        v = string.format('%d %d', l, now)
    end
    redis.call('SET', key, v, 'PX', string.format('%d', ttl))
end
