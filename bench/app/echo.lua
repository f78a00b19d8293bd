-- /echo for `sbload echo`: every message back to its sender, same type.
local echo = {}

function echo.message(ws, msg, binary)
    ws:send(msg, binary)
end

return echo
