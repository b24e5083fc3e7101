-- tollgate: a tenant's balance as it stands, expired holds refunded first.
--
-- KEYS[1..4] $credits, $holds, $holdexp, $ledger of the tenant (_credits.lua)
-- ARGV[1] "" or a fixed clock (tests)   ARGV[2] tenant name
-- Returns {balance, held, seq, then the events of the sweep, 9 values each}
--@include ../../limiter/lua/_shared.lua
--@include _credits.lua
local st = credits_open(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], clock_ms(ARGV[1]))
credits_sweep(st)
credits_store(st)
local out = {st.bal, st.held, st.seq}
for i = 1, #st.events do out[#out + 1] = st.events[i] end
return out
