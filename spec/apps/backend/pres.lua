-- For presence_spec: ws:subscribe(topic, { presence = ... }) and switchboard.presence.
--   ws /pres?topic=T&nick=N  -> open: subscribes T with presence { nick = N }, sends "ready"
--   text "who"               -> "who:" .. the nicks present in T, sorted, joined by ","
--                               (or "err:" .. the error)
--   text "unsub"             -> ws:unsubscribe(T), sends "unsub:true|false"
--   text "again:<nick>"      -> subscribes T again with presence { nick = <nick> }
--   GET /pres?who=T          -> the same list as "who"
--   GET /pres?misuse=NAME    -> the error a misuse raises
local sb = require "switchboard"

local function who(topic)
    local list, err = sb.presence(topic)
    if not list then return "err:" .. tostring(err) end
    local nicks = {}
    for i, info in ipairs(list) do nicks[i] = tostring(info.nick) end
    table.sort(nicks)
    return table.concat(nicks, ",")
end

local misuse = {
    notable = function(ws) ws:subscribe("m", { presence = "ann" }) end,
    badopts = function(ws) ws:subscribe("m", "opts") end,
    toolong = function(ws) ws:subscribe("m", { presence = { nick = ("x"):rep(2000) } }) end,
    notjson = function(ws) ws:subscribe("m", { presence = { f = print } }) end,
    notopic = function() sb.presence() end,
}

local pres = {}

function pres.open(ws)
    local q = ws.query
    if q.misuse then
        local _, err = pcall(misuse[q.misuse], ws)
        ws:send(tostring(err))
        return
    end
    ws:subscribe(q.topic, { presence = { nick = q.nick } })
    ws:send("ready")
end

function pres.message(ws, msg)
    local topic = ws.query.topic
    if msg == "who" then
        ws:send("who:" .. who(topic))
    elseif msg == "unsub" then
        ws:send("unsub:" .. tostring(ws:unsubscribe(topic)))
    else
        local nick = msg:match("^again:(.*)$")
        if nick then
            ws:subscribe(topic, { presence = { nick = nick } })
            ws:send("again")
        end
    end
end

function pres.request(req)
    return { status = 200, body = who(req.query.who) }
end

return pres
