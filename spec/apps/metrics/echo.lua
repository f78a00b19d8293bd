-- /echo for the metrics spec: echoes; "boom" raises, "spin" runs past the
-- instruction budget; ?deny=1 is refused with 403.
local echo = {}

function echo.upgrade(req)
    if req.query.deny then return false, 403 end
    return true
end

function echo.message(ws, msg)
    if msg == "boom" then error("boom") end
    if msg == "spin" then while true do end end
    ws:send(msg)
end

return echo
