-- ws://host/notify: every connection subscribes to "notify"; when one closes,
-- its close handler tells the others "gone ID CODE".
local sb = require "switchboard"
local notify = {}

function notify.open(ws)
    ws:subscribe("notify")
    ws:send("id " .. ws.id)
end

function notify.close(ws, code)
    sb.publish("notify", "gone " .. ws.id .. " " .. code)
end

return notify
