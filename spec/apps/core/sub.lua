-- ws://host/sub: subscribes to "flood" on open. Messages:
--   "fill SIZE"  ws:send SIZE-byte binary messages until send() says false;
--                the count and ws:buffered() are kept in sb.shared.fill
-- drain(ws) counts in sb.shared.drains and sends "drained BUFFERED".
local sb = require "switchboard"
local sub = {}

sb.shared.subs = sb.shared.subs or {}
sb.shared.drains = sb.shared.drains or 0

function sub.open(ws)
    ws:subscribe("flood")
    sb.shared.subs[ws.id] = ws
end

function sub.message(ws, msg)
    local size = tonumber(msg:match("^fill (%d+)$"))
    if size then
        local chunk = ("f"):rep(size)
        local n, ok = 0, true
        while ok and n < 100000 do
            ok = ws:send(chunk, true)
            n = n + 1
        end
        sb.shared.fill = { sends = n, ok = ok, buffered = ws:buffered() }
    end
end

function sub.drain(ws)
    sb.shared.drains = sb.shared.drains + 1
    ws:send("drained " .. ws:buffered())
end

function sub.close(ws, code)
    sb.shared.subs[ws.id] = nil
    sb.shared.last_close = code
end

return sub
