-- /boom: handlers that raise, chosen by the query or the message.
local boom = {}

local function explode(what)
    error("boom in " .. what)
end

function boom.upgrade(req)
    if req.query.upgrade then explode("upgrade") end
    return true
end

function boom.open(ws)
    if ws.query.open then explode("open") end
end

function boom.message(ws, msg)
    if msg == "raise" then explode("message") end
    if msg == "table" then error({ not_a_string = true }) end
    ws:send("fine:" .. msg)
end

function boom.close(ws, code)
    require("switchboard").log.info("boom closed " .. ws.id .. " " .. code)
end

function boom.request(req)
    if req.query.raise then explode("request") end
    if req.query.badhdr then return { status = 200, headers = { ["X-Bad"] = "a\r\nb" } } end
    if req.query.notable then return "nope" end
    return { status = 200, body = "request ok" }
end

return boom
