-- For redis_backend_spec and script_subscribe_spec: switchboard.subscribe driven over
-- plain HTTP. Each subscription records what it sees, in order.
--   GET /sub?add=T           -> sb.subscribe(T, a recorder) -> "true"/"false"
--   GET /sub?add=T&slow=S    -> the recorder sleeps S seconds before recording a message
--                               whose number (trailing digits) is odd
--   GET /sub?del=T[&same=1]  -> sb.unsubscribe(T [, that recorder]) -> "true"/"false"
--   GET /sub?get=T           -> JSON array: "t:<text>" or "b:<hex>" per message seen
--   GET /sub?pub=T&msg=M     -> sb.publish(T, M)
--   GET /sub?misuse=NAME     -> the error a misuse raises
-- A recorder raises on the message "boom" (after recording "boom?").
local sb = require "switchboard"

-- topics under "kept:" keep a history (positions; with --redis, Redis assigns them)
sb.history.keep("kept:", { size = 10,
    format = function(msg, pos) return ("%d:%s"):format(pos, msg) end })

local seen = {}
local recorders = {}

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function recorder(topic, slow)
    return function(msg, binary)
        -- odd-numbered messages wait: run side by side, the even ones would overtake
        if slow and tonumber(msg:match("%d+$") or 0) % 2 == 1 then sb.sleep(slow) end
        local list = seen[topic]
        if msg == "boom" then
            list[#list + 1] = "t:boom?"
            error("boom on " .. topic)
        end
        list[#list + 1] = binary and ("b:" .. hex(msg)) or ("t:" .. msg)
    end
end

local misuse = {
    notopic = function() sb.subscribe(nil, print) end,
    empty = function() sb.subscribe("", print) end,
    nofn = function() sb.subscribe("x", "print") end,
    badfn = function() sb.unsubscribe("x", 42) end,
}

local sub = {}

function sub.request(req)
    local q = req.query
    local body
    if q.add then
        seen[q.add] = seen[q.add] or {}
        local fn = recorders[q.add] or recorder(q.add, tonumber(q.slow))
        recorders[q.add] = fn
        body = tostring(sb.subscribe(q.add, fn))
    elseif q.del then
        body = tostring(sb.unsubscribe(q.del, q.same and recorders[q.del] or nil))
        if not q.same then recorders[q.del] = nil end
    elseif q.get then
        body = sb.json.encode(seen[q.get] or {})
        if not seen[q.get] or #seen[q.get] == 0 then body = "[]" end
    elseif q.pub then
        sb.publish(q.pub, q.msg)
        body = "ok"
    elseif q.misuse then
        local _, err = pcall(misuse[q.misuse])
        body = tostring(err)
    end
    return { status = 200, body = body or "?" }
end

return sub
