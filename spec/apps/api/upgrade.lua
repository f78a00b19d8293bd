-- /upgrade: the upgrade handler's choices. ?deny=STATUS[&body=TEXT] refuses;
-- otherwise it accepts, picks the first of the server's preferences the
-- client offered, sets a cookie and reports the request it saw in X-Req.
local sb = require "switchboard"

local PREFER = { "chat.v2", "chat.v1" }

local up = {}

function up.upgrade(req)
    if req.query.deny then
        return false, tonumber(req.query.deny), req.query.body
    end
    local offered = {}
    for _, p in ipairs(req.protocols) do offered[p] = true end
    local protocol
    for _, p in ipairs(PREFER) do
        if offered[p] then protocol = p break end
    end
    if req.query.nochoice then protocol = nil end
    return true, {
        protocol = protocol,
        headers = {
            ["Set-Cookie"] = "session=abc123; HttpOnly",
            ["X-Req"] = sb.json.encode({
                method = req.method, path = req.path, query = req.query, headers = req.headers,
                remote = req.remote, protocols = req.protocols,
            }),
        },
    }
end

function up.open(ws)
    ws:send("protocol=" .. tostring(ws.protocol))
end

return up
