-- The Redis store's shared functions: prepended to every script in redis.rs,
-- so each operation is one atomic script. Keys, all under "fngate:":
--   job:{id}        hash   a job: request, policy, state, result (see redis.rs `fields`)
--   att:{id}        hash   its attempts, n -> "at,status,duration_ms,error"
--   due:{backend}   zset   unfinished jobs by when they are due: queued and retrying ones by
--                          their next attempt, running ones by when their lease lapses
--   pending:{b}     zset   unfinished jobs by creation (the backlog's count and oldest)
--   backends        set    backends that may have unfinished jobs
--   created         zset   every job by creation (the admin list, newest first)
--   expires         zset   finished jobs by when they are deleted (the sweep)
--   part:{p}        list   a partition's unfinished jobs in accepted order
--   runs:{schedule} set    a schedule's unfinished runs
--   idem:{scope\nkey} string the job an Idempotency-Key names
--   ev:{topic\nsource\nid} string until when a published event deduplicates
--   tick:{job id}   string a schedule tick claimed (never released)
--   sched:{name}    hash   a schedule's last tick, fire, outcome and run; schedules: set of names
--   paused          hash   paused subscriptions -> since; secret:{name}: a secret
-- Times compared are the caller's (milliseconds since the epoch); key TTLs,
-- relative, only clean up after them.
local P = 'fngate:'
-- How long a finished job's keys outlive its `expires`, so the sweep (which
-- also cleans the indexes) normally deletes them first.
local SLACK = 60000

local function jk(id) return P .. 'job:' .. id end

-- A job passed as `id, n, field1, value1, ... fieldn, valuen` from ARGV[i].
local function read_job(i)
  local id = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local f = {}
  for j = 0, n - 1 do
    f[ARGV[i + 2 + 2 * j]] = ARGV[i + 3 + 2 * j]
  end
  return id, f, i + 2 + 2 * n
end

local function insert(id, f)
  local args = {}
  for k, v in pairs(f) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  -- The accepted order, which breaks ties between jobs due at the same time.
  args[#args + 1] = 'seq'
  args[#args + 1] = redis.call('INCR', P .. 'seq')
  redis.call('DEL', jk(id), P .. 'att:' .. id)
  redis.call('HSET', jk(id), unpack(args))
  local created = tonumber(f.created)
  redis.call('ZADD', P .. 'due:' .. f.backend, tonumber(f.due), id)
  redis.call('ZADD', P .. 'pending:' .. f.backend, created, id)
  redis.call('SADD', P .. 'backends', f.backend)
  redis.call('ZADD', P .. 'created', created, id)
  if f.partition then redis.call('RPUSH', P .. 'part:' .. f.partition, id) end
  if f.kind == 'schedule' then redis.call('SADD', P .. 'runs:' .. f.route, id) end
  if f.idem then redis.call('SET', P .. 'idem:' .. f.idem, id) end
end

-- Takes an unfinished job out of the queues (finished, cancelled, deleted).
local function unqueue(id, backend, partition, kind, route)
  redis.call('ZREM', P .. 'due:' .. backend, id)
  redis.call('ZREM', P .. 'pending:' .. backend, id)
  if partition then redis.call('LREM', P .. 'part:' .. partition, 0, id) end
  if kind == 'schedule' then redis.call('SREM', P .. 'runs:' .. route, id) end
end

-- Deletes a job and everything that points at it; whether it existed.
local function delete(id)
  local f = redis.call('HMGET', jk(id), 'backend', 'partition', 'kind', 'route', 'idem')
  if f[1] then unqueue(id, f[1], f[2], f[3], f[4]) end
  if f[5] and redis.call('GET', P .. 'idem:' .. f[5]) == id then
    redis.call('DEL', P .. 'idem:' .. f[5])
  end
  redis.call('ZREM', P .. 'created', id)
  redis.call('ZREM', P .. 'expires', id)
  return redis.call('DEL', jk(id), P .. 'att:' .. id) > 0 and f[1] ~= false
end

-- A job just finished: out of the queues, and deleted after its result_ttl.
local function finished(id, f, now)
  unqueue(id, f.backend, f.partition, f.kind, f.route)
  local ttl = tonumber(f.p_ttl)
  redis.call('HSET', jk(id), 'expires', now + ttl)
  redis.call('HDEL', jk(id), 'due', 'lease_owner')
  redis.call('ZADD', P .. 'expires', now + ttl, id)
  redis.call('PEXPIRE', jk(id), ttl + SLACK)
  redis.call('PEXPIRE', P .. 'att:' .. id, ttl + SLACK)
  if f.idem then redis.call('PEXPIRE', P .. 'idem:' .. f.idem, ttl + SLACK) end
end

-- The fields `finished` and `unqueue` need, as a table.
local function facts(id)
  local v = redis.call('HMGET', jk(id), 'state', 'lease_owner', 'backend', 'partition', 'kind',
    'route', 'p_ttl', 'attempts', 'idem')
  return {
    state = v[1], lease_owner = v[2], backend = v[3], partition = v[4] or nil,
    kind = v[5], route = v[6], p_ttl = v[7], attempts = v[8], idem = v[9] or nil
  }
end
