-- /probe: a route that reports what it sees and does what the peer asks.
-- A text message that is a JSON object {op = ...} is a command answered with
-- a JSON object; other text comes back as "text:" .. msg, binary comes back
-- as the same bytes in a binary frame. close(ws, code, reason) is logged and
-- counted in sb.shared.closes[id], served as JSON by GET /stats.
local sb = require "switchboard"
local json = sb.json

local probe = {}

sb.shared.closes = sb.shared.closes or {}
sb.shared.opened = sb.shared.opened or {}

local function fields(ws)
    return {
        id = ws.id, path = ws.path, query = ws.query, headers = ws.headers,
        remote = ws.remote, protocol = ws.protocol or json.null,
    }
end

local function try(f, ...)
    local ok, err = pcall(f, ...)
    return { ok = ok, ret = ok and err or nil, err = not ok and err or nil }
end

local ops = {}

function ops.fields(ws) return fields(ws) end

function ops.send(ws, c) return { ret = ws:send(c.msg, c.binary) } end

function ops.badsend(ws) return try(ws.send, ws, "\xff\xfe") end

function ops.close(ws, c)
    local r = try(ws.close, ws, c.code, c.reason)
    if not r.ok then return r end
    return nil -- closed: nothing more to say
end

function ops.ping(ws, c) return { ret = ws:ping(c.data) } end

function ops.sub(ws, c) return { ret = ws:subscribe(c.topic) } end

function ops.unsub(ws, c) return { ret = ws:unsubscribe(c.topic) } end

function ops.pub(ws, c) return { ret = ws:publish(c.topic, c.msg, c.binary) } end

function ops.spub(_, c) return { ret = sb.publish(c.topic, c.msg, c.binary) } end

function ops.count(_, c) return { ret = sb.subscribers(c.topic) } end

function ops.topics()
    local t = sb.topics()
    table.sort(t)
    return { ret = t }
end

function ops.set(ws, c)
    ws.data[c.k] = c.v
    return { ret = true }
end

function ops.get(ws, c) return { ret = ws.data[c.k] or json.null } end

function ops.buffered(ws) return { ret = ws:buffered() } end

-- Send until send() says the queue is past its high-water mark; drain(ws)
-- answers "drained" once it has gone out.
function ops.flood(ws, c)
    local chunk = string.rep("x", c.size)
    local n = 0
    while n < c.max do
        n = n + 1
        if not ws:send(chunk) then break end
    end
    return { ret = n, buffered = ws:buffered() }
end

-- A timer keeps this ws after its connection is gone; once it raises, the
-- error is logged.
function ops.stale(ws)
    local t
    t = sb.every(0.02, function()
        local ok, err = pcall(ws.send, ws, "late")
        if not ok then
            sb.log.warn("stale ws: " .. err)
            t:cancel()
        end
    end)
    ws:close(4001, "bye")
end

-- every(secs/10) ticks three times and cancels itself, a cancelled after()
-- never runs, after(secs) reports what fired and when.
function ops.timers(ws, c)
    local fired, t0, n = {}, sb.now(), 0
    local every
    every = sb.every(c.secs / 10, function()
        n = n + 1
        fired[#fired + 1] = "every " .. n
        if n == 3 then every:cancel() end
    end)
    local cancelled = sb.after(c.secs / 2, function() fired[#fired + 1] = "cancelled" end)
    sb.after(c.secs, function()
        fired[#fired + 1] = "after"
        ws:send(json.encode({ fired = fired, elapsed = sb.now() - t0 }))
    end)
    return { armed = #fired, first = cancelled:cancel(), again = cancelled:cancel() }
end

function ops.now()
    local a = sb.now()
    local b = sb.now()
    local x = 0
    for i = 1, 1e5 do x = x + i end
    return { a = a, b = b, c = sb.now(), x = x }
end

function ops.log(_, c)
    sb.log.info("info says " .. c.msg)
    sb.log.warn("warn says", c.msg, 42)
    sb.log.error("error says " .. c.msg)
    return { ret = true }
end

function ops.json()
    local r = try(json.encode, { f = function() end })
    local d = json.decode('{"a":[1,2,{"b":null}]}')
    return { enc = r, dec = d.a[2], round = json.encode({ k = "v" }) }
end

function ops.shared(_, c)
    sb.shared.counter = (sb.shared.counter or 0) + (c.add or 0)
    return { ret = sb.shared.counter }
end

function probe.open(ws)
    sb.shared.opened[tostring(ws.id)] = true
    ws.data.opened_at = sb.now()
    if ws.query.hello then ws:send("hello " .. ws.query.hello) end
end

function probe.message(ws, msg, binary)
    if binary then
        ws:send(msg, true)
        return
    end
    if msg:sub(1, 1) ~= "{" then
        ws:send("text:" .. msg)
        return
    end
    local c = json.decode(msg)
    local res = ops[c.op](ws, c)
    if res ~= nil then ws:send(json.encode(res)) end
end

function probe.drain(ws)
    ws:send("drained " .. ws:buffered())
end

function probe.close(ws, code, reason)
    local id = tostring(ws.id)
    sb.shared.closes[id] = (sb.shared.closes[id] or 0) + 1
    sb.log.info(("closed id=%s code=%d reason=%s"):format(id, code, reason))
end

return probe
