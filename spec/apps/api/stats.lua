-- /stats: plain HTTP only (request handler), the close counts probe.lua keeps.
local sb = require "switchboard"

return {
    request = function()
        return {
            status = 200,
            headers = { ["Content-Type"] = "application/json" },
            body = sb.json.encode({ closes = sb.shared.closes or {}, opened = sb.shared.opened or {} }),
        }
    end,
}
