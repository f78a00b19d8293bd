-- Plain HTTP: the reload counters.
local sb = require "switchboard"
local M = {}

function M.request()
    local st = sb.stats()
    return { status = 200, body = st.reloads_ok .. " " .. st.reloads_failed }
end

return M
