-- /fanout for `sbload fanout`: subscribers connect with ?role=sub and are
-- subscribed to topic "t"; every message from the publisher (?role=pub) is
-- published to "t" unchanged (same text/binary type).
local sb = require "switchboard"

local fanout = {}

function fanout.open(ws)
    if ws.query.role ~= "pub" then
        ws:subscribe("t")
    end
end

function fanout.message(ws, msg, binary)
    if ws.query.role == "pub" then
        sb.publish("t", msg, binary)
    end
end

return fanout
