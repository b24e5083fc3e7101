-- tollgate: what hold.lua, commit.lua, change.lua and balance.lua share — a tenant's
-- balance, its holds, and the ledger event every change appends in the same call.
--
-- Keys of one tenant (one hash tag, '$' never appears in a limit name):
--   "<prefix>{<tenant>}:$credits"  hash: bal (what can be spent, micro-credits), held
--                                  (held by requests under way), seq (the last event's)
--   "<prefix>{<tenant>}:$holds"    hash: open hold id -> "<amount> <expiry_ms> <request id>"
--   "<prefix>{<tenant>}:$holdexp"  zset: open hold id by its expiry
--   "<prefix>{<tenant>}:$commits"  zset: ids of the commit.lua calls applied lately (by when
--                                  they are forgotten), so that a resent call is not applied
--                                  twice
--   "<prefix>{<tenant>}:$ledger"   stream: one entry per change, id "<seq>-0"
-- Events are returned to the caller too, 9 values each (seq, ts, delta, balance, held,
-- reason, request_id, idempotency_key, note), so that it ships them to Kafka or a file.
-- Money never expires: none of these keys has a TTL (a call id in $commits is dropped by the
-- first commit.lua call after it is forgotten).
local SWEEP_MAX = 64

local function credits_read(ck)
    local v = redis.call('HMGET', ck, 'bal', 'held', 'seq')
    return tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
end

-- A state object: the tenant's numbers, the events of this call.
local function credits_open(ck, hk, xk, sk, tenant, now)
    local bal, held, seq = credits_read(ck)
    return {ck = ck, hk = hk, xk = xk, sk = sk, tenant = tenant, now = now,
            bal = bal, held = held, seq = seq, events = {}, dirty = false}
end

local function credits_event(st, delta, reason, rid, idem, note)
    st.seq = st.seq + 1
    st.bal = st.bal + delta
    st.dirty = true
    local s = string.format('%d', st.seq)
    local d, b, h = string.format('%d', delta), string.format('%d', st.bal), string.format('%d', st.held)
    local ts = string.format('%d', st.now)
    redis.call('XADD', st.sk, s .. '-0', 'ts', ts, 'tenant', st.tenant, 'delta', d, 'balance', b,
               'held', h, 'reason', reason, 'request_id', rid or '', 'idempotency_key', idem or '',
               'note', note or '')
    local e = st.events
    e[#e + 1] = s; e[#e + 1] = ts; e[#e + 1] = d; e[#e + 1] = b; e[#e + 1] = h
    e[#e + 1] = reason; e[#e + 1] = rid or ''; e[#e + 1] = idem or ''; e[#e + 1] = note or ''
    return st.seq
end

-- Refunds the open holds past their expiry (whose gateway never settled them).
local function credits_sweep(st)
    local due = redis.call('ZRANGEBYSCORE', st.xk, '-inf', st.now, 'LIMIT', 0, SWEEP_MAX)
    for i = 1, #due do
        local id = due[i]
        local v = redis.call('HGET', st.hk, id)
        local sa, rid = nil, nil
        if v then sa, rid = string.match(v, '^(%d+) %d+ ?(.*)$') end
        if sa then
            local amount = tonumber(sa)
            st.held = st.held - amount
            credits_event(st, amount, 'hold_expired', rid, '', '')
        end
        redis.call('HDEL', st.hk, id)
        redis.call('ZREM', st.xk, id)
    end
end

local function credits_store(st)
    if st.dirty then
        redis.call('HSET', st.ck, 'bal', string.format('%d', st.bal), 'held',
                   string.format('%d', st.held), 'seq', string.format('%d', st.seq))
    end
end
