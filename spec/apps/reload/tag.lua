-- Hot reload specs: answers carry the version tag; a timer publishes it.
-- The specs overwrite this file with other versions (spec/support/reload_client.py).
local sb = require "switchboard"
local TAG = "A0"
local M = { tag = TAG }

sb.every(0.05, function() sb.publish("tick", "tick:" .. TAG) end)

function M.open(ws)
    ws.data.n = 0
    ws:subscribe("tick")
end

function M.message(ws, msg)
    ws.data.n = ws.data.n + 1
    ws:send(TAG .. ":" .. msg .. ":" .. ws.data.n)
end

return M
