-- /fanout for `sbload fanout`: ?role=sub subscribes to "t"; every message
-- from ?role=pub goes to every subscriber with one sb.publish call, whose
-- count is logged for the first message.
local sb = require "switchboard"

local fanout = {}
local logged = false

function fanout.open(ws)
    if ws.query.role ~= "pub" then ws:subscribe("t") end
end

function fanout.message(ws, msg, binary)
    if ws.query.role == "pub" then
        local n = sb.publish("t", msg, binary)
        if not logged then
            logged = true
            sb.log.info("published to " .. n .. " of " .. sb.subscribers("t"))
        end
    end
end

return fanout
