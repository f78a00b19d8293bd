-- ws://host/echo for the core specs: echoes text as text and binary as
-- binary; "close CODE REASON" makes the server start the closing handshake.
local echo = {}

function echo.message(ws, msg, binary)
    local code, reason = msg:match("^close (%d+) ?(.*)$")
    if code and not binary then
        ws:close(tonumber(code), reason)
        return
    end
    ws:send(msg, binary)
end

return echo
