-- A client of spec/apps/history/h.lua (the history specs): JSON commands, and the
-- publications it receives kept in order in c.frames.
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"

local h = {}

-- A client of spec/apps/history/h.lua: JSON commands, frames kept in order.
function h.client(s, opts)
    local c = rawws.open(s.port, "/h", nil, opts)
    c.frames = {}
    return c
end

function h.send(c, t)
    assert(c:send(wsframe.text(cjson.encode(t))))
end

-- Read frames until one decodes to a table with op == want; returns it. The
-- publications seen before it are appended to c.frames.
function h.until_op(c, want)
    while true do
        local f = assert(c:recv_frame())
        assert(f.opcode == 1, "text frame expected, got opcode " .. f.opcode)
        local ok, m = pcall(cjson.decode, f.payload)
        if ok and type(m) == "table" and m.op == want then return m end
        c.frames[#c.frames + 1] = f.payload
    end
end

-- Read publications until n are in c.frames.
function h.until_n(c, n)
    while #c.frames < n do
        local f = assert(c:recv_frame())
        c.frames[#c.frames + 1] = f.payload
    end
    return c.frames
end

function h.pub(c, topic, msg, n)
    h.send(c, { op = "pub", topic = topic, msg = msg, n = n })
    return h.until_op(c, "pubbed")
end

function h.sub(c, topic, since, epoch)
    h.send(c, { op = "sub", topic = topic, since = since, epoch = epoch })
    return h.until_op(c, "subbed")
end

function h.read(c, topic, since, limit)
    h.send(c, { op = "read", topic = topic, since = since, limit = limit })
    return h.until_op(c, "items")
end

-- How many times the app's format ran in this client's process (for the publications
-- of that epoch, when given: other topics' cannot interfere).
function h.formats(c, epoch)
    h.send(c, { op = "count", epoch = epoch })
    return h.until_op(c, "count").n
end

function h.positions(frames)
    local out = {}
    for i, p in ipairs(frames) do out[i] = cjson.decode(p).pos end
    return out
end

function h.range(a, b)
    local out = {}
    for i = a, b do out[#out + 1] = i end
    return out
end


return h
