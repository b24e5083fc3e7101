-- tollgate: one request's check against its buckets and its tenant's balance, in one
-- atomic decision: the rate limits first, then the credits.
--
-- KEYS[1..nk]   the request's buckets, as bucket.lua's (read and written as _shared.lua says)
-- KEYS[nk+1..]  $credits, $holds, $holdexp, $ledger of the tenant (_credits.lua)
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME
-- ARGV[2]  mode: "1" overflow (the buckets decide; what they would deny is paid from the
--          balance, the buckets untouched), "2" prepaid (the buckets must allow and the
--          balance pays; both are charged)
-- ARGV[3]  price of the estimate (micro-credits)   ARGV[4] hold id   ARGV[5] request id
-- ARGV[6]  hold ttl (ms)                            ARGV[7] tenant name
-- ARGV     for KEYS[k], ARGV[4k+4..4k+7] = capacity_u, rate, per_ms, cost_u
-- Returns  {now_ms, outcome (0 allowed, 1 denied by a bucket, 2 the balance is short),
--          paid (1 the buckets, 2 the balance), denied (index of the first bucket below its
--          cost, 0 if none), balance, held, seq of the hold event (0 if none), nk levels
--          (refilled, before any charge), then the events of the call, 9 values each}
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local nk = #KEYS - 4
local now = clock_ms(ARGV[1])
local mode, price, hold_id, rid = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local ttl = tonumber(ARGV[6])
local st = credits_open(KEYS[nk + 1], KEYS[nk + 2], KEYS[nk + 3], KEYS[nk + 4], ARGV[7], now)
credits_sweep(st, ttl)

local cap, rate, per, cost, level, ls = {}, {}, {}, {}, {}, {}
local denied = 0
for k = 1, nk do
    local a = 4 * k + 4
    cap[k], rate[k], per[k], cost[k] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]),
        tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local l, o, first, last, leases = load(redis.call('GET', KEYS[k]), cap[k], rate[k], per[k], now)
    level[k] = l
    ls[k] = {o, first, last, leases}
    if denied == 0 and l < cost[k] then denied = k end
end

local outcome, paid, seq = 0, 0, 0
local charge_buckets, hold = false, false
if mode == 1 then
    if denied == 0 then
        charge_buckets, paid = true, 1
    elseif st.bal >= price then
        hold, paid = true, 2
    else
        outcome = 2
    end
else
    if denied ~= 0 then
        outcome = 1
    elseif st.bal >= price then
        charge_buckets, hold, paid = true, true, 2
    else
        outcome = 2
    end
end
if charge_buckets then
    for k = 1, nk do
        if cost[k] > 0 then
            local x = ls[k]
            store(KEYS[k], level[k] - cost[k], cap[k], rate[k], per[k], now, x[1], x[2], x[3], x[4])
        end
    end
end
if hold then
    st.held = st.held + price
    seq = credits_event(st, -price, 'hold', rid, '', '')
    redis.call('HSET', st.hk, hold_id, string.format('%d %d %s', price, now + ttl, rid))
    redis.call('ZADD', st.xk, now + ttl, hold_id)
end
credits_store(st)
local out = {now, outcome, paid, denied, st.bal, st.held, seq}
for k = 1, nk do out[#out + 1] = level[k] end
for i = 1, #st.events do out[#out + 1] = st.events[i] end
return out
