-- switchboard.testing's sb.tcp: the spec plays the service with t.tcp.on, so a
-- handler that talks to a TCP service (memcached here) is tested without one.
local t = require "switchboard.testing"

local dir

local CACHE = [[
local sb = require "switchboard"
local cache = {}
function cache.message(ws, key)
    local sock, err = sb.tcp.connect("cache.local", 11211, { timeout = 1 })
    if not sock then return ws:send("error: " .. err) end
    sock:send("get " .. key .. "\r\n")
    local line = sock:receive()
    local n = line and tonumber(line:match("^VALUE %S+ %d+ (%d+)$"))
    local value = n and sock:receive(n)
    sock:close()
    ws:send(value or "miss")
end
return cache
]]

before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    local f = assert(io.open(dir .. "/cache.lua", "w"))
    f:write(CACHE)
    f:close()
    t.tcp.clear()
end)

after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
    t.tcp.clear()
end)

describe("switchboard.testing: sb.tcp", function()
    it("answers a handler's sends with the spec's function", function()
        local peer
        t.tcp.on("^cache%.local:11211$", function(data, p)
            peer = p
            if data == nil then return nil end -- nothing sent at connect
            if data == "get greeting\r\n" then return "VALUE greeting 0 5\r\nhello\r\nEND\r\n" end
            return "END\r\n"
        end)
        local c = t.app(dir):load("cache"):connect()
        c:message("greeting")
        c:message("other")
        assert.same({ { data = "hello", binary = false }, { data = "miss", binary = false } }, c.sent)
        assert.same({ "get other\r\n" }, peer.received)
    end)

    it("passes a refused connect through", function()
        t.tcp.on("cache", function() return nil, "connection refused" end)
        local c = t.app(dir):load("cache"):connect()
        c:message("k")
        assert.same({ { data = "error: connection refused", binary = false } }, c.sent)
    end)

    it("receives as the server does: lines, counts, the rest, timeout and closed", function()
        t.tcp.on("^svc:1$", function(data, peer)
            if data == nil then return "hello\r\nbare\n12" end
            if data == "bye" then peer:close() return "tail" end
            return "ok:" .. data .. "\n"
        end)
        local sb = t.app(dir).module
        local sock = assert(sb.tcp.connect("svc", 1))
        assert.are.equal("hello", sock:receive())
        assert.are.equal("bare", sock:receive("*l"))
        assert.are.equal("1", sock:receive(1))
        assert.same({ nil, "timeout", "2" }, { sock:receive(5) }) -- no more is coming yet
        assert.same({ nil, "timeout", "" }, { sock:receive("*a") })
        assert.are.equal(1, sock:send("x"))
        assert.are.equal("ok:x", sock:receive())
        assert.are.equal(3, sock:send("bye"))
        assert.are.equal("tail", sock:receive("*a"))
        assert.same({ nil, "closed", "" }, { sock:receive() })
        assert.same({ nil, "connection reset" }, { sock:send("more") })
        assert.is_true(sock:close())
        assert.same({ nil, "closed" }, { sock:close() })
        assert.same({ nil, "closed" }, { sock:send("x") })
    end)

    it("raises on misuse as the server does, and when no service matches", function()
        t.tcp.on("^svc:", function() return nil end)
        local sb = t.app(dir).module
        assert.has_error(function() sb.tcp.connect("svc", 0) end,
            "bad argument #2 to 'connect' (port must be 1..65535)")
        assert.has_error(function() sb.tcp.connect("svc", "80") end,
            "bad argument #2 to 'connect' (integer expected, got string)")
        assert.has_error(function() sb.tcp.connect("svc", 80, { timeout = 0 }) end,
            "bad argument #3 to 'connect' (opts.timeout must be 0 < seconds <= 1e9)")
        local sock = sb.tcp.connect("svc", 80)
        assert.has_error(function() sock:receive("*x") end,
            "bad argument #1 to 'receive' (pattern must be a byte count, \"*l\" or \"*a\")")
        assert.has_error(function() sock:settimeout(-1) end,
            "bad argument #1 to 'settimeout' (seconds must be > 0 and <= 1e9)")
        assert.has_error(function() sb.tcp.connect("nobody", 25) end,
            "switchboard.testing: no t.tcp.on pattern matches nobody:25")
    end)
end)
