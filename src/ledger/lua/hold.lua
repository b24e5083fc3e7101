-- tollgate: the checks of one tenant that pays with credits, arrived in one turn of a
-- gateway's loop, each one atomic decision against its buckets and the tenant's balance:
-- the rate limits first, then the credits. Judged in order, each as if it had been a call of
-- its own at the same instant.
--
-- KEYS[1..nk]   the distinct buckets of the batch, as bucket.lua's (_shared.lua's values)
-- KEYS[nk+1..]  $credits, $holds, $holdexp, $ledger of the tenant (_credits.lua)
-- ARGV[1]  "" in production; tests only: a fixed clock in ms used instead of TIME
-- ARGV[2]  tenant name   ARGV[3] hold ttl (ms)
-- ARGV     for KEYS[k], ARGV[4k..4k+3] = capacity_u, rate, per_ms, floor_u (the limit's
--          reserve, which a background check may not take)
-- then     m (the number of checks), then per check 5 + nk values: mode ("1" overflow: the
--          buckets decide, what they would deny is paid from the balance with the buckets
--          untouched; "2" prepaid: the buckets must allow and the balance pays, both are
--          charged), price of the estimate (micro-credits), hold id, request id, "1" for a
--          background check (else "0"), then its cost_u on each KEYS[k] (-1: not one of its
--          buckets)
-- Returns  {now_ms, balance, held, then per check 4 + nk values: outcome (0 allowed, 1 denied
--          by a bucket, 2 the balance is short), paid (1 the buckets, 2 the balance), denied
--          (the first of its buckets below its cost, as an index into KEYS, 0 if none), seq of
--          its hold event (0 if none), the levels it saw (refilled, before its own charge);
--          then the events of the call, 9 values each}
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local nk = #KEYS - 4
local now = clock_ms(ARGV[1])
local ttl = tonumber(ARGV[3])
local st = credits_open(KEYS[nk + 1], KEYS[nk + 2], KEYS[nk + 3], KEYS[nk + 4], ARGV[2], now)
credits_sweep(st)

local cap, rate, per, level, ls, dirty, floor = {}, {}, {}, {}, {}, {}, {}
for k = 1, nk do
    local a = 4 * k
    cap[k], rate[k], per[k] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    floor[k] = tonumber(ARGV[a + 3])
    local l, o, first, last, leases = load(redis.call('GET', KEYS[k]), cap[k], rate[k], per[k], now)
    level[k] = l
    ls[k] = {o, first, last, leases}
end

local out = {now, 0, 0}
local pos = 4 * nk + 5
local m = tonumber(ARGV[pos - 1])
for _ = 1, m do
    local mode, price, hold_id, rid = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), ARGV[pos + 2],
        ARGV[pos + 3]
    local bg = ARGV[pos + 4] == '1'
    local cost, denied = {}, 0
    for k = 1, nk do
        local c = tonumber(ARGV[pos + 4 + k])
        cost[k] = c
        if denied == 0 and c >= 0 and level[k] < (bg and c + floor[k] or c) then denied = k end
    end
    pos = pos + 5 + nk
    local outcome, paid, seq = 0, 0, 0
    local charge, hold = false, false
    if mode == 1 then
        if denied == 0 then
            charge, paid = true, 1
        elseif st.bal >= price then
            hold, paid = true, 2
        else
            outcome = 2
        end
    elseif denied ~= 0 then
        outcome = 1
    elseif st.bal >= price then
        charge, hold, paid = true, true, 2
    else
        outcome = 2
    end
    if hold then
        st.held = st.held + price
        seq = credits_event(st, -price, 'hold', rid, '', '')
        redis.call('HSET', st.hk, hold_id, string.format('%d %d %s', price, now + ttl, rid))
        redis.call('ZADD', st.xk, now + ttl, hold_id)
    end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = outcome, paid, denied, seq
    for k = 1, nk do out[n + 4 + k] = level[k] end
    if charge then
        for k = 1, nk do
            if cost[k] > 0 then
                level[k] = level[k] - cost[k]
                dirty[k] = true
            end
        end
    end
end
for k = 1, nk do
    if dirty[k] then
        local x = ls[k]
        store(KEYS[k], level[k], cap[k], rate[k], per[k], now, x[1], x[2], x[3], x[4])
    end
end
credits_store(st)
out[2], out[3] = st.bal, st.held
for i = 1, #st.events do out[#out + 1] = st.events[i] end
return out
