-- Same-origin check for the chat's upgrade: a browser always sends Origin, the
-- origin of the page that opens the WebSocket. A page on another site must not
-- get a socket that the browser opened with this site's cookies (cross-site
-- WebSocket hijacking), so the chat accepts an Origin only when its host:port is
-- the Host the browser connected to, or when it is listed in `allowed`.
local origin = {}

local DEFAULT_PORT = { http = "80", https = "443", ws = "80", wss = "443" }

-- host (lower-case) and port of "host[:port]" ("[v6]:port" too); port defaults to `default`.
local function host_port(authority, default)
    local host, port = authority:match("^(%[[%x:.]+%]):?(%d*)$")
    if not host then host, port = authority:match("^([^:/]+):?(%d*)$") end
    if not host then return nil end
    if port == "" then port = default end
    return host:lower(), port
end

-- Returns true when a request with headers Origin `o` (a string or nil) and
-- Host `host` may upgrade: no Origin (not a browser), an Origin on the
-- `allowed` set ({ ["https://chat.example.com"] = true }), or the same
-- host:port as Host.
function origin.allowed(o, host, allowed)
    if o == nil then return true end
    if allowed and allowed[o:lower()] then return true end
    local scheme, authority = o:match("^(%a[%w+.-]*)://([^/]+)$")
    local default = scheme and DEFAULT_PORT[scheme:lower()]
    if not default or not host then return false end
    local oh, op = host_port(authority, default)
    local hh, hp = host_port(host, default)
    return oh ~= nil and oh == hh and op == hp
end

return origin
