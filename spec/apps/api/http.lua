-- /http: plain HTTP on a route. Echoes the request as JSON, with the status
-- and headers the query asks for.
local sb = require "switchboard"

return {
    request = function(req)
        local st = tonumber(req.query.status) or 200
        return {
            status = st,
            headers = { ["X-Method"] = req.method, ["Set-Cookie"] = "a=b; Path=/" },
            body = sb.json.encode({
                method = req.method, path = req.path, query = req.query, headers = req.headers,
                remote = req.remote, body = req.body or sb.json.null,
            }),
        }
    end,
}
