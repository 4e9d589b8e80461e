"""The Lua text of RedisJobQueue: every state transition of a job is one of these scripts.

Each script gets ``KEYS[1]`` = the job index (so a cluster client routes it to the slot of
the queue's hash tag) and ``ARGV[1]`` = the queue's base, e.g. ``tcm:{q}:``; every key a
script touches is that base plus a suffix, so all of them share one hash tag. Redis
``TIME`` is the only clock. Scripts that can refuse return a status table
(``{'ok', …}``, ``{'notfound'}``, ``{'stale', state, token, lease_until}``,
``{'conflict', state}``) rather than an error reply, so one refused job in a batch does
not poison the others. ENQUEUE and ACK take a batch of jobs (one script call for many
transitions, the whole batch atomic); stats counters and samples are gathered while a
script runs and written once at its end (``flush``). docs/redis.md ("Job queue") lists the
keys.
"""

from __future__ import annotations

# Helpers shared by every script: the keys, the clock, the counters behind stats().
_PRELUDE = r"""
local B = ARGV[1]
local JOBS, SEQ, FENCE = B .. 'jobs', B .. 'seq', B .. 'fence'
local POOL, DELAYED, LEASES = B .. 'pool', B .. 'delayed', B .. 'leases'
local WAKE, STATS, DONE = B .. 'wake', B .. 'stats', B .. 'done'
local WAITS, RUNS, LIMITS = B .. 'waits', B .. 'runs', B .. 'limits'
local WAKE_MAX, SAMPLES, SLACK, WINDOW_MS = 1024, 1000, 256, 60000
local CHUNK = 1000 -- arguments per redis.call when a script unpacks a batch
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

-- redis.call(cmd, key, items...) in chunks, so a big batch never overflows Lua's stack
local function each_chunk(cmd, key, items)
  local last
  for i = 1, #items, CHUNK do
    last = redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
  return last
end

-- the fields every transition needs, with the manager '' for the pool
local NEEDED = {'state', 'manager_id', 'priority', 'seq', 'attempts', 'token', 'lease_until',
  'started_at', 'queued_at', 'next_retry_at', 'reruns', 'under'}

local function parse(id, f)
  return {id = id, state = f[1], mgr = f[2] or '', prio = tonumber(f[3]), seq = tonumber(f[4]),
    attempts = tonumber(f[5]), token = f[6], lease_until = tonumber(f[7]), started_at = f[8],
    queued_at = f[9], next_retry_at = f[10], reruns = tonumber(f[11] or '0'), under = f[12]}
end

local function load(id)
  local f = redis.call('HMGET', jkey(id), unpack(NEEDED))
  if not f[1] then return nil end
  return parse(id, f)
end

-- load from one HGETALL, keeping the flat reply (j.raw) to answer with
local function load_all(id)
  local raw = redis.call('HGETALL', jkey(id))
  if #raw == 0 then return nil end
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  local f = {}
  for i, name in ipairs(NEEDED) do f[i] = h[name] end
  local j = parse(id, f)
  j.raw, j.has = raw, h
  return j
end

local FINAL = {completed = true, failed = true, cancelled = true}
local WAITING = {queued = true, retrying = true}

-- stats deltas and samples are gathered here and written once, by flush(), at the end
local DELTA, WAIT_SAMPLES, RUN_SAMPLES = {}, {}, {}

local function add(field, n) DELTA[field] = (DELTA[field] or 0) + n end

local function count(j, n)
  add('state:' .. j.state, n)
  if FINAL[j.state] then
    add('fin:' .. j.state .. ':' .. j.mgr, n)
  elseif WAITING[j.state] then
    add('prio:' .. j.prio, n)
    add('wait:' .. j.mgr, n)
  end
end

-- LPUSH values; trim back to cap only once the list is SLACK past it (one call, not two)
local function push_capped(list, values, cap, slack)
  if #values == 0 then return end
  if each_chunk('LPUSH', list, values) > cap + slack then redis.call('LTRIM', list, 0, cap - 1) end
end

-- a manager's attempts on every node: LIMITS holds active:<mgr> (claims add, every end of an
-- active job takes away) and max:<mgr> (the manager's limit, set by its own node). Ends are
-- gathered in FREED and settled at once; a manager that was at its limit and has ready jobs
-- wakes idle nodes, which its limit had kept from claiming.
local FREED = {}

local function settle()
  for mgr, n in pairs(FREED) do
    local left = redis.call('HINCRBY', LIMITS, 'active:' .. mgr, -n)
    if left <= 0 then redis.call('HDEL', LIMITS, 'active:' .. mgr) end
    local cap = tonumber(redis.call('HGET', LIMITS, 'max:' .. mgr) or '')
    if cap and left + n >= cap then
      local ready = redis.call('ZCARD', ready_key(mgr)) + redis.call('ZCARD', POOL)
      local ones = {}
      for i = 1, math.min(n, ready, WAKE_MAX) do ones[i] = '1' end
      push_capped(WAKE, ones, WAKE_MAX, 0)
    end
  end
  FREED = {}
end

local function flush()
  settle()
  for field, n in pairs(DELTA) do
    if n ~= 0 then redis.call('HINCRBY', STATS, field, n) end
  end
  DELTA = {}
  push_capped(WAITS, WAIT_SAMPLES, SAMPLES, SLACK)
  push_capped(RUNS, RUN_SAMPLES, SAMPLES, SLACK)
  WAIT_SAMPLES, RUN_SAMPLES = {}, {}
end

-- move j to state, applying field changes ({name, value, …}; value false: delete the field
-- when the job has it). → {j.raw, the changes with the state}: the job's hash after the move
-- is j.raw (load_all's HGETALL) with those applied, which the client does (a false arrives
-- as nil: delete)
local function move(j, state, changes)
  count(j, -1)
  if j.state == 'active' and state ~= 'active' and j.under then
    FREED[j.under] = (FREED[j.under] or 0) + 1
  end
  local k = jkey(j.id)
  local set, del = {'state', state}, {}
  for i = 1, #changes, 2 do
    local name, value = changes[i], changes[i + 1]
    if value == false then
      if not j.has or j.has[name] then del[#del + 1] = name end
    else
      set[#set + 1] = name
      set[#set + 1] = value
    end
  end
  redis.call('HSET', k, unpack(set))
  if #del > 0 then redis.call('HDEL', k, unpack(del)) end
  j.state = state
  count(j, 1)
  changes[#changes + 1] = 'state'
  changes[#changes + 1] = state
  return {j.raw, changes}
end

local function make_ready(j)
  redis.call('ZADD', ready_key(j.mgr), int(j.prio * PRIO_SHIFT + j.seq), j.id)
end

local function wake(n)
  if n <= 0 then return end
  local ones = {}
  for i = 1, math.min(n, WAKE_MAX) do ones[i] = '1' end
  push_capped(WAKE, ones, WAKE_MAX, 0)
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
  wake(#expired)
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

# ARGV: base, then per job: id, manager ('' pool), priority, n, n field/value items.
# A new job gets job_id, priority, manager_id, attempts 0, reruns 0 and extra '{}' unless its
# fields say otherwise. → per job {seq, queued_at}, or {} when it exists (nothing changed)
ENQUEUE = (
    _PRELUDE
    + r"""
local ms, now_s = clock()
local out, new, i = {}, {}, 2
while i <= #ARGV do
  local id, nf = ARGV[i], tonumber(ARGV[i + 3])
  out[#out + 1] = {}  -- stays empty when the job exists
  if redis.call('EXISTS', jkey(id)) == 0 then
    new[#new + 1] = {id = id, mgr = ARGV[i + 1], prio = tonumber(ARGV[i + 2]), at = i + 4,
      nf = nf, slot = #out}
  end
  i = i + 4 + nf
end
local last = 0
if #new > 0 then last = redis.call('INCRBY', SEQ, #new) end
local ready, index = {}, {}
for n, j in ipairs(new) do
  local seq = last - #new + n
  local fields = {'state', 'queued', 'seq', seq, 'queued_at', now_s, 'job_id', j.id,
    'priority', j.prio, 'attempts', '0', 'reruns', '0', 'extra', '{}'}
  if j.mgr ~= '' then
    fields[#fields + 1] = 'manager_id'
    fields[#fields + 1] = j.mgr
  end
  for a = j.at, j.at + j.nf - 1 do fields[#fields + 1] = ARGV[a] end
  redis.call('HSET', jkey(j.id), unpack(fields))
  index[#index + 1] = seq
  index[#index + 1] = j.id
  local key = ready_key(j.mgr)
  ready[key] = ready[key] or {}
  ready[key][#ready[key] + 1] = int(j.prio * PRIO_SHIFT + seq)
  ready[key][#ready[key] + 1] = j.id
  j.state, j.seq = 'queued', seq
  count(j, 1)
  out[j.slot] = {seq, now_s}
end
if #index > 0 then each_chunk('ZADD', JOBS, index) end
for key, items in pairs(ready) do each_chunk('ZADD', key, items) end
wake(#new)
flush()
return out
"""
)

# ARGV: base, manager id, node id, n, lease_ms, the manager's limit ('' unknown: the one
# stored). n is capped by the room left under the manager's limit on every node.
# → per claimed job {HGETALL, changes}
CLAIM = (
    _PRELUDE
    + r"""
local mgr, node, n, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local ms, now_s = clock()
if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', LIMITS, 'max:' .. mgr, ARGV[6]) end
promote(ms)
reap(ms, now_s)
settle()
local cap = tonumber(redis.call('HGET', LIMITS, 'max:' .. mgr) or '')
if cap then
  n = math.min(n, cap - tonumber(redis.call('HGET', LIMITS, 'active:' .. mgr) or '0'))
end
if n <= 0 then
  flush()
  return {}
end
-- the best n of the manager's ready jobs and the pool's, merged by score
local mine = ready_key(mgr)
local a = redis.call('ZRANGE', mine, 0, n - 1, 'WITHSCORES')
local b = redis.call('ZRANGE', POOL, 0, n - 1, 'WITHSCORES')
local picked, from_a, from_b, ia, ib = {}, {}, {}, 1, 1
while #picked < n and (a[ia] or b[ib]) do
  if b[ib] and (not a[ia] or tonumber(b[ib + 1]) < tonumber(a[ia + 1])) then
    picked[#picked + 1] = b[ib]
    from_b[#from_b + 1] = b[ib]
    ib = ib + 2
  else
    picked[#picked + 1] = a[ia]
    from_a[#from_a + 1] = a[ia]
    ia = ia + 2
  end
end
if #picked == 0 then
  flush()
  return {}
end
if #from_a > 0 then each_chunk('ZREM', mine, from_a) end
if #from_b > 0 then each_chunk('ZREM', POOL, from_b) end
local last = redis.call('INCRBY', FENCE, #picked)
local deadline = int(ms + lease_ms)
local leases, out = {}, {}
for i, id in ipairs(picked) do
  local j = load_all(id)
  local changes = {'attempts', tostring(j.attempts + 1), 'started_at', now_s,
    'token', tostring(last - #picked + i), 'node', node, 'lease_until', deadline,
    'instance_id', false, 'under', mgr}
  out[#out + 1] = move(j, 'active', changes)
  leases[#leases + 1] = deadline
  leases[#leases + 1] = id
  WAIT_SAMPLES[#WAIT_SAMPLES + 1] = tostring((tonumber(now_s) - tonumber(j.queued_at)) * 1000)
end
each_chunk('ZADD', LEASES, leases)
redis.call('HINCRBY', LIMITS, 'active:' .. mgr, #picked)
flush()
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

# ARGV: base, return the jobs ('1'/'0'), then per ack: job id, token, has result ('1'/'0'),
# result, extra JSON to merge ('' none). → per ack {'ok', {HGETALL, changes}} / {'ok'} or a
# refusal
ACK = (
    _PRELUDE
    + r"""
local want = ARGV[2] == '1'
local ms, now_s = clock()
local out, acked, done = {}, {}, {}
for i = 3, #ARGV, 5 do
  local id, token = ARGV[i], ARGV[i + 1]
  local j
  if want then j = load_all(id) else j = load(id) end
  local refused = check_lease(j, token, ms)
  if refused then
    out[#out + 1] = refused
  else
    local result = false
    if ARGV[i + 2] == '1' then result = ARGV[i + 3] end
    local d = duration_ms(j, now_s)
    local changes = {'finished_at', now_s, 'result', result, 'duration_ms', d,
      'lease_until', false}
    if ARGV[i + 4] ~= '' then
      local extra = cjson.decode(redis.call('HGET', jkey(id), 'extra') or '{}')
      for name, value in pairs(cjson.decode(ARGV[i + 4])) do extra[name] = value end
      changes[#changes + 1] = 'extra'
      changes[#changes + 1] = cjson.encode(extra)
    end
    local moved = move(j, 'completed', changes)
    if d then RUN_SAMPLES[#RUN_SAMPLES + 1] = d end
    acked[#acked + 1] = id
    done[#done + 1] = int(ms)
    done[#done + 1] = id
    if want then out[#out + 1] = {'ok', moved} else out[#out + 1] = {'ok'} end
  end
end
if #acked > 0 then
  each_chunk('ZREM', LEASES, acked)
  each_chunk('ZADD', DONE, done)
  redis.call('ZREMRANGEBYSCORE', DONE, '-inf', int(ms - WINDOW_MS))
end
flush()
return out
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
if d then RUN_SAMPLES[1] = d end
flush()
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
  if d then RUN_SAMPLES[1] = d end
end
move(j, state, changes)
redis.call('ZREM', LEASES, id)
redis.call('ZREM', DELAYED, id)
redis.call('ZREM', ready_key(j.mgr), id)
flush()
return {'ok', redis.call('HGETALL', k)}
"""
)

# ARGV: base. → the ids whose expired leases went back to ready
REAP = (
    _PRELUDE
    + r"""
local ms, now_s = clock()
promote(ms)
local expired = reap(ms, now_s)
flush()
return expired
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
return {redis.call('HGETALL', STATS), redis.call('LRANGE', WAITS, 0, SAMPLES - 1),
  redis.call('LRANGE', RUNS, 0, SAMPLES - 1),
  redis.call('ZCOUNT', DONE, int(ms - WINDOW_MS), '+inf'), redis.call('HGETALL', LIMITS)}
"""
)

# Retention. ARGV: base, run key ('' none), then job ids. Forgets each final job (its hash,
# its place in the index, its counters); the run key goes once none of the ids is left
# unfinished. → {jobs forgotten, jobs kept (not final)}
PRUNE = (
    _PRELUDE
    + r"""
local gone, kept = {}, 0
for i = 3, #ARGV do
  local j = load(ARGV[i])
  if j and FINAL[j.state] then
    count(j, -1)
    redis.call('DEL', jkey(j.id))
    gone[#gone + 1] = j.id
  elseif j then
    kept = kept + 1
  end
end
if #gone > 0 then
  each_chunk('ZREM', JOBS, gone)
  each_chunk('ZREM', DONE, gone)
end
if kept == 0 and ARGV[2] ~= '' then redis.call('DEL', B .. ARGV[2]) end
flush()
return {#gone, kept}
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
