-- /a: echo; every close is noted in $SB_CLOSE_LOG.
local closelog = require "closelog"
local a = {}

function a.message(ws, msg) ws:send(msg) end
function a.close(ws, code) closelog.note("/a", ws, code) end
function a.request() return { status = 200, body = "a" } end

return a
