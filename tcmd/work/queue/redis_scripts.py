"""The Lua text of RedisJobQueue: every state transition of a job is one of these scripts.

Each script gets ``KEYS[1]`` = the job index (so a cluster client routes it to the slot of
the queue's hash tag) and ``ARGV[1]`` = the queue's base, e.g. ``tcm:{q}:``; every key a
script touches is that base plus a suffix, so all of them share one hash tag. Redis
``TIME`` is the only clock. Scripts that can refuse return a status table
(``{'ok', …}``, ``{'notfound'}``, ``{'stale', state, token, lease_until}``,
``{'conflict', state}``) rather than an error reply, so one refused call in a pipeline
does not poison the others. docs/redis.md ("Job queue") lists the keys.
"""

from __future__ import annotations

# Helpers shared by every script: the keys, the clock, the counters behind stats().
_PRELUDE = r"""
local B = ARGV[1]
local JOBS, SEQ, FENCE = B .. 'jobs', B .. 'seq', B .. 'fence'
local POOL, DELAYED, LEASES = B .. 'pool', B .. 'delayed', B .. 'leases'
local WAKE, STATS, DONE = B .. 'wake', B .. 'stats', B .. 'done'
local WAITS, RUNS = B .. 'waits', B .. 'runs'
local WAKE_MAX, SAMPLES, WINDOW_MS = 1024, 1000, 60000
local PRIO_SHIFT = 1125899906842624 -- 2^50: score = priority * 2^50 + seq, exact in a double

local function clock()
  local t = redis.call('TIME')
  local sec, usec = tonumber(t[1]), tonumber(t[2])
  return sec * 1000 + math.floor(usec / 1000), t[1] .. '.' .. string.format('%06d', usec)
end

-- integers as exact decimal text (a bare Lua number argument may be rounded to 14 digits)
local function int(x) return string.format('%.0f', x) end

local function jkey(id) return B .. 'job:' .. id end

local function ready_key(mgr)
  if mgr == '' then return POOL end
  return B .. 'ready:' .. mgr
end

-- the fields every transition needs, with the manager '' for the pool
local function load(id)
  local f = redis.call('HMGET', jkey(id), 'state', 'manager_id', 'priority', 'seq', 'attempts',
    'token', 'lease_until', 'started_at', 'queued_at', 'next_retry_at', 'reruns')
  if not f[1] then return nil end
  return {id = id, state = f[1], mgr = f[2] or '', prio = tonumber(f[3]), seq = tonumber(f[4]),
    attempts = tonumber(f[5]), token = f[6], lease_until = tonumber(f[7]), started_at = f[8],
    queued_at = f[9], next_retry_at = f[10], reruns = tonumber(f[11] or '0')}
end

local FINAL = {completed = true, failed = true, cancelled = true}
local WAITING = {queued = true, retrying = true}

local function count(j, n)
  redis.call('HINCRBY', STATS, 'state:' .. j.state, n)
  if FINAL[j.state] then
    redis.call('HINCRBY', STATS, 'fin:' .. j.state .. ':' .. j.mgr, n)
  elseif WAITING[j.state] then
    redis.call('HINCRBY', STATS, 'prio:' .. j.prio, n)
    redis.call('HINCRBY', STATS, 'wait:' .. j.mgr, n)
  end
end

-- move j to state, applying field changes ({name, value, …}; value false: delete the field)
local function move(j, state, changes)
  count(j, -1)
  local k = jkey(j.id)
  local set, del = {'state', state}, {}
  for i = 1, #changes, 2 do
    if changes[i + 1] == false then
      del[#del + 1] = changes[i]
    else
      set[#set + 1] = changes[i]
      set[#set + 1] = changes[i + 1]
    end
  end
  redis.call('HSET', k, unpack(set))
  if #del > 0 then redis.call('HDEL', k, unpack(del)) end
  j.state = state
  count(j, 1)
end

local function make_ready(j)
  redis.call('ZADD', ready_key(j.mgr), int(j.prio * PRIO_SHIFT + j.seq), j.id)
end

local function wake(n)
  for _ = 1, n do redis.call('LPUSH', WAKE, '1') end
  redis.call('LTRIM', WAKE, 0, WAKE_MAX - 1)
end

local function sample(list, value)
  redis.call('LPUSH', list, value)
  redis.call('LTRIM', list, 0, SAMPLES - 1)
end

local function duration_ms(j, now_s)
  if not j.started_at then return false end
  return tostring((tonumber(now_s) - tonumber(j.started_at)) * 1000)
end

-- retrying jobs whose time has come → queued (queued_at = their due time)
local function promote(ms)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', int(ms), 'LIMIT', 0, 256)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    local j = load(id)
    if j and j.state == 'retrying' then
      move(j, 'queued', {'queued_at', j.next_retry_at, 'next_retry_at', false})
      make_ready(j)
    end
  end
  return #due
end

-- active jobs whose lease ran out (lease_until <= now) → queued, reruns + 1
local function reap(ms, now_s)
  local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', int(ms), 'LIMIT', 0, 256)
  for _, id in ipairs(expired) do
    redis.call('ZREM', LEASES, id)
    local j = load(id)
    if j and j.state == 'active' then
      move(j, 'queued', {'reruns', tostring(j.reruns + 1), 'queued_at', now_s, 'node', false,
        'lease_until', false})
      make_ready(j)
    end
  end
  if #expired > 0 then wake(#expired) end
  return expired
end

-- a lease holder's call is valid while the job is active, the token its, the lease running
local function check_lease(j, token, ms)
  if not j then return {'notfound'} end
  if j.state ~= 'active' or j.token ~= token or j.lease_until <= ms then
    return {'stale', j.state, j.token or '', tostring(j.lease_until or '')}
  end
  return nil
end
"""

# ARGV: base, job id, manager ('' pool), priority, field/value pairs of the new job.
# → {seq, queued_at} or {} (it exists)
ENQUEUE = (
    _PRELUDE
    + r"""
local id = ARGV[2]
local k = jkey(id)
if redis.call('EXISTS', k) == 1 then return {} end
local ms, now_s = clock()
local seq = redis.call('INCR', SEQ)
local fields = {'state', 'queued', 'seq', seq, 'queued_at', now_s, unpack(ARGV, 5)}
redis.call('HSET', k, unpack(fields))
redis.call('ZADD', JOBS, seq, id)
local j = {id = id, state = 'queued', mgr = ARGV[3], prio = tonumber(ARGV[4]), seq = seq}
count(j, 1)
make_ready(j)
wake(1)
return {seq, now_s}
"""
)

# ARGV: base, manager id, node id, n, lease_ms. → a list of the claimed jobs' HGETALLs
CLAIM = (
    _PRELUDE
    + r"""
local mgr, node, n, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local ms, now_s = clock()
promote(ms)
reap(ms, now_s)
local mine, out = ready_key(mgr), {}
for _ = 1, n do
  local a = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
  local b = redis.call('ZRANGE', POOL, 0, 0, 'WITHSCORES')
  local key, id = mine, a[1]
  if not a[1] or (b[1] and tonumber(b[2]) < tonumber(a[2])) then key, id = POOL, b[1] end
  if not id then break end
  redis.call('ZREM', key, id)
  local j = load(id)
  local token = redis.call('INCR', FENCE)
  local deadline = int(ms + lease_ms)
  move(j, 'active', {'attempts', tostring(j.attempts + 1), 'started_at', now_s,
    'token', tostring(token), 'node', node, 'lease_until', deadline, 'instance_id', false})
  redis.call('ZADD', LEASES, deadline, id)
  sample(WAITS, tostring((tonumber(now_s) - tonumber(j.queued_at)) * 1000))
  out[#out + 1] = redis.call('HGETALL', jkey(id))
end
return out
"""
)

# ARGV: base, job id, token, lease_ms. → {'ok', lease_until} or a refusal
EXTEND = (
    _PRELUDE
    + r"""
local id, token, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ms = clock()
local j = load(id)
local refused = check_lease(j, token, ms)
if refused then return refused end
local deadline = int(ms + lease_ms)
redis.call('HSET', jkey(id), 'lease_until', deadline)
redis.call('ZADD', LEASES, deadline, id)
return {'ok', deadline}
"""
)

# ARGV: base, job id, token, has result ('1'/'0'), result, extra JSON to merge ('' none),
# return the job ('1'/'0') → {'ok', HGETALL} / {'ok'} or a refusal
ACK = (
    _PRELUDE
    + r"""
local id, token = ARGV[2], ARGV[3]
local ms, now_s = clock()
local j = load(id)
local refused = check_lease(j, token, ms)
if refused then return refused end
local k = jkey(id)
local result = false
if ARGV[4] == '1' then result = ARGV[5] end
local changes = {'finished_at', now_s, 'result', result, 'duration_ms', duration_ms(j, now_s),
  'lease_until', false}
if ARGV[6] ~= '' then
  local extra = cjson.decode(redis.call('HGET', k, 'extra') or '{}')
  for name, value in pairs(cjson.decode(ARGV[6])) do extra[name] = value end
  changes[#changes + 1] = 'extra'
  changes[#changes + 1] = cjson.encode(extra)
end
move(j, 'completed', changes)
redis.call('ZREM', LEASES, id)
local d = duration_ms(j, now_s)
if d then sample(RUNS, d) end
redis.call('ZADD', DONE, int(ms), id)
redis.call('ZREMRANGEBYSCORE', DONE, '-inf', int(ms - WINDOW_MS))
if ARGV[7] == '1' then return {'ok', redis.call('HGETALL', k)} end
return {'ok'}
"""
)

# ARGV: base, job id, token, error, jitter u in [0, 1]. Backoff as backoff.retry_delay_s:
# u * min(cap, base * 2^(attempt-1)).
FAIL = (
    _PRELUDE
    + r"""
local id, token, err, u = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ms, now_s = clock()
local j = load(id)
local refused = check_lease(j, token, ms)
if refused then return refused end
local k = jkey(id)
local r = cjson.decode(redis.call('HGET', k, 'spec')).retry
local limit, base, cap = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
local d = duration_ms(j, now_s)
if j.attempts < limit then
  local ceiling = math.min(cap, base * 2 ^ math.min(j.attempts - 1, 64))
  local due = ms + u * math.max(ceiling, 0)
  move(j, 'retrying', {'next_retry_at', string.format('%.6f', due / 1000), 'last_error', err,
    'duration_ms', d, 'lease_until', false})
  redis.call('ZADD', DELAYED, string.format('%.3f', due), id)
else
  move(j, 'failed', {'finished_at', now_s, 'last_error', err, 'duration_ms', d,
    'lease_until', false})
end
redis.call('ZREM', LEASES, id)
if d then sample(RUNS, d) end
return {'ok', redis.call('HGETALL', k)}
"""
)

# cancel / give_up. ARGV: base, job id, final state, error ('' none). A final job: unchanged.
FINISH = (
    _PRELUDE
    + r"""
local id, state, err = ARGV[2], ARGV[3], ARGV[4]
local ms, now_s = clock()
local j = load(id)
if not j then return {'notfound'} end
local k = jkey(id)
if FINAL[j.state] then return {'ok', redis.call('HGETALL', k)} end
local changes = {'finished_at', now_s, 'next_retry_at', false, 'lease_until', false}
if err ~= '' then
  changes[#changes + 1] = 'last_error'
  changes[#changes + 1] = err
end
local was = j.state
if was == 'active' then
  local d = duration_ms(j, now_s)
  changes[#changes + 1] = 'duration_ms'
  changes[#changes + 1] = d
  if d then sample(RUNS, d) end
end
move(j, state, changes)
redis.call('ZREM', LEASES, id)
redis.call('ZREM', DELAYED, id)
redis.call('ZREM', ready_key(j.mgr), id)
return {'ok', redis.call('HGETALL', k)}
"""
)

# ARGV: base. → the ids whose expired leases went back to ready
REAP = (
    _PRELUDE
    + r"""
local ms, now_s = clock()
promote(ms)
return reap(ms, now_s)
"""
)

# ARGV: base. → ms until the earliest retry or lease deadline (0: due now), -1 when none
NEXT_DUE = (
    _PRELUDE
    + r"""
local ms = clock()
local best = -1
for _, key in ipairs({DELAYED, LEASES}) do
  local top = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if top[1] then
    local left = math.max(tonumber(top[2]) - ms, 0)
    if best < 0 or left < best then best = left end
  end
end
return int(best)
"""
)

# ARGV: base. → {HGETALL stats, wait samples, run samples, completions in the last minute}
STATS = (
    _PRELUDE
    + r"""
local ms = clock()
return {redis.call('HGETALL', STATS), redis.call('LRANGE', WAITS, 0, -1),
  redis.call('LRANGE', RUNS, 0, -1), redis.call('ZCOUNT', DONE, int(ms - WINDOW_MS), '+inf')}
"""
)

# ARGV: base, n, floor. INCRBY ids:job n, but never ending at or below floor + n.
# → the last id number handed out
IDS_ABOVE = r"""
local k = ARGV[1] .. 'ids:job'
local n, floor = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('INCRBY', k, n)
if last - n < floor then
  last = floor + n
  redis.call('SET', k, string.format('%.0f', last))
end
return last
"""
