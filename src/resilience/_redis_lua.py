"""The server-side scripts of the Redis-backed policies (Lua 5.1, as Redis runs it).

Every decision is one script, so it is atomic on the server, and timed by
the server's clock (``TIME``), so the clocks of the hosts do not matter
(`given_now` makes a script that takes its ``now`` from the client instead:
for tests and simulations only, see ``RedisBackend(clock=...)``).
Floats travel and are stored as strings of 17 significant digits, which
read back as the same double (Redis turns a Lua number into an integer, and
Lua's ``tostring`` keeps only 14 digits: a tenth of a millisecond on the
server's clock). Time is cut in buckets as Python's ``now // width`` does
(``floordiv``), the way the in-process policies cut it.
Every script refreshes the TTL of the keys it writes: a policy nobody uses
any more vanishes after ``ttl`` seconds. The keys of one policy share a
hash tag, so they live in one Redis Cluster slot.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

#: The prologue of `given_now`: ``now`` is the script's last argument, sent by the client.
_GIVEN_NOW = """
local now = tonumber(ARGV[#ARGV])
"""

_HELPERS = """
local function num(x) return string.format('%.17g', x) end
-- Python's float floor division (its float_floor_div): the exact remainder first, so that
-- a time on a bucket's edge falls in the bucket the in-process policies put it in.
local function floordiv(a, b)
  local mod = math.fmod(a, b)
  local div = (a - mod) / b
  if mod ~= 0 and (b < 0) ~= (mod < 0) then div = div - 1 end
  if div == 0 then return 0 end
  local f = math.floor(div)
  if div - f > 0.5 then f = f + 1 end
  return f
end
"""


def given_now(script: str) -> str:
    """``script`` timed by its last argument (seconds, a string) instead of the server's TIME.

    For tests and simulations that drive the policies on a fake clock: every argument the
    script reads keeps its position, the clock's reading is appended after them.
    """
    if not script.startswith(_NOW):
        raise ValueError("not one of the scripts of this module")
    return _GIVEN_NOW + script[len(_NOW) :]


# -- CircuitBreaker -----------------------------------------------------------------------------
#
# KEYS[1]: the state (a hash); KEYS[2]: the window (a list of outcome codes for a count window,
# a hash of buckets "calls:failures:slow" for a time window).
# ARGV: 1 op ("a" acquire, "s" sync only, "t" transition, "m" metrics),
#   2 failure_ratio, 3 consecutive_failures, 4 slow_call_ratio ("" for none), 5 minimum_calls,
#   6 window_calls (""), 7 window_seconds (""), 8 window_buckets, 9 half_open_calls,
#   10 half_open_max_seconds, 11 half_open_rule ("f" first failure, "r" ratio),
#   12 break durations for trips 1, 2, ... (comma-separated; the last repeats),
#   13 records "permit:code:count,..." (in order), 14 releases "permit,...",
#   15 the state to force (op "t"), 16 ttl seconds.
# Returns {permit, state, epoch, retry_after, consecutive, calls, failures, slow, since, trips,
#   rejected, now} (floats as strings); permit -1 is a rejection.
CIRCUIT = (
    _NOW
    + _HELPERS
    + r"""
local S, W = KEYS[1], KEYS[2]
local op = ARGV[1]
local failure_ratio = tonumber(ARGV[2])
local consecutive_rule = tonumber(ARGV[3])
local slow_ratio = tonumber(ARGV[4])
local minimum = tonumber(ARGV[5])
local window_calls = tonumber(ARGV[6])
local window_seconds = tonumber(ARGV[7])
local buckets = tonumber(ARGV[8])
local half_open_calls = tonumber(ARGV[9])
local half_open_max = tonumber(ARGV[10])
local ratio_rule = ARGV[11] == 'r'
local ttl = tonumber(ARGV[16])

local breaks = {}
for d in string.gmatch(ARGV[12], '[^,]+') do breaks[#breaks + 1] = tonumber(d) end

local h = redis.call('HGETALL', S)
local st = {}
for i = 1, #h, 2 do st[h[i]] = h[i + 1] end
local state = st.s or 'closed'
local epoch = tonumber(st.e or '0')
local since = tonumber(st.since or '') or now
local open_until = tonumber(st.ou or '0')
local streak = tonumber(st.st or '0')
local trips = tonumber(st.tr or '0')
local rejected = tonumber(st.rj or '0')
local in_flight = tonumber(st.inf or '0')
local t_calls = tonumber(st.tc or '0')
local t_fail = tonumber(st.tf or '0')
local t_slow = tonumber(st.ts or '0')
local consecutive = tonumber(st.cf or '0')
local w_calls = tonumber(st.wc or '0')
local w_fail = tonumber(st.wf or '0')
local w_slow = tonumber(st.ws or '0')
local dirty = st.s == nil  -- a new breaker: its state begins now, when the fleet first asks

-- the window -------------------------------------------------------------------------------
local width = window_seconds and (window_seconds / buckets) or nil
local function time_counts()
  local bucket = floordiv(now, width)
  local oldest = bucket - buckets + 1
  local all = redis.call('HGETALL', W)
  local c, f, s = 0, 0, 0
  for i = 1, #all, 2 do
    local n = tonumber(all[i])
    if n < oldest then
      redis.call('HDEL', W, all[i])
    else
      local a, b, d = string.match(all[i + 1], '(%d+):(%d+):(%d+)')
      c, f, s = c + tonumber(a), f + tonumber(b), s + tonumber(d)
    end
  end
  return c, f, s
end

local function counts()
  if width then return time_counts() end
  return w_calls, w_fail, w_slow
end

local function add_time(code, count)
  local bucket = num(floordiv(now, width))
  local old = redis.call('HGET', W, bucket)
  local a, b, d = 0, 0, 0
  if old then
    local x, y, z = string.match(old, '(%d+):(%d+):(%d+)')
    a, b, d = tonumber(x), tonumber(y), tonumber(z)
  end
  a = a + count
  if code % 4 >= 2 then b = b + count end
  if code >= 4 then d = d + count end
  redis.call('HSET', W, bucket, a .. ':' .. b .. ':' .. d)
  if not old then redis.call('EXPIRE', W, ttl) end
end

local function add_count(code, count)
  local n = math.min(count, window_calls)
  local chunk = {}
  local length = 0
  for i = 1, n do
    chunk[#chunk + 1] = code
    if #chunk == 1000 or i == n then
      length = redis.call('RPUSH', W, unpack(chunk))
      chunk = {}
    end
  end
  w_calls = w_calls + n
  if code % 4 >= 2 then w_fail = w_fail + n end
  if code >= 4 then w_slow = w_slow + n end
  if length == n then redis.call('EXPIRE', W, ttl) end  -- a new window
  local over = length - window_calls
  while over > 0 do
    local take = math.min(over, 1000)
    local gone = redis.call('LPOP', W, take)
    for _, g in ipairs(gone) do
      local v = tonumber(g)
      w_calls = w_calls - 1
      if v % 4 >= 2 then w_fail = w_fail - 1 end
      if v >= 4 then w_slow = w_slow - 1 end
    end
    over = over - take
  end
end

local function clear_window()
  redis.call('DEL', W)
  w_calls, w_fail, w_slow = 0, 0, 0
end

-- the state machine ------------------------------------------------------------------------
local function enter(new)
  state = new
  epoch = epoch + 1
  since = now
  dirty = true
end

local function trips_on(c, f, s)
  if failure_ratio and f / c >= failure_ratio then return true end
  return slow_ratio ~= nil and s / c >= slow_ratio
end

local function open(new_streak)
  streak = new_streak
  trips = trips + 1
  local d = breaks[math.min(new_streak, #breaks)]
  open_until = now + d
  enter('open')
end

local function close()
  streak = 0
  consecutive = 0
  clear_window()
  enter('closed')
end

local function should_trip()
  if consecutive_rule and consecutive >= consecutive_rule then return true end
  local c, f, s = counts()
  if c < minimum then return false end
  return trips_on(c, f, s)
end

-- Close or reopen a half-open breaker if the trials done decide it: when a trial ends, and
-- when none is out (a lower half_open_calls, come with a request, may leave none to wait for).
local function judge()
  if not ratio_rule then
    if t_fail + t_slow > 0 then open(streak + 1)
    elseif t_calls >= half_open_calls then close() end
    return
  end
  -- Judge all half_open_calls trials together (all those done, if more), as soon as those
  -- left cannot change it.
  local calls = math.max(half_open_calls, t_calls)
  if trips_on(calls, t_fail, t_slow) then open(streak + 1); return end
  local left = calls - t_calls
  if left <= 0 or not trips_on(calls, t_fail + left, t_slow + left) then close() end
end

local function record_trial(code)
  in_flight = math.max(0, in_flight - 1)
  t_calls = t_calls + 1
  if code % 4 >= 2 then t_fail = t_fail + 1; consecutive = consecutive + 1
  else consecutive = 0 end
  if code >= 4 then t_slow = t_slow + 1 end
  judge()
end

local function record(permit, code, count)
  if math.floor(permit / 2) ~= epoch then return end
  dirty = true
  if state == 'half_open' then
    if permit % 2 == 1 then
      for _ = 1, count do
        if state ~= 'half_open' then return end
        record_trial(code)
      end
    end
    return
  end
  if width then add_time(code, count) else add_count(code, count) end
  if code % 4 >= 2 then consecutive = consecutive + count else consecutive = 0 end
  if state == 'closed' and should_trip() then open(1) end
end

-- the outcomes and the trials given back, in order
for item in string.gmatch(ARGV[13], '[^,]+') do
  local p, c, n = string.match(item, '(%-?%d+):(%d+):(%d+)')
  record(tonumber(p), tonumber(c), tonumber(n))
end
for item in string.gmatch(ARGV[14], '[^,]+') do
  local p = tonumber(item)
  if p % 2 == 1 and math.floor(p / 2) == epoch and state == 'half_open' then
    in_flight = math.max(0, in_flight - 1)
    dirty = true
  end
end
if state == 'half_open' and in_flight == 0 then judge() end  -- under this request's rules

local permit = -1
if op == 't' then
  local target = ARGV[15]
  if target == 'closed' then
    close()
  else
    enter(target)  -- isolated or disabled: the window is kept (disabled goes on measuring)
  end
  in_flight, t_calls, t_fail, t_slow = 0, 0, 0, 0
elseif op == 'a' then
  if state == 'closed' or state == 'disabled' then
    permit = epoch * 2
  else
    if state == 'open' and now >= open_until then
      enter('half_open')
      in_flight, t_calls, t_fail, t_slow = 0, 0, 0, 0
    end
    if state == 'half_open' then
      if in_flight + t_calls < half_open_calls then
        in_flight = in_flight + 1
        permit = epoch * 2 + 1
        dirty = true
      elseif in_flight > 0 and now - since >= half_open_max then
        open(streak + 1)
      end
    end
    if permit < 0 then
      rejected = rejected + 1
      dirty = true
    end
  end
end

if dirty then
  redis.call('HSET', S, 's', state, 'e', epoch, 'since', num(since),
    'ou', num(open_until), 'st', streak, 'tr', trips, 'rj', rejected, 'inf', in_flight,
    'tc', t_calls, 'tf', t_fail, 'ts', t_slow, 'cf', consecutive, 'wc', w_calls, 'wf', w_fail,
    'ws', w_slow)
end
-- The keys' TTL, renewed a few times per TTL rather than at every call (two commands less).
-- (A window key made since then got its TTL when it was made.)
local renewed = tonumber(st.x or '0')
if now - renewed >= ttl / 4 then
  redis.call('HSET', S, 'x', num(now))
  redis.call('EXPIRE', S, ttl)
  redis.call('EXPIRE', W, ttl)  -- nothing when there is no window yet
end

local retry_after = -1
if state == 'open' then retry_after = math.max(0, open_until - now) end
local c, f, s = 0, 0, 0
if op == 'm' then
  c, f, s = counts()
  if state == 'half_open' then c, f, s = t_calls, t_fail, t_slow end
end
return {permit, state, epoch, num(retry_after), consecutive, c, f, s, num(now - since),
  trips, rejected, num(now)}
"""
)

# -- Throttle: GCRA, the bucket as one "theoretical arrival time" ----------------------------
#
# KEYS[1]: the bucket: its TAT (seconds, server time) and the seconds per token and burst it
#   was kept with, "tat|interval|burst" (a bare TAT, as older versions kept it, is read as kept
#   with this request's settings). New settings keep the tokens, no more than the new burst
#   (tokens reserved by waiters stay reserved), as `Throttle.update` does in process.
# ARGV: 1 op ("r" reserve: now, or wait up to max_wait; "t" try: now or never; "l" lease: up
#   to ARGV[8] tokens now if at least cost are there, else as "r"; "g" give back cost tokens;
#   "m" metrics), 2 seconds per token, 3 burst, 4 cost, 5 max_wait (-1: no limit),
#   6 initial tokens (a new bucket), 7 ttl, 8 tokens wanted (lease).
# Returns {tokens granted (-1: refused; a call may cost 0), seconds to wait for them (or,
#   refused, until they would come), tokens in the bucket now}.
THROTTLE = (
    _NOW
    + _HELPERS
    + r"""
local K = KEYS[1]
local op = ARGV[1]
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local initial = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])

local raw = redis.call('GET', K)
local stored, kept_interval, kept_burst
if raw then
  local a, b, c = string.match(raw, '^([^|]+)|([^|]+)|([^|]+)$')
  if a then
    stored, kept_interval, kept_burst = tonumber(a), tonumber(b), tonumber(c)
  else
    stored = tonumber(raw)
  end
end
local tat = stored or now + (burst - initial) * interval
if tat < now then tat = now end
local changed = kept_interval ~= nil and (kept_interval ~= interval or kept_burst ~= burst)
if changed then
  -- From the time the tokens owed take (tat - now: exact, the two are close), not from
  -- absolute times, whose rounding a slower rate would stretch.
  local held = kept_burst - (tat - now) / kept_interval
  tat = now + (burst - math.min(held, burst)) * interval
end
local saved = false
local function tokens() return (now + burst * interval - tat) / interval end
local function save()
  redis.call('SET', K, num(tat) .. '|' .. num(interval) .. '|' .. num(burst), 'EX', ttl)
  saved = true
end

local granted, wait = -1, 0  -- -1: refused (a grant may be of 0 tokens)
if op == 'l' and tokens() + 1e-9 >= cost then
  granted = math.max(cost, math.min(tonumber(ARGV[8]), math.floor(tokens() + 1e-9)))
  tat = tat + granted * interval
  save()
elseif op == 'r' or op == 't' or op == 'l' then
  local new_tat = tat + cost * interval
  wait = new_tat - burst * interval - now
  -- As in the process: a wait of a nanosecond and four ulps of the clock is none (the sums
  -- of absolute times round by that much; on the epoch clock an ulp is 0.24 us), and one
  -- that long past max_wait is within it.
  local _, exponent = math.frexp(now)
  local slack = 1e-9 + 4 * 2 ^ (exponent - 53)
  if wait <= slack then
    wait = 0
    granted = cost
    tat = new_tat
    save()
  elseif op ~= 't' and (max_wait < 0 or wait - max_wait <= slack) then
    granted = cost
    tat = new_tat
    save()
  end
elseif op == 'g' then
  tat = math.max(now, tat - cost * interval)
  save()
end
-- A new bucket is kept from its first request, whatever it was: it fills from then on (not
-- kept, a bucket that only saw refusals would stay at its initial tokens for ever).
-- New settings are kept at once too: the tokens refill at the new rate from now on.
if (stored == nil or changed) and not saved then save() end
return {num(granted), num(wait), num(tokens())}
"""
)

# -- Bulkhead: holders as leases in a sorted set, scored by their expiry ---------------------
#
# KEYS[1]: the holders (a sorted set). ARGV: 1 limit, 2 lease seconds, 3 ttl, 4 a member to
#   admit ("" for none), 5 members leaving (comma-separated), 6 members whose leases go on.
# Returns {admitted (1/0), holders now}.
BULKHEAD = (
    _NOW
    + _HELPERS
    + r"""
local K = KEYS[1]
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', K, '-inf', num(now))
for m in string.gmatch(ARGV[5], '[^,]+') do redis.call('ZREM', K, m) end
for m in string.gmatch(ARGV[6], '[^,]+') do
  redis.call('ZADD', K, 'XX', num(now + lease), m)
end
local admitted = 0
if ARGV[4] ~= '' and redis.call('ZCARD', K) < limit then
  redis.call('ZADD', K, num(now + lease), ARGV[4])
  admitted = 1
end
local holders = redis.call('ZCARD', K)
if holders > 0 then redis.call('EXPIRE', K, ttl) end
return {admitted, holders}
"""
)

# -- RetryBudget: deposits and withdrawals per time slice ------------------------------------
#
# KEYS[1]: the slices (a hash: "d<n>" deposits, "w<n>" withdrawals of slice n).
# ARGV: 1 op ("d" deposit only, "w" deposit then withdraw one retry, "m" metrics),
#   2 deposits to add, 3 ratio, 4 min_per_second, 5 ttl (the budget's window), 6 slices,
#   7 key ttl.
# Returns {allowed (1/0), balance (retries allowed now, a string), deposits, withdrawals}.
BUDGET = (
    _NOW
    + _HELPERS
    + r"""
local K = KEYS[1]
local op = ARGV[1]
local add = tonumber(ARGV[2])
local ratio = tonumber(ARGV[3])
local min_per_second = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local slices = tonumber(ARGV[6])
local key_ttl = tonumber(ARGV[7])
local width = window / slices
local slice = floordiv(now, width)
if add > 0 then redis.call('HINCRBY', K, 'd' .. slice, add) end
local all = redis.call('HGETALL', K)
local deposits, withdrawals = 0, 0
for i = 1, #all, 2 do
  local n = tonumber(string.sub(all[i], 2))
  if n <= slice - slices then
    redis.call('HDEL', K, all[i])
  elseif string.sub(all[i], 1, 1) == 'd' then
    deposits = deposits + tonumber(all[i + 1])
  else
    withdrawals = withdrawals + tonumber(all[i + 1])
  end
end
local balance = deposits * ratio + min_per_second * window - withdrawals
local allowed = 0
if op == 'w' and balance >= 1 then
  redis.call('HINCRBY', K, 'w' .. slice, 1)
  withdrawals = withdrawals + 1
  balance = balance - 1
  allowed = 1
end
-- (deposits just added are in #all: their slice is never the one dropped)
if #all > 0 or allowed == 1 then redis.call('EXPIRE', K, key_ttl) end
return {allowed, num(balance), deposits, withdrawals}
"""
)
