-- /b: every message is published to the others on "room"; closes are noted.
local closelog = require "closelog"
local b = {}

function b.open(ws) ws:subscribe("room") end
function b.message(ws, msg) ws:publish("room", msg) end
function b.close(ws, code) closelog.note("/b", ws, code) end

return b
