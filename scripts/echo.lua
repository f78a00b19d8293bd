-- ws://host/echo: every message comes back as it came, text as text and
-- binary as binary.
local echo = {}

function echo.message(ws, msg, binary)
    ws:send(msg, binary)
end

return echo
