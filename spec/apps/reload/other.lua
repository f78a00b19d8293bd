-- Requires no app module: a lib/ change must not reload it.
local M = {}

function M.message(ws, msg)
    ws:send("other:" .. msg)
end

return M
