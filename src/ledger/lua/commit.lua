-- tollgate: the end of a request paid from the balance: its hold replaced by the price of
-- what it actually cost (the difference refunded or charged), and its buckets settled by
-- actual - estimate, in one call. Idempotent: a hold settled once is not settled again.
--
-- KEYS[1..nk]   the buckets to settle (none when the balance paid in overflow mode)
-- KEYS[nk+1..]  $credits, $holds, $holdexp, $ledger of the tenant (_credits.lua)
-- ARGV[1]  "" or a fixed clock (tests)   ARGV[2] hold id   ARGV[3] request id
-- ARGV[4]  actual price (micro-credits)  ARGV[5] hold ttl (ms)   ARGV[6] tenant name
-- ARGV     for KEYS[k], ARGV[4k+3..4k+6] = capacity_u, rate, per_ms, delta_u (as settle.lua)
-- Returns  {now_ms, seq of the settle event (0: settled before), balance, held, then the
--          events of the call, 9 values each}
-- A hold that expired before its settle (refunded by then) is charged the actual price in
-- full: the tenant pays what it used, once.
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local nk = #KEYS - 4
local now = clock_ms(ARGV[1])
local hold_id, rid, actual, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local st = credits_open(KEYS[nk + 1], KEYS[nk + 2], KEYS[nk + 3], KEYS[nk + 4], ARGV[6], now)
local v = redis.call('HGET', st.hk, hold_id)
local seq = 0
if v ~= 'S' then
    for k = 1, nk do
        local a = 4 * k + 3
        local c, r, p, d = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
        if d ~= 0 then
            local l, o, first, last, leases = load(redis.call('GET', KEYS[k]), c, r, p, now)
            l = l - d
            if l > c - o then l = c - o end
            store(KEYS[k], l, c, r, p, now, o, first, last, leases)
        end
    end
    local sa = v and string.match(v, '^(%d+) ')
    local amount = sa and tonumber(sa)
    if amount then
        st.held = st.held - amount
        seq = credits_event(st, amount - actual, 'settle', rid, '', '')
    else -- expired and refunded already (or never seen): charge what was used
        seq = credits_event(st, -actual, 'settle', rid, '', '')
    end
    redis.call('HSET', st.hk, hold_id, 'S')
    redis.call('ZADD', st.xk, now + ttl, hold_id)
end
credits_sweep(st, ttl)
credits_store(st)
local out = {now, seq, st.bal, st.held}
for i = 1, #st.events do out[#out + 1] = st.events[i] end
return out
