-- tollgate: an operator's change of a balance (top-up, or a negative adjustment), applied
-- once per Idempotency-Key.
--
-- KEYS[1..4] $credits, $holds, $holdexp, $ledger of the tenant (_credits.lua)
-- KEYS[5]    "<prefix>{<tenant>}:$idem:<key>": "<body hash> <seq>" of the change it made
-- ARGV[1] "" or a fixed clock (tests)   ARGV[2] amount (micro-credits, signed)
-- ARGV[3] note (the operator's reason)  ARGV[4] idempotency key   ARGV[5] body hash
-- ARGV[6] tenant name   ARGV[7] how long a key is remembered (ms)
-- ARGV[8] the most a balance may hold (micro-credits)
-- Returns {status (0 applied, 1 a repeat of the key's first change, 2 the key was used
--          with another body, 3 a negative change larger than the balance, 4 the balance
--          would pass ARGV[8]), seq of the
--          change's event, balance, held, then that event (9 values: when applied or
--          repeated), then the events of the sweep}
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local now = clock_ms(ARGV[1])
local amount, note, idem, hash = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local st = credits_open(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[6], now)
local prior = redis.call('GET', KEYS[5])
if prior then
    local h, s = string.match(prior, '^(%S+) (%d+)$')
    if h ~= hash then return {2, 0, st.bal, st.held} end
    local e = redis.call('XRANGE', st.sk, s .. '-0', s .. '-0')
    local out = {1, tonumber(s), st.bal, st.held}
    if e[1] then
        local f, m = e[1][2], {}
        for i = 1, #f, 2 do m[f[i]] = f[i + 1] end
        local ev = {s, m.ts, m.delta, m.balance, m.held, m.reason, m.request_id,
                    m.idempotency_key, m.note}
        for i = 1, 9 do out[#out + 1] = ev[i] or '' end
    end
    return out
end
credits_sweep(st)
if amount < 0 and st.bal + amount < 0 then
    credits_store(st)
    local out = {3, 0, st.bal, st.held}
    for i = 1, #st.events do out[#out + 1] = st.events[i] end
    return out
end
if amount > 0 and st.bal + amount > tonumber(ARGV[8]) then
    credits_store(st)
    local out = {4, 0, st.bal, st.held}
    for i = 1, #st.events do out[#out + 1] = st.events[i] end
    return out
end
local first = #st.events
local seq = credits_event(st, amount, amount >= 0 and 'topup' or 'adjustment', '', idem, note)
redis.call('SET', KEYS[5], hash .. ' ' .. seq, 'PX', ARGV[7])
credits_store(st)
local out = {0, seq, st.bal, st.held}
for i = first + 1, first + 9 do out[#out + 1] = st.events[i] end
for i = 1, first do out[#out + 1] = st.events[i] end
return out
