-- ws://host/pub: "N SIZE" publishes N SIZE-byte binary messages to "flood" in
-- one handler, then answers "published N".
local sb = require "switchboard"
local pub = {}

function pub.message(ws, msg)
    local n, size = msg:match("^(%d+) (%d+)$")
    n, size = tonumber(n), tonumber(size)
    local payload = ("p"):rep(size)
    for _ = 1, n do sb.publish("flood", payload, true) end
    ws:send("published " .. n)
end

return pub
