-- wrk script: every request carries the next token from a file of tokens (one per line), as
-- `authorization: Bearer <token>`, so a gateway cache of verified tokens rarely helps.
-- Arguments: the path of the token file, and optionally how many tokens earlier runs sent
-- (this run starts with the one after them, wrapping around the file), so that a run does not
-- send again the tokens the run before it just sent, which a cache may still hold.

local tokens = {}
local next_index = 1

function init(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
  local already_sent = tonumber(args[2] or "0") or 0
  if #tokens > 0 then
    next_index = already_sent % #tokens + 1
  end
end

function request()
  local token = tokens[next_index]
  next_index = next_index % #tokens + 1
  return wrk.format(nil, nil, { ["authorization"] = "Bearer " .. token })
end
