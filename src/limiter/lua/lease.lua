-- tollgate: a gateway's leases on the buckets of one tenant — report, return, renew,
-- and optionally one all-or-nothing check — in one call.
--
-- A lease moves units of a bucket from its level L to the gateway's outstanding units
-- (part of O, see _shared.lua); the gateway admits from them without asking Redis. At
-- each sync it reports what it spent (O drops: the units are gone), returns what it no
-- longer wants (O drops, L grows) and asks for more; the lease is renewed for ttl_ms. A
-- lease not renewed in time is written off as spent by whichever script reads the
-- bucket next. Refill never raises L + O above the capacity.
--
-- KEYS[k]  the tenant's buckets, "<prefix>{<tenant>}:<limit name>" (one hash tag)
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME
-- ARGV[2]  the gateway's id (no space, '=' or '@')
-- ARGV[3]  ttl_ms of the leases renewed here
-- ARGV[4]  "1" when the call carries a check (costs after the buckets), else "0"
-- ARGV     for KEYS[k], 8 values from ARGV[8k-3]: capacity_u, rate (units per per_ms,
--          "%.17g"), per_ms, held (the units the gateway believes it holds: 0 when it
--          holds no lease), spent (since its last report; negative after refunds),
--          returned, want (the outstanding units it would like to hold), min (a grant
--          below this is not worth a lease: none is granted)
-- ARGV     when checking, after those: the check's cost_u on each KEYS[k], -1 if unused
-- Returns  {now_ms, allowed (1, 0, or -1 without a check), then per KEYS[k]: granted
--          (units added to the gateway's lease), level after the call, level the check
--          saw (after its charge when allowed), expired (1: the gateway's lease was
--          written off before this call), the gateway's outstanding units now}
-- The clock, load (refill) and store are _shared.lua's.
--@include _shared.lua
local nk = #KEYS
local now = clock_ms(ARGV[1])
local gid, ttl, checking = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local vals = redis.call('MGET', unpack(KEYS))
local st = {}
for k = 1, nk do
    local a = 8 * k - 4
    local c, r, p = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local held, spent, returned = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
    local l, o, _, _, leases = load(vals[k], c, r, p, now)
    local own, others, holders = nil, {}, 0
    for g, u, e in string.gmatch(leases, '(%S+)=(%d+)@(%d+)') do
        if g == gid then
            own = tonumber(u)
        else
            others[#others + 1] = g .. '=' .. u .. '@' .. e
            holders = holders + 1
        end
    end
    local expired = 0
    if own then -- report and return: O drops by both, L grows by what is returned
        local left = own - spent - returned
        o = o - own
        l = l + returned
        if left < 0 then -- spent beyond the lease (settles): a debt on L
            l = l + left
            left = 0
        end
        own = left
        o = o + own
    else -- nothing held, or written off: what it reports is already counted as spent
        own = 0
        if held > 0 then expired = 1 end
    end
    if l + o > c then l = c - o end -- refunds never raise L + O above the capacity
    st[k] = {c = c, r = r, p = p, l = l, o = o, own = own, others = others, holders = holders,
             expired = expired, want = tonumber(ARGV[a + 7]), min = tonumber(ARGV[a + 8])}
end

local allowed = -1
if checking then -- all or nothing, as bucket.lua judges one check
    allowed = 1
    local base = 8 * nk + 4
    for k = 1, nk do
        local cost = tonumber(ARGV[base + k])
        if cost >= 0 and st[k].l < cost then allowed = 0 end
    end
    for k = 1, nk do
        local cost = tonumber(ARGV[base + k])
        if allowed == 1 and cost >= 0 then st[k].l = st[k].l - cost end
        st[k].seen = st[k].l
    end
end

local out = {now, allowed}
for k = 1, nk do
    local s = st[k]
    -- grant: up to what it wants, at most a share of what is left (1 / (holders + 2):
    -- gateways without a lease keep room too), never below min
    local g = 0
    if s.want > s.own and s.l > 0 then
        g = s.want - s.own
        local share = math.floor(s.l / (s.holders + 2))
        if g > share then g = share end
        if g < s.min then g = 0 end
    end
    s.l = s.l - g
    s.own = s.own + g
    s.o = s.o + g
    local first, last = 0, 0
    local list = s.others
    if s.own > 0 then list[#list + 1] = string.format('%s=%d@%d', gid, s.own, now + ttl) end
    for i = 1, #list do
        local e = tonumber(string.match(list[i], '@(%d+)$'))
        if first == 0 or e < first then first = e end
        if e > last then last = e end
    end
    store(KEYS[k], s.l, s.c, s.r, s.p, now, s.o, first, last, table.concat(list, ' '))
    out[#out + 1] = g
    out[#out + 1] = s.l
    out[#out + 1] = s.seen or s.l
    out[#out + 1] = s.expired
    out[#out + 1] = s.own
end
return out
