"""The lease script against a model of its invariant, on a real redis-server: random
sequences of grants, local spends, reports, returns, refunds, expiries, refills and strict
checks by several gateways on one bucket, with a fixed clock. After every step:
L + O <= capacity, O is the sum of the leases, each live lease is what its gateway may
still admit plus what it spent unreported; at the end, what was admitted (net of refunds)
in every window [a, b] is at most capacity + rate * (b - a)."""
import os
import random
import re

import harness as h

LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "limiter", "lua")
INCLUDE = re.compile(r"^--@include (\S+)\n", re.M)
U = 1000000


def script(name):
    """A script as embedded: its --@include lines replaced by the files they name."""
    with open(os.path.join(LUA_DIR, name)) as f:
        text = f.read()

    def sub(m):
        with open(os.path.join(LUA_DIR, m.group(1))) as g:
            return g.read()
    return INCLUDE.sub(sub, text)


class Bucket:
    """One bucket's parameters: capacity and rate in units, per_ms."""

    def __init__(self, cap, rate, per_ms):
        self.cap_u, self.rate, self.per_ms = cap * U, rate, per_ms

    def args(self):
        return [self.cap_u, repr(float(self.rate)), self.per_ms]


def parse(v, cap_u):
    """(L, O, {gateway: (units, expiry)}) of a stored value; a missing key is full."""
    if v is None:
        return cap_u, 0, {}
    parts = v.split(" ")
    level = int(parts[0])
    if len(parts) == 2:
        return level, 0, {}
    o = int(parts[2])
    leases = {}
    for entry in parts[5:]:
        g, rest = entry.split("=")
        units, exp = rest.split("@")
        leases[g] = (int(units), int(exp))
    return level, o, leases


class Gateway:
    """What a gateway keeps of its lease: R (may still admit), S (spent, unreported), and
    until when it may admit from it: ttl after it sent the sync that renewed it (Redis
    renews from its own later time, so the gateway stops first)."""

    def __init__(self, gid):
        self.gid, self.r, self.s, self.until = gid, 0, 0, 0

    def live(self, now):
        return now < self.until


def run_sequence(cli, seed, steps=400):
    rnd = random.Random(seed)
    b = Bucket(cap=rnd.choice([10, 100, 1000]), rate=rnd.choice([1, 5, 50]), per_ms=1000)
    key = "lp%d:{t}:b" % seed
    lease_sha = cli.cmd("SCRIPT", "LOAD", script("lease.lua"))
    bucket_sha = cli.cmd("SCRIPT", "LOAD", script("bucket.lua"))
    settle_sha = cli.cmd("SCRIPT", "LOAD", script("settle.lua"))
    gws = [Gateway("gw%d" % i) for i in range(3)]
    ttl = rnd.choice([200, 1000])
    now = 1000000
    admitted = []  # (time, units) of every admission, local or strict
    for step in range(steps):
        op = rnd.random()
        g = rnd.choice(gws)
        if op < 0.25:  # local spends within R, while the lease is live
            while g.live(now) and g.r > 0 and rnd.random() < 0.7:
                c = rnd.randint(1, max(1, min(g.r, b.cap_u // 4)))
                if c > g.r:
                    break
                g.r -= c
                g.s += c
                admitted.append((now, c))
        elif op < 0.30 and g.live(now) and g.r + g.s > 0:  # a refund on a live lease
            d = refund(rnd, b, admitted)
            g.r += d
            g.s -= d
            admitted.append((now, -d))
        elif op < 0.60:  # sync: report, maybe return some, ask for more; maybe with a check
            ret = rnd.randint(0, g.r) if g.r > 0 and rnd.random() < 0.3 else 0
            want = rnd.randint(0, b.cap_u)
            minimum = rnd.choice([0, b.cap_u // 50])
            check = rnd.random() < 0.3
            cost = rnd.randint(1, b.cap_u // 3) if check else 0
            if check:  # a strict check from a gateway returns its whole lease first
                ret = g.r
            held = g.r + g.s
            g.r -= ret
            args = [now, g.gid, ttl, "1" if check else "0"] + b.args() + [held, g.s, ret, want, minimum]
            if check:
                args.append(cost)
            g.s = 0
            out = cli.cmd("EVALSHA", lease_sha, 1, key, *[str(a) for a in args])
            assert out[0] == now
            allowed, granted, level, seen, expired, own = out[1], out[2], out[3], out[4], out[5], out[6]
            if expired:
                g.r = 0
            g.r += granted
            g.until = now + ttl
            if check:
                assert allowed in (0, 1)
                if allowed:
                    admitted.append((now, cost))
            assert granted >= 0 and (granted == 0 or granted >= minimum)
            assert own == g.r, (seed, step, own, g.r, out)
        elif op < 0.75:  # a strict check by a gateway without its lease (bucket.lua)
            cost = rnd.randint(1, b.cap_u // 3)
            rows = struct_rows([cost, 0])  # the bucket's cost, then the class (0: interactive)
            out = cli.cmd("EVALSHA", bucket_sha, 1, key, str(now), *[str(a) for a in b.args()], "0", "1",
                          rows)
            if out[1] == 1:
                admitted.append((now, cost))
        elif op < 0.80:  # a strict refund (settle.lua)
            d = refund(rnd, b, admitted)
            cli.cmd("EVALSHA", settle_sha, 1, key, *[str(a) for a in b.args()], str(-d), str(now))
            admitted.append((now, -d))
        elif op < 0.85:  # a gateway dies: its lease is never reported again
            g.r, g.s = 0, 0
            g.gid = g.gid.split(".")[0] + ".%d" % step
        else:  # time passes (past ttl sometimes)
            now += rnd.choice([1, 10, 100, ttl + 1])
        v = cli.cmd("GET", key)
        level, o, leases = parse(v, b.cap_u)
        assert level + o <= b.cap_u, (seed, step, v)
        assert o == sum(u for u, _ in leases.values()), (seed, step, v)
        for gw in gws:  # a live lease is what the gateway may admit plus what it owes
            units, exp = leases.get(gw.gid, (0, 0))
            if exp > now:
                assert units == gw.r + gw.s, (seed, step, gw.gid, units, gw.r, gw.s, v)
    check_windows(admitted, b)
    return len(admitted)


def refund(rnd, b, admitted):
    """A refund of at most what was admitted and not yet refunded."""
    net = sum(u for _, u in admitted)
    return rnd.randint(0, max(0, min(b.cap_u // 20, net)))


def struct_rows(costs):
    import struct
    return struct.pack("<" + "d" * len(costs), *[float(c) for c in costs])


def check_windows(admitted, b):
    """Admitted (net of settles) in every window [a, b] <= capacity + rate * (b - a)."""
    per_time = {}
    for t, u in admitted:
        per_time[t] = per_time.get(t, 0) + u
    times = sorted(per_time)
    prefix = [0]
    for t in times:
        prefix.append(prefix[-1] + per_time[t])
    for i, a in enumerate(times):
        for j in range(i, len(times)):
            window = prefix[j + 1] - prefix[i]
            bound = b.cap_u + b.rate * U * (times[j] - a) / b.per_ms
            assert window <= bound + 1, (a, times[j], window, bound)


def test_lease_invariant_random_sequences():
    redis = h.RedisServer().start()
    cli = h.RedisClient(redis.port)
    n = 0
    for seed in range(200):
        n += run_sequence(cli, seed)
    assert n > 5000


def test_written_off_lease_is_room_only_from_its_expiry():
    """A lease that expires unreported was spent at its expiry: the bucket refills from
    then, not from when it was last written."""
    redis = h.RedisServer().start()
    cli = h.RedisClient(redis.port)
    lease_sha = cli.cmd("SCRIPT", "LOAD", script("lease.lua"))
    bucket_sha = cli.cmd("SCRIPT", "LOAD", script("bucket.lua"))
    b = Bucket(cap=10, rate=1, per_ms=1000)
    t0, ttl = 5000000, 6000
    out = cli.cmd("EVALSHA", lease_sha, 1, "wo:{t}:b", str(t0), "gw", str(ttl), "0",
                  *[str(a) for a in b.args()], "0", "0", "0", str(5 * U), "0")
    assert out[2] == 5 * U and out[3] == 5 * U, out  # half of the bucket: a share, not all
    now = t0 + ttl + 1  # the gateway died: its 5 units are gone at t0 + ttl
    out = cli.cmd("EVALSHA", bucket_sha, 1, "wo:{t}:b", str(now), *[str(a) for a in b.args()], "0",
                  "1", struct_rows([10 * U, 0]))
    assert out[1] == 0 and out[2] == 5 * U + 1000, out  # 5 units, plus 1 ms of refill
    out = cli.cmd("GET", "wo:{t}:b")
    assert out.split(" ")[2] == str(5 * U), out  # nothing written by a denied check


if __name__ == "__main__":
    h.main()
