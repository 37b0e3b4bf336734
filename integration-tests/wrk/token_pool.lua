-- wrk script: every request carries the next token from a file of tokens (one per line), as
-- `authorization: Bearer <token>`, so a gateway cache of verified tokens rarely helps.
-- Argument: the path of the token file.

local tokens = {}
local next_index = 1

function init(args)
  for line in io.lines(args[1]) do
    tokens[#tokens + 1] = line
  end
end

function request()
  local token = tokens[next_index]
  next_index = next_index % #tokens + 1
  return wrk.format(nil, nil, { ["authorization"] = "Bearer " .. token })
end
