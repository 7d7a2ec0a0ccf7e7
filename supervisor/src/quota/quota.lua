-- tollgate's quota check: one atomic check-and-take across the buckets of one team.
--
-- The formulas are those of supervisor/src/quota/gcra.rs (its module documentation says
-- them once); this script repeats them line for line, in integer microseconds of the
-- server's own clock (TIME), so every node counts against one clock.
--
-- KEYS[i]  tollgate:{team}:<bucket name>. A day bucket's key gets ':YYYYMMDD' (the UTC day
--          of TIME) appended here; it keeps the {team} hash tag, so every key of one call
--          lives in one Redis Cluster slot.
-- ARGV[1]  'take' (all or nothing), 'charge' (add to the day buckets, never refuse) or
--          'peek' (take nothing)
-- ARGV[3i-1], ARGV[3i], ARGV[3i+1]  bucket i: 'rate', T_us, tau_us
--                                     or     'daily', limit, cost
--                                     or     'carry', limit, bytes: bytes that already
--          flowed, added to that day key first (in every mode but 'peek'), whatever the
--          take decides; never refused
-- Returns  {1, remaining_1, ..., remaining_n}, or for a refused take
--          {0, index (0-based), retry_after_us}.
-- Keys expire on their own: a rate key when its TAT has passed, a day key at the end of
-- the following day.

local time = redis.call('TIME')
local seconds = tonumber(time[1])
local now = seconds * 1000000 + tonumber(time[2])
local day = math.floor(seconds / 86400)
local until_next_day = (day + 1) * 86400000000 - now
local day_expires_at = (day + 2) * 86400

-- YYYYMMDD of a day number: Howard Hinnant's civil_from_days, as gcra.rs::day_label.
local function day_label(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d%02d%02d', y, m, d)
end

local mode = ARGV[1]
local today = day_label(day)
-- Carried bytes first: the day buckets below read counters that include them.
if mode ~= 'peek' then
  for i = 1, #KEYS do
    if ARGV[3 * i - 1] == 'carry' then
      local bytes = tonumber(ARGV[3 * i + 1])
      if bytes > 0 then
        local key = KEYS[i] .. ':' .. today
        redis.call('INCRBY', key, bytes)
        redis.call('EXPIREAT', key, day_expires_at)
      end
    end
  end
end

-- Day counters by key: a carry and a day bucket of one quota name the same counter.
local counts = {}
local buckets = {}
for i = 1, #KEYS do
  local b = { kind = ARGV[3 * i - 1], a = tonumber(ARGV[3 * i]), b = tonumber(ARGV[3 * i + 1]) }
  if b.kind == 'daily' or b.kind == 'carry' then
    b.key = KEYS[i] .. ':' .. today
    if counts[b.key] == nil then
      counts[b.key] = tonumber(redis.call('GET', b.key)) or 0
    end
  elseif b.kind == 'rate' then
    b.key = KEYS[i]
    b.tat = math.max(tonumber(redis.call('GET', b.key)) or now, now)
  else
    return redis.error_reply('tollgate quota script: unknown bucket kind ' .. tostring(b.kind))
  end
  buckets[i] = b
end

-- remaining of a rate bucket (T = b.a, tau = b.b) whose arrival time is tat
local function rate_remaining(b, tat)
  if tat - now <= b.b then
    return math.floor((now + b.b - tat) / b.a) + 1
  end
  return 0
end

local function daily_remaining(b)
  return math.max(b.a - counts[b.key], 0)
end

if mode == 'take' then
  -- First decide every bucket; the refusal reported is the one with the longest wait.
  local refused, wait = nil, -1
  for i, b in ipairs(buckets) do
    local retry = nil
    if b.kind == 'rate' then
      if b.tat - now > b.b then retry = b.tat - b.b - now end
    elseif b.kind == 'daily' and (counts[b.key] >= b.a or counts[b.key] + b.b > b.a) then
      retry = until_next_day
    end
    if retry ~= nil and retry > wait then refused, wait = i, retry end
  end
  if refused ~= nil then
    return { 0, refused - 1, wait }
  end
  -- Then charge them all.
  for _, b in ipairs(buckets) do
    if b.kind == 'rate' then
      local tat = b.tat + b.a
      redis.call('SET', b.key, string.format('%d', tat), 'PX', math.floor((tat - now + 999) / 1000))
      b.tat = tat
    elseif b.kind == 'daily' and b.b > 0 then
      counts[b.key] = redis.call('INCRBY', b.key, b.b)
      redis.call('EXPIREAT', b.key, day_expires_at)
    end
  end
elseif mode == 'charge' then
  for _, b in ipairs(buckets) do
    if b.kind == 'daily' and b.b > 0 then
      counts[b.key] = redis.call('INCRBY', b.key, b.b)
      redis.call('EXPIREAT', b.key, day_expires_at)
    end
  end
elseif mode ~= 'peek' then
  return redis.error_reply('tollgate quota script: unknown mode ' .. tostring(mode))
end

local reply = { 1 }
for i, b in ipairs(buckets) do
  if b.kind == 'rate' then
    reply[i + 1] = rate_remaining(b, b.tat)
  else
    reply[i + 1] = daily_remaining(b)
  end
end
return reply
