-- For the workers and Redis specs: says which process answered, subscribes to
-- ?topic=, and publishes on request.
--   GET /node                 -> the worker's pid
--   open                      -> sends "pid:<pid>"; subscribes to ?topic= when given
--   text "pub:<topic>:<msg>"  -> switchboard.publish(topic, msg)
--   binary <bytes>            -> switchboard.publish(?topic= or "bin", bytes, true)
--   text "echo:<x>"           -> sends <x> back
local sb = require "switchboard"

local function pid()
    local f = assert(io.open("/proc/self/stat"))
    local line = f:read("l")
    f:close()
    return line:match("^(%d+)")
end

local node = {}

function node.request()
    return { status = 200, body = pid() }
end

function node.open(ws)
    if ws.query.topic then ws:subscribe(ws.query.topic) end
    ws:send("pid:" .. pid())
end

function node.message(ws, msg, binary)
    if binary then
        sb.publish(ws.query.topic or "bin", msg, true)
        return
    end
    local topic, body = msg:match("^pub:([^:]*):(.*)$")
    if topic then
        sb.publish(topic, body)
        return
    end
    local x = msg:match("^echo:(.*)$")
    if x then ws:send(x) end
end

return node
