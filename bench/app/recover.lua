-- /recover for `sbload recover`: topic "rec:<topic>" (?topic=, default "t")
-- keeps its last 1000 publications; every publication goes out as
-- "<message> <position> <epoch>" (a format, as an app puts the position in
-- its own JSON).
--   ?role=pub   subscribed plainly, and every message it sends is published:
--               it sees its own publications come back with their positions.
--   ?role=sub&since=P&epoch=E
--               ws:subscribe(topic, { since = P, epoch = E }) in open: the kept
--               publications after P, then the live ones. A recovery that was
--               not complete closes the connection with 4000.
local sb = require "switchboard"

sb.history.keep("rec:", { size = 1000, ttl = 600, format = function(msg, pos, epoch)
    return msg .. " " .. pos .. " " .. epoch
end })

local recover = {}

local function topic(ws)
    return "rec:" .. (ws.query.topic or "t")
end

function recover.open(ws)
    if ws.query.role == "pub" then
        ws:subscribe(topic(ws))
        return
    end
    local recovered = ws:subscribe(topic(ws), { since = tonumber(ws.query.since), epoch = ws.query.epoch })
    if not recovered then
        ws:close(4000, "not recovered")
    end
end

function recover.message(ws, msg, binary)
    if ws.query.role == "pub" then
        sb.publish(topic(ws), msg, binary)
    end
end

return recover
