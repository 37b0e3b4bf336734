-- wrk script: every request carries a header value never sent before, so each one is a new
-- rate-limit key. Used by the ratelimit key-flood test and the "many keys" benchmark.
-- Arguments: the header name (default x-client) and a prefix that makes this run's values
-- differ from every other run's (wrk restarts the counters on each run).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local header = "x-client"
local prefix = ""
local counter = 0

function init(args)
  if args[1] then header = args[1] end
  if args[2] then prefix = args[2] .. "-" end
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, { [header] = prefix .. thread_id .. "-" .. counter })
end
