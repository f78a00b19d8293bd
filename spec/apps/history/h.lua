-- For the history specs: topics with history, driven by JSON commands.
--   {op="sub", topic=, since=, epoch=}   -> ws:subscribe with since/epoch, then
--                                          {op="subbed", recovered=, epoch=}
--   {op="live", topic=}                  -> plain ws:subscribe, then {op="subbed"}
--   {op="pub", topic=, msg=, n=}         -> n publications (msg .. i; msg when n is absent),
--                                          then {op="pubbed", n=, err=} (the last one's return)
--   {op="wspub", topic=, msg=}           -> ws:publish (not to this ws), then {op="pubbed", n=, err=}
--   {op="spam", topic=, n=, every=, msg=} -> a timer publishes "s1".."sN" (msg instead of
--                                          "s") every `every` s
--   {op="read", topic=, since=, limit=}  -> {op="items", items=, epoch=}
--   {op="count", epoch=}                 -> {op="count", n=} format calls in this process
--                                          (of that epoch's publications when given)
-- Every publication on a history topic arrives as {pos=, epoch=, msg=} (room:, big:),
-- as the message itself (plain:, short:), or through the failing format (bad:).
local sb = require "switchboard"
local json = sb.json

local function fmt(msg, pos, epoch)
    sb.shared.formats = (sb.shared.formats or 0) + 1
    local by = sb.shared.formats_by or {}
    sb.shared.formats_by = by
    by[epoch] = (by[epoch] or 0) + 1
    return json.encode({ pos = pos, epoch = epoch, msg = msg })
end

sb.history.keep("room:", { size = 5, ttl = 3600, format = fmt })
sb.history.keep("room:long:", { size = 50, ttl = 3600, format = fmt })
sb.history.keep("big:", { size = 100000, ttl = 3600, format = fmt })
sb.history.keep("short:", { size = 100, ttl = 1 })
sb.history.keep("plain:", { size = 100 })
sb.history.keep("bad:", { size = 100, format = function(msg, pos)
    if msg == "boom" then error("boom at " .. pos) end
    if msg == "nil" then return nil end
    return "ok:" .. msg
end })

-- a format that adds rules (the rule table may move while it runs)
local grown = 0
sb.history.keep("grow:", { size = 10, format = function(msg, pos)
    for _ = 1, 40 do
        grown = grown + 1
        sb.history.keep("grown" .. grown .. ":", { size = 1 })
    end
    return "g" .. pos .. ":" .. msg
end })

local h = {}

function h.message(ws, msg)
    local m = json.decode(msg)
    if m.op == "sub" then
        local recovered, epoch = ws:subscribe(m.topic, { since = m.since, epoch = m.epoch })
        ws:send(json.encode({ op = "subbed", recovered = recovered, epoch = epoch }))
    elseif m.op == "live" then
        ws:subscribe(m.topic)
        ws:send(json.encode({ op = "subbed" }))
    elseif m.op == "pub" then
        local n, err
        if m.n then
            for i = 1, m.n do n, err = sb.publish(m.topic, m.msg .. i) end
        else
            n, err = sb.publish(m.topic, m.msg)
        end
        ws:send(json.encode({ op = "pubbed", n = n, err = err }))
    elseif m.op == "wspub" then
        local n, err = ws:publish(m.topic, m.msg)
        ws:send(json.encode({ op = "pubbed", n = n, err = err }))
    elseif m.op == "spam" then
        local i = 0
        local t
        t = sb.every(m.every or 0.001, function()
            i = i + 1
            sb.publish(m.topic, (m.msg or "s") .. i)
            if i >= m.n then t:cancel() end
        end)
        ws:send(json.encode({ op = "spamming" }))
    elseif m.op == "count" then
        local n = sb.shared.formats or 0
        if m.epoch then n = (sb.shared.formats_by or {})[m.epoch] or 0 end
        ws:send(json.encode({ op = "count", n = n }))
    elseif m.op == "read" then
        local items, epoch = sb.history.read(m.topic, { since = m.since, limit = m.limit })
        if items then
            ws:send(json.encode({ op = "items", items = items, epoch = epoch or json.null }))
        else -- with --redis: nil, err
            ws:send(json.encode({ op = "items", err = epoch }))
        end
    end
end

return h
