-- GET /admin: the server's counters and what the test routes recorded, as JSON.
local sb = require "switchboard"
local admin = {}

function admin.request()
    local subs = {}
    for id, ws in pairs(sb.shared.subs or {}) do
        local ok, b = pcall(ws.buffered, ws)
        if ok then subs[#subs + 1] = { id = id, buffered = b } end
    end
    local body = sb.json.encode({
        stats = sb.stats(),
        fill = sb.shared.fill or false,
        drains = sb.shared.drains or 0,
        last_close = sb.shared.last_close or false,
        subs = subs,
    })
    return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = body }
end

return admin
