-- tollgate: the ends of requests of one tenant paid from its balance, gathered by a gateway
-- for a few ms: each hold replaced by the price of what the request actually cost (the
-- difference refunded or charged) and its buckets settled by actual - estimate, in order.
-- Idempotent per call: a call resent (its reply was lost) is not applied twice.
--
-- KEYS[1..nb]   the distinct buckets the commits settle
-- KEYS[nb+1..]  $credits, $holds, $holdexp, $ledger, $commits of the tenant (_credits.lua)
-- ARGV[1]  "" or a fixed clock (tests)   ARGV[2] tenant name
-- ARGV[3]  the call's id (unique)        ARGV[4] how long the id is remembered (ms)
-- ARGV     for KEYS[k], ARGV[3k+2..3k+4] = capacity_u, rate, per_ms
-- then     m, then per commit 3 + nb values: hold id, request id, actual price (micro-credits),
--          then its delta_u on each KEYS[k] (as settle.lua; 0: none)
-- Returns  {now_ms, balance, held, the seq of each commit's settle event, then the events of the
--          call, 9 values each}; a call applied before: {now_ms, balance, held, "applied before"}
-- A hold that expired before its commit (refunded by then) is charged the actual price in
-- full: the tenant pays what it used, once.
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local nb = #KEYS - 5
local now = clock_ms(ARGV[1])
local ck, call_id = KEYS[nb + 5], ARGV[3]
local st = credits_open(KEYS[nb + 1], KEYS[nb + 2], KEYS[nb + 3], KEYS[nb + 4], ARGV[2], now)
if redis.call('ZSCORE', ck, call_id) then return {now, st.bal, st.held, 'applied before'} end
local cap, rate, per, delta = {}, {}, {}, {}
for k = 1, nb do
    local a = 3 * k + 2
    cap[k], rate[k], per[k], delta[k] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), 0
end
local out = {now, 0, 0}
local pos = 3 * nb + 6
local m = tonumber(ARGV[pos - 1])
for _ = 1, m do
    local hold_id, rid, actual = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
    local v = redis.call('HGET', st.hk, hold_id)
    for k = 1, nb do delta[k] = delta[k] + tonumber(ARGV[pos + 2 + k]) end
    local sa = v and string.match(v, '^(%d+) ')
    local seq
    if sa then
        st.held = st.held - tonumber(sa)
        seq = credits_event(st, tonumber(sa) - actual, 'settle', rid, '', '')
        redis.call('HDEL', st.hk, hold_id)
        redis.call('ZREM', st.xk, hold_id)
    else -- expired and refunded already (or never seen): charge what was used
        seq = credits_event(st, -actual, 'settle', rid, '', '')
    end
    out[#out + 1] = seq
    pos = pos + 3 + nb
end
for k = 1, nb do
    if delta[k] ~= 0 then
        local l, o, first, last, leases = load(redis.call('GET', KEYS[k]), cap[k], rate[k], per[k], now)
        l = l - delta[k]
        if l > cap[k] - o then l = cap[k] - o end
        store(KEYS[k], l, cap[k], rate[k], per[k], now, o, first, last, leases)
    end
end
credits_sweep(st)
credits_store(st)
redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
redis.call('ZADD', ck, now + tonumber(ARGV[4]), call_id)
out[2], out[3] = st.bal, st.held
for i = 1, #st.events do out[#out + 1] = st.events[i] end
return out
