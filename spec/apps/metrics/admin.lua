-- /admin: GET answers switchboard.stats() as JSON (integer keys as strings).
local sb = require "switchboard"
local admin = {}

local function plain(t)
    local out = {}
    for k, v in pairs(t) do
        out[tostring(k)] = type(v) == "table" and plain(v) or v
    end
    return out
end

function admin.request()
    return { status = 200, headers = { ["content-type"] = "application/json" },
             body = sb.json.encode(plain(sb.stats())) }
end

return admin
