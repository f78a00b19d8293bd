-- Requires an app module (lib/greet.lua, which requires lib/words.lua) and cjson.
local sb = require "switchboard"
local cjson = require "cjson"
local greet = require "greet"
local M = {}

sb.shared.cjson = sb.shared.cjson or cjson -- the first version's: cjson is never reloaded

function M.message(ws, msg)
    ws:send(greet.hello(msg) .. " " .. tostring(sb.shared.cjson == cjson))
end

return M
