-- The core's ownership rules against the real binary (issue 12): a connection
-- that died stays dead (never re-armed, never left on the flush list), HTTP
-- output is bounded like WebSocket output, static files stay inside public/,
-- script headers of any size reach the peer, and peers dropped by policy get a
-- close frame. The ASan build runs these: s:stop() fails on any report.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"

local ENV = { ASAN_OPTIONS = "detect_leaks=1:abort_on_error=1:quarantine_size_mb=4" }

local function make_app(files)
    local dir = server.tmpname("-app")
    assert(os.execute("mkdir -p " .. dir .. "/public"))
    for name, text in pairs(files) do
        local sub = name:match("^(.*)/[^/]+$")
        if sub then assert(os.execute("mkdir -p " .. dir .. "/" .. sub)) end
        server.write_file(dir .. "/" .. name, text)
    end
    return dir
end

local function rss_kib(pid)
    return tonumber(server.read_file("/proc/" .. pid .. "/status"):match("VmRSS:%s*(%d+) kB"))
end

-- Every one of n fresh connections gets its 101 and an echo.
local function assert_serves(s, n, path)
    for i = 1, n do
        local c = rawws.open(s.port, path or "/echo")
        c.timeout = 5
        assert.are.equal("still here " .. i, c:echo("still here " .. i))
        c:close()
    end
end

local ECHO = "return { message = function(ws, m, b) ws:send(m, b) end }\n"

describe("core lifecycle", function()
    local s, app, clients
    before_each(function() clients = {} end)
    after_each(function()
        for _, c in ipairs(clients) do pcall(c.close, c) end
        if s then s:stop() end
        s = nil
        if app then os.execute("rm -rf " .. app) end
        app = nil
    end)
    local function track(c)
        clients[#clients + 1] = c
        return c
    end

    it("frees a peer that a close handler pushed past --out-max without touching it again", function()
        app = make_app{
            ["echo.lua"] = ECHO,
            ["flood.lua"] = [[
local sb = require "switchboard"
sb.shared.open = sb.shared.open or {}
local open = sb.shared.open
return {
    open = function(ws) open[ws.id] = ws end,
    message = function(ws, m) ws:send("ok") end,
    close = function(ws)
        open[ws.id] = nil
        local big = string.rep("x", 60000)
        -- a small frame first: then the large ones queue behind it (a large
        -- frame with nothing queued before it would go to the kernel at once)
        for _, other in pairs(open) do other:send("-"); other:send(big); other:send(big) end
    end,
}
]],
        }
        s = server.start{ app = app, env = ENV,
                          args = { "--out-high", "50000", "--out-low", "10000", "--out-max", "100000" } }
        -- several peers that never read, then one that leaves
        for _ = 1, 6 do
            local c = track(rawws.open(s.port, "/flood", nil, { rcvbuf = 4096 }))
            c:send(wsframe.text("hi"))
        end
        local leaver = rawws.open(s.port, "/flood")
        assert.are.equal("ok", leaver:echo("hi"))
        leaver:send(wsframe.close(1000))
        leaver:recv_close()
        leaver:close()
        s:wait_log("past %-%-out%-max", 5)
        assert_serves(s, 8)
        assert.is_true(s:running())
    end)

    it("keeps a connection dead after send and close both pass --out-max in one handler", function()
        app = make_app{
            ["echo.lua"] = ECHO,
            ["bye.lua"] = [[
return { message = function(ws)
    ws:send("-") -- queued: the large frame queues behind it (99,954 bytes in all)
    ws:send(string.rep("y", 99947))
    ws:close(1000, string.rep("r", 100))
end }
]],
        }
        s = server.start{ app = app, env = ENV,
                          args = { "--out-high", "1000", "--out-low", "500", "--out-max", "100000" } }
        for _ = 1, 3 do
            local c = track(rawws.open(s.port, "/bye"))
            c:send(wsframe.text("go"))
            -- the queue is dropped, but the peer still learns why
            c.timeout = 5
            local code = c:recv_close()
            assert.are.equal(1008, code)
            assert.is_true(c:eof(5))
        end
        -- new connections reuse those descriptor numbers and must get their 101
        assert_serves(s, 10)
    end)

    it("sends a close frame to a peer that never answers a ping", function()
        app = make_app{ ["echo.lua"] = ECHO }
        s = server.start{ app = app, env = ENV, args = { "--ping-interval", "1", "--pong-timeout", "1" } }
        local mute = track(rawws.open(s.port, "/echo"))
        mute.timeout = 4
        assert.are.equal(9, mute:recv_frame().opcode)
        local code, reason = mute:recv_close()
        assert.are.equal(1001, code)
        assert.are.equal("no pong", reason)
        assert.is_true(mute:eof(5))
    end)

    it("refuses an upgrade request that carries a body with 400", function()
        app = make_app{ ["echo.lua"] = ECHO }
        s = server.start{ app = app, env = ENV }
        local c = track(rawws.connect(s.port))
        c:send(rawws.request("/echo", { "Content-Length: 6" }) .. wsframe.text("x"))
        local status = c:http()
        assert.are.equal(400, status)
        assert.is_true(c:eof(5))
        assert_serves(s, 1)
    end)

    it("sends script headers of any size whole, in a 101 and in a request answer", function()
        app = make_app{
            ["big.lua"] = [[
local function hdrs()
    local h = {}
    for i = 1, 120 do h["X-Big-" .. i] = string.rep("v", 60) .. i end
    return h
end
return {
    upgrade = function() return true, { headers = hdrs() } end,
    request = function() return { status = 200, headers = hdrs(), body = "fine" } end,
    message = function(ws, m) ws:send(m) end,
}
]],
        }
        s = server.start{ app = app, env = ENV }
        local c = track(rawws.connect(s.port))
        c:send(rawws.request("/big"))
        local status, headers = c:http_head()
        assert.are.equal(101, status)
        for i = 1, 120 do assert.are.equal(string.rep("v", 60) .. i, headers["x-big-" .. i]) end
        assert.are.equal("hi", c:echo("hi"))
        local st, h2, body = rawws.get(s.port, "/big")
        assert.are.equal(200, st)
        assert.are.equal("fine", body)
        for i = 1, 120 do assert.are.equal(string.rep("v", 60) .. i, h2["x-big-" .. i]) end
    end)

    it("does not serve a symlinked directory index that points outside public/", function()
        app = make_app{ ["echo.lua"] = ECHO, ["secret.txt"] = "top secret\n",
                        ["public/sub/keep.txt"] = "inside\n" }
        assert(os.execute(("ln -s %s/secret.txt %s/public/sub/index.html"):format(app, app)))
        s = server.start{ app = app, env = ENV }
        for _, path in ipairs{ "/sub", "/sub/", "/sub/index.html" } do
            local st, _, body = rawws.get(s.port, path)
            assert.are.equal(404, st, path)
            assert.is_nil(body:find("top secret", 1, true))
        end
        local st, _, body = rawws.get(s.port, "/sub/keep.txt")
        assert.are.equal(200, st)
        assert.are.equal("inside\n", body)
    end)

    it("streams a file larger than memory would allow, whole and exact", function()
        app = make_app{ ["echo.lua"] = ECHO }
        local size = 80 * 1024 * 1024 + 7
        -- a sparse file: zeros, with a marker at the end
        local f = assert(io.open(app .. "/public/huge.bin", "wb"))
        f:seek("set", size - 4)
        f:write("TAIL")
        f:close()
        s = server.start{ app = app, env = ENV }
        local c = track(rawws.connect(s.port))
        c:send("GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        local status, headers = c:http_head()
        assert.are.equal(200, status)
        assert.are.equal(tostring(size), headers["content-length"])
        local got, last = #c.buf, c.buf
        c.buf = ""
        c.sock:settimeout(10)
        while got < size do
            local data, err, partial = c.sock:receive(math.min(1 << 20, size - got))
            data = data or partial
            assert(data and #data > 0, err)
            got = got + #data
            last = (last .. data):sub(-4)
        end
        assert.are.equal(size, got)
        assert.are.equal("TAIL", last)
        -- keep-alive: the same connection answers the next request
        c:send("HEAD /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.are.equal(200, (c:http_head()))
    end)

    it("answers byte ranges with 206 and Content-Range, and 416 past the end", function()
        app = make_app{ ["echo.lua"] = ECHO, ["public/abc.txt"] = "0123456789abcdef" }
        s = server.start{ app = app, env = ENV }
        local function get(range, extra)
            return rawws.http(s.port, "GET /abc.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                .. "Range: " .. range .. "\r\n" .. (extra or "") .. "\r\n")
        end
        local st, h, body = get("bytes=2-5")
        assert.are.equal(206, st)
        assert.are.equal("2345", body)
        assert.are.equal("bytes 2-5/16", h["content-range"])
        assert.are.equal("4", h["content-length"])
        assert.are.equal("bytes", h["accept-ranges"])
        st, h, body = get("bytes=10-")
        assert.are.same({ 206, "abcdef", "bytes 10-15/16" }, { st, body, h["content-range"] })
        st, h, body = get("bytes=-3")
        assert.are.same({ 206, "def", "bytes 13-15/16" }, { st, body, h["content-range"] })
        st, h, body = get("bytes=12-1000")
        assert.are.same({ 206, "cdef", "bytes 12-15/16" }, { st, body, h["content-range"] })
        st, h = get("bytes=16-")
        assert.are.equal(416, st)
        assert.are.equal("bytes */16", h["content-range"])
        -- a list of ranges, or a unit we do not know: the whole file
        local function whole(range, extra)
            local status, _, b = get(range, extra)
            assert.are.same({ 200, "0123456789abcdef" }, { status, b })
        end
        whole("bytes=0-1,4-5")
        whole("lines=1-2")
        -- If-Range with another date: the whole file, it may have changed
        whole("bytes=0-1", "If-Range: Mon, 01 Jan 2001 00:00:00 GMT\r\n")
    end)

    it("answers If-None-Match with the file's ETag with 304", function()
        app = make_app{ ["echo.lua"] = ECHO, ["public/e.txt"] = "etag me" }
        s = server.start{ app = app, env = ENV }
        local st, h = rawws.get(s.port, "/e.txt")
        assert.are.equal(200, st)
        local etag = h["etag"]
        assert.truthy(etag and etag:match('^W/".+"$'), tostring(etag))
        local function cond(v)
            local c = rawws.connect(s.port)
            c:send("GET /e.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nIf-None-Match: "
                .. v .. "\r\n\r\n")
            local status, headers = c:http_head()
            c:close()
            return status, headers
        end
        local st2, h2 = cond(etag)
        assert.are.equal(304, st2)
        assert.are.equal(etag, h2["etag"])
        assert.is_nil(h2["content-length"])
        assert.are.equal(304, (cond('"nope", ' .. etag:sub(3))))
        assert.are.equal(304, (cond("*")))
        assert.are.equal(200, (cond('"nope"')))
    end)

    it("bounds memory for pipelined GETs of a big file that are never read", function()
        app = make_app{ ["echo.lua"] = ECHO }
        local f = assert(io.open(app .. "/public/big.bin", "wb"))
        f:seek("set", 8 * 1024 * 1024 - 1)
        f:write("!")
        f:close()
        s = server.start{ app = app, env = ENV }
        local rss0 = rss_kib(s.pid)
        local c = track(rawws.connect(s.port, nil, { rcvbuf = 4096 }))
        c:send(string.rep("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 40))
        -- give the server time to do whatever it would do with them
        local t0 = proc.now()
        while proc.now() - t0 < 1.5 do proc.sleep(0.1) end
        local grew = rss_kib(s.pid) - rss0
        assert.is_true(grew < 24 * 1024, ("VmRSS grew %d KiB"):format(grew))
        assert_serves(s, 2)
    end)

    it("answers many pipelined small requests in order with bounded memory", function()
        app = make_app{ ["echo.lua"] = ECHO, ["public/one.txt"] = string.rep("k", 4000) }
        s = server.start{ app = app, env = ENV }
        local n = 5000
        local rss0 = rss_kib(s.pid)
        local c = track(rawws.connect(s.port, nil, { rcvbuf = 4096 }))
        c:send(string.rep("GET /one.txt HTTP/1.1\r\nHost: x\r\n\r\n", n))
        local t0 = proc.now()
        while proc.now() - t0 < 1 do proc.sleep(0.1) end
        local grew = rss_kib(s.pid) - rss0
        assert.is_true(grew < 12 * 1024, ("VmRSS grew %d KiB"):format(grew))
        -- now read them all: every one answered, 200, whole
        local seen, tail = 0, ""
        c.sock:settimeout(10)
        local per = #("HTTP/1.1 200 OK")
        while seen < n do
            local data, err, partial = c.sock:receive(1 << 16)
            data = data or partial
            assert(data and #data > 0, err)
            local chunk = tail .. data
            local pos = 1
            while true do
                local a, b = chunk:find("HTTP/1.1 200 OK", pos, true)
                if not a then break end
                seen = seen + 1
                pos = b + 1
            end
            tail = chunk:sub(-(per - 1))
        end
        assert.are.equal(n, seen)
        assert_serves(s, 1)
    end)

    -- ASan's allocator keeps its own heap: only the plain build can show this
    local plain = os.getenv("SB_SANITIZE") ~= "ON"
    ;(plain and it or pending)("hands freed heap back once heavy compressed traffic calms down", function()
        app = make_app{ ["echo.lua"] = ECHO }
        s = server.start{ app = app, args = { "--log-level", "debug" } }
        local res = server.python([[
import os
PORT = int(sys.argv[1])
async def client():
    async with websockets.connect("ws://127.0.0.1:%d/echo" % PORT, compression="deflate",
                                  max_size=None) as ws:
        for _ in range(20):
            msg = os.urandom(8192).hex()
            await ws.send(msg)
            assert await ws.recv() == msg
async def main():
    await asyncio.gather(*[client() for _ in range(150)])
    print(json.dumps({"ok": True}))
asyncio.run(main())
]], s.port)
        assert.is_true(res.ok)
        local peak = rss_kib(s.pid)
        s:wait_log("heap trimmed", 6)
        local after = server.wait_for(function()
            local r = rss_kib(s.pid)
            return r < peak / 2 and r
        end, 3, "the heap to shrink")
        assert.is_true(after < peak / 2, ("VmRSS %d KiB after, %d KiB at the peak"):format(after, peak))
    end)
end)
