-- GCRA (generic cell rate algorithm) for one request's descriptors, atomically: the same
-- algorithm and semantics as the ratelimit filter's local rules.
--
-- KEYS[i]: descriptor i's counter (its theoretical arrival time, TAT, in microseconds).
-- ARGV: 3 numbers per key: interval (microseconds per request), burst, hits.
-- Time is Redis's own clock, so every service instance agrees on it.
--
-- In order, each descriptor is admitted when its backlog after the hits fits the burst:
-- `max(TAT, now) + hits * interval - now <= burst * interval`. An admitted descriptor is
-- charged; at the first one over its limit, the rest are neither checked nor charged (as with
-- local rules, a rejected request costs later limits nothing).
--
-- Returns {now, code_1, backlog_1, code_2, backlog_2, ...}: code 1 = OK, 2 = OVER_LIMIT,
-- 0 = not reached; backlog = TAT - now after this request (microseconds, >= 0).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local result = {now}
local over = false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local hits = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key) or 0)
  if tat < now then tat = now end
  if over then
    table.insert(result, 0)
    table.insert(result, tat - now)
  else
    local new_tat = tat + hits * interval
    if new_tat - now <= burst * interval then
      -- Expires when the bucket is full again: an absent key is a full bucket.
      -- Numbers go out through %d: Lua 5.1 would print 16-digit doubles in exponent form.
      redis.call('SET', key, string.format('%d', new_tat), 'PX', string.format('%d', math.ceil((new_tat - now) / 1000) + 1))
      table.insert(result, 1)
      table.insert(result, new_tat - now)
    else
      over = true
      table.insert(result, 2)
      table.insert(result, tat - now)
    end
  end
end
return result
