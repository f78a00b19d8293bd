-- /incr for bench/run's Redis scenario: every message does one Redis round trip
-- (INCR on the server's --redis, through the pool) before it is echoed like /echo.
-- A Redis failure raises: the connection closes with 1011 and sbload fails.
local sb = require "switchboard"

local incr = {}

function incr.message(ws, msg, binary)
    local red = assert(sb.redis.connect())
    local n, err = red:call("INCR", "sb-bench:hits")
    red:close()
    if not n then
        error("redis: " .. err)
    end
    ws:send(msg, binary)
end

return incr
