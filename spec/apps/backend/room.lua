-- For redis_backend_spec: a room that subscribes ?topic= on open and forwards
-- what the client sends as a publish to it.
--   open                    -> subscribes to ?topic= (default "room"), sends "ready"
--   text "pub:<msg>"        -> switchboard.publish(topic, msg)
--   binary <bytes>          -> switchboard.publish(topic, bytes, true)
local sb = require "switchboard"

local room = {}

local function topic(ws)
    return ws.query.topic or "room"
end

function room.open(ws)
    ws:subscribe(topic(ws))
    ws:send("ready")
end

function room.message(ws, msg, binary)
    if binary then
        sb.publish(topic(ws), msg, true)
        return
    end
    local body = msg:match("^pub:(.*)$")
    if body then sb.publish(topic(ws), body) end
end

return room
