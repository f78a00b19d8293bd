-- /fanout for `sbload fanout`: subscribers connect with ?role=sub and are
-- subscribed to topic "t"; every message from the publisher (?role=pub) is
-- published to "t" unchanged (same text/binary type).
-- ?history=1 (subscribers and publisher): the topic is "hist:t" instead, which
-- keeps its last 100 publications (sb.history.keep, no format: subscribers get
-- the message as published, so sbload checks them as it does without history).
local sb = require "switchboard"

sb.history.keep("hist:", { size = 100, ttl = 600 })

local fanout = {}

local function topic(ws)
    return ws.query.history == "1" and "hist:t" or "t"
end

function fanout.open(ws)
    if ws.query.role ~= "pub" then
        ws:subscribe(topic(ws))
    end
end

function fanout.message(ws, msg, binary)
    if ws.query.role == "pub" then
        sb.publish(topic(ws), msg, binary)
    end
end

return fanout
