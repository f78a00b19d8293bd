-- ws://host/counter: every message counts one hit and answers with the total.
-- With --redis the count lives in Redis (INCR counter:hits): every process and
-- every restart shares it. Without --redis it is this process's, in memory.
-- The handler waits on Redis without blocking the server: other connections go
-- on meanwhile, and this connection's next message waits its turn.
local sb = require "switchboard"
local counter = {}

local KEY = "counter:hits"

-- The new total, or nil and why not.
local function hit()
    if not sb.redis.url then
        sb.shared.counter_hits = (sb.shared.counter_hits or 0) + 1
        return sb.shared.counter_hits
    end
    local red, err = sb.redis.connect()
    if not red then return nil, err end
    local n
    n, err = red:call("INCR", KEY)
    red:close()
    return n, err
end

function counter.message(ws)
    local n, err = hit()
    if not n then
        sb.log.warn("counter: Redis said", err)
        ws:send("error: " .. err)
        return
    end
    ws:send(tostring(n))
end

return counter
