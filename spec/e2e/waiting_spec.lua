-- Handlers that wait, on the real server: every handler kind and timers may
-- sb.sleep without blocking the loop; a connection's events stay in order
-- while its handler waits; close runs after, once; a reload lets a waiting
-- handler finish on its old version; --handler-timeout ends one that waits
-- too long; 1,000 waits run at once; the budget is per resume.
local server = require "server"
local proc = require "sbt_proc"
local rawws = require "rawws"
local wsframe = require "wsframe"

local W = [[
local sb = require "switchboard"
local M = {}

function M.upgrade(req)
    if req.query.up then sb.sleep(tonumber(req.query.up)) end
    if req.query.refuse then sb.sleep(0.01) return false, 403, "refused after a wait" end
    return true
end

function M.open(ws)
    if ws.query.open then
        sb.sleep(0.05)
        ws:send("opened after a wait")
    end
end

local function spin(n) for _ = 1, n do end end

function M.message(ws, msg)
    local cmd, arg = msg:match("^(%w+):?(.*)$")
    if cmd == "order" then
        sb.sleep(math.random() * 0.005)
        ws:send(arg)
    elseif cmd == "gone" then
        sb.sleep(0.3)
        sb.log.info("send after the peer left: " .. tostring(ws:send("late")))
    elseif cmd == "long" then
        sb.sleep(30)
        ws:send("never")
    elseif cmd == "budget" then
        -- three stretches of 400,000 instructions, each under --lua-budget 1,000,000
        spin(400000) sb.sleep(0) spin(400000) sb.sleep(0) spin(400000)
        ws:send("budget kept")
    elseif cmd == "spin" then
        sb.sleep(0)
        spin(3000000)
        ws:send("never")
    elseif cmd == "threads" then
        local a = sb.spawn(function(x) sb.sleep(0.05) return x * 2 end, 21)
        local b = sb.spawn(function() sb.sleep(0.01) error("b failed", 0) end)
        local ok1, v = sb.wait(a)
        local ok2, e = sb.wait(b)
        ws:send(("%s %s %s %s"):format(tostring(ok1), v, tostring(ok2), e))
    elseif cmd == "pcalls" then
        local ok1 = pcall(sb.sleep, 0.01)
        local ok2 = xpcall(function() sb.sleep(0.01) return true end, debug.traceback)
        local ok3, err = pcall(function() return table.sort({ 2, 1 }, function(a, b) sb.sleep(0) return a < b end) end)
        ws:send(("%s %s %s %s"):format(tostring(ok1), tostring(ok2), tostring(ok3),
            tostring(err):match("'sleep' cannot wait here: inside a metamethod") and "raised" or err))
    elseif cmd == "fill" then
        local n, chunk = 0, ("x"):rep(1024)
        repeat n = n + 1 until not ws:send(chunk)
        ws:send("filled " .. n)
    elseif cmd == "stats" then
        local st = sb.stats()
        ws:send(("%d %d %d"):format(st.handlers_waiting, st.handler_waits, st.handler_timeouts))
    elseif cmd == "timer" then
        ws:send(tostring(sb.shared.timer_waited))
    else
        ws:send("echo:" .. msg)
    end
end

function M.drain(ws)
    sb.sleep(0.2)
    ws:send("drained")
end

function M.close(ws, code)
    sb.sleep(0.05)
    local n = (sb.shared.closes[ws.id] or 0) + 1
    sb.shared.closes[ws.id] = n
    sb.log.info(("close after a wait: ws %d code %d call %d"):format(ws.id, code, n))
end

function M.request(req)
    if req.query.long then sb.sleep(30) end
    sb.sleep(tonumber(req.query.sleep) or 0)
    return { status = 200, body = "waited " .. (req.query.sleep or "0") }
end

sb.shared.closes = sb.shared.closes or {}
sb.after(0, function()
    local t = sb.now()
    sb.sleep(0.1)
    sb.shared.timer_waited = sb.now() - t >= 0.1
    sb.log.info("a timer waited")
end)

return M
]]

local R1 = [[
local sb = require "switchboard"
return { message = function(ws, msg)
    if msg == "slow" then sb.sleep(0.5) end
    ws:send("v1:" .. msg)
end }
]]
local R2 = [[
return { message = function(ws, msg) ws:send("v2:" .. msg) end }
]]
-- A message that waits, then starts a ticking timer: across a reload the timer
-- belongs to the version the handler runs on, which the reload has replaced.
local RT1 = [[
local sb = require "switchboard"
return { message = function(ws, msg)
    if msg == "slow" then sb.sleep(0.5) end
    local t = sb.every(0.05, function() ws:send("tick v1") end)
    if msg ~= "slow" then t:cancel() end
    ws:send("v1:" .. msg)
end }
]]
local RT2 = [[
return { message = function(ws, msg) ws:send("v2:" .. msg) end }
]]
local TOP = [[
local sb = require "switchboard"
sb.sleep(1)
return {}
]]

local function upgrade(port, path)
    local c = rawws.connect(port)
    c:send(rawws.request(path))
    local status, _, body = c:http()
    c:close()
    return status, body
end

describe("handlers that wait", function()
    local s, app, clients

    setup(function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/w.lua", W)
        server.write_file(app .. "/r.lua", R1)
        server.write_file(app .. "/top.lua", TOP)
        s = server.start{ app = app, args = { "--handler-timeout", "1", "--lua-budget", "1000000",
            "--out-high", "65536", "--out-low", "16384" } }
        s:wait_log("reload: watching")
    end)

    teardown(function()
        for _, c in ipairs(clients or {}) do c:close() end
        if s then s:stop() end
        if app then os.execute("rm -rf '" .. app .. "'") end
    end)

    before_each(function() clients = clients or {} end)

    local function open(path)
        local c = rawws.open(s.port, path)
        clients[#clients + 1] = c
        return c
    end

    it("refuses to load a route whose top level waits, with a clear error", function()
        s:wait_log("top%.lua:2: 'sleep' cannot wait here: only a handler or a timer function may wait")
        assert.equal(404, (upgrade(s.port, "/top")))
    end)

    it("lets a timer function wait", function()
        s:wait_log("a timer waited")
        assert.equal("true", open("/w"):echo("timer"))
    end)

    it("lets upgrade wait before the 101, and refuse after a wait", function()
        local t0 = proc.now()
        local c = open("/w?up=0.2")
        assert.is_true(proc.now() - t0 >= 0.2)
        assert.equal("echo:x", c:echo("x"))
        local status, body = upgrade(s.port, "/w?refuse=1")
        assert.equal(403, status)
        assert.equal("refused after a wait", body)
    end)

    it("lets open wait, and holds the first message until it has returned", function()
        local c = rawws.connect(s.port)
        clients[#clients + 1] = c
        -- the handshake and a message in one write: the message waits for open
        c:send(rawws.request("/w?open=1") .. wsframe.text("first"))
        assert.equal(101, (c:http_head()))
        assert.equal("opened after a wait", c:recv_frame().payload)
        assert.equal("echo:first", c:recv_frame().payload)
    end)

    it("lets a request handler wait, and answers pipelined requests in order", function()
        local c = rawws.connect(s.port)
        c:send("GET /w?sleep=0.1 HTTP/1.1\r\nHost: x\r\n\r\nGET /w?sleep=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        local st1, _, b1 = c:http()
        local st2, _, b2 = c:http()
        c:close()
        assert.same({ 200, "waited 0.1", 200, "waited 0" }, { st1, b1, st2, b2 })
    end)

    it("lets drain wait, and holds the next message until it has returned", function()
        local c = open("/w")
        c:send(wsframe.text("fill"))
        local n = 0
        while true do
            local p = c:recv_frame().payload
            if p:match("^filled") then
                assert.equal("filled " .. n, p)
                break
            end
            n = n + 1
        end
        c:send(wsframe.text("after"))
        assert.equal("drained", c:recv_frame().payload)
        assert.equal("echo:after", c:recv_frame().payload)
    end)

    it("runs light threads and returns their results or errors to sb.wait", function()
        assert.equal("true 42 false b failed", open("/w"):echo("threads"))
    end)

    it("waits inside pcall and xpcall, and raises inside a C function that cannot yield", function()
        assert.equal("true true false raised", open("/w"):echo("pcalls"))
    end)

    it("keeps a fast sender's messages in order while each handler waits a few ms", function()
        local c = open("/w")
        local burst = {}
        for i = 1, 100 do burst[i] = wsframe.text("order:" .. i) end
        c:send(table.concat(burst))
        for i = 1, 100 do assert.equal(tostring(i), c:recv_frame().payload) end
    end)

    it("goes on when the peer leaves during a wait: send says false, then close runs once", function()
        local c = rawws.open(s.port, "/w")
        c:send(wsframe.text("gone"))
        c:close()
        s:wait_log("send after the peer left: false")
        s:wait_log("close after a wait: ws %d+ code 1006 call %d+")
        local id = s:log():match("send after the peer left: false.-close after a wait: ws (%d+) code 1006")
        assert.truthy(id, "close ran after the handler's send")
        proc.sleep(0.3)
        local _, n = s:log():gsub("close after a wait: ws " .. id .. " code", "")
        assert.equal(1, n)
    end)

    it("gives close the code of the peer's close frame sent just before it left", function()
        local c = rawws.open(s.port, "/w")
        -- a message, then the close frame and the FIN while "gone" waits
        c:send(wsframe.text("gone") .. wsframe.text("order:x") .. wsframe.close(4321, "bye now"))
        c:close()
        s:wait_log("send after the peer left: false")
        s:wait_log("close after a wait: ws %d+ code 4321")
    end)

    it("ends a message handler that waits past --handler-timeout with 1011", function()
        local c = open("/w")
        c:send(wsframe.text("long"))
        local t0 = proc.now()
        local code, reason = c:recv_close()
        assert.same({ 1011, "internal error" }, { code, reason })
        assert.is_true(proc.now() - t0 < 5)
        s:wait_log("message handler timed out after 1 s %(%-%-handler%-timeout%)")
    end)

    it("counts the handlers waiting now, those that waited and those timed out in sb.stats()", function()
        local a = open("/w")
        a:send(wsframe.text("long"))
        local b = open("/w")
        local waiting, waits, timeouts = b:echo("stats"):match("^(%d+) (%d+) (%d+)$")
        assert.is_true(tonumber(waiting) >= 1)
        assert.is_true(tonumber(waits) >= 1)
        assert.equal(1011, (a:recv_close()))
        local _, _, after = b:echo("stats"):match("^(%d+) (%d+) (%d+)$")
        assert.is_true(tonumber(after) > tonumber(timeouts))
    end)

    it("answers 500 for a request or an upgrade that waits past --handler-timeout", function()
        assert.equal(500, (rawws.get(s.port, "/w?long=1")))
        assert.equal(500, (upgrade(s.port, "/w?up=30")))
        s:wait_log("request handler timed out")
        s:wait_log("upgrade handler timed out")
    end)

    it("counts the instruction budget per resume", function()
        local c = open("/w")
        assert.equal("budget kept", c:echo("budget"))
        local c2 = open("/w")
        c2:send(wsframe.text("spin"))
        assert.equal(1011, (c2:recv_close()))
        s:wait_log("instruction budget exceeded")
    end)

    it("lets a handler that waits across a reload finish on its old version", function()
        local c = open("/r")
        assert.equal("v1:a", c:echo("a"))
        c:send(wsframe.text("slow"))
        server.write_file(app .. "/r.lua", R2)
        s:wait_log("reloaded %S*/r%.lua")
        assert.equal("v1:slow", c:recv_frame().payload)
        assert.equal("v2:b", c:echo("b"))
    end)

    it("gives a timer made by a handler that waited across a reload to its old version", function()
        server.write_file(app .. "/rt.lua", RT1)
        s:wait_log("rt%.lua")
        local c = open("/rt")
        assert.equal("v1:a", c:echo("a"))
        c:send(wsframe.text("slow"))
        server.write_file(app .. "/rt.lua", RT2)
        s:wait_log("reloaded %S*/rt%.lua")
        assert.equal("v1:slow", c:recv_frame().payload)
        proc.sleep(0.3) -- six ticks, were the timer live
        assert.equal("v2:b", c:echo("b"))
    end)

    it("waits in 1,000 upgrades at once: all get their 101 in about the wait, not one after another", function()
        local r = server.python([[
port = int(sys.argv[1])
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /w?up=0.5 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    line = await r.readline()
    return (line, w)
async def main():
    loop = asyncio.get_running_loop()
    t = loop.time()
    res = await asyncio.gather(*[one() for _ in range(1000)])
    took = loop.time() - t
    ok = sum(1 for line, _ in res if line.startswith(b"HTTP/1.1 101"))
    for _, w in res: w.close()
    print(json.dumps({"ok": ok, "took": took}))
asyncio.run(main())
]], s.port)
        assert.equal(1000, r.ok)
        assert.is_true(r.took >= 0.5)
        assert.is_true(r.took < 3, "1,000 upgrades waiting 0.5 s took " .. r.took .. " s")
        io.stderr:write(("\n# 1,000 upgrades each waiting 0.5 s: all 101s in %.2f s\n"):format(r.took))
    end)

end)

describe("an upgrade that waits past --handshake-timeout", function()
    it("is dropped without a 101, and the handler's late answer is let go", function()
        local app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/w.lua", W)
        local s = server.start{ app = app, args = { "--no-watch", "--handshake-timeout", "1" } }
        local ok, err = pcall(function()
            local c = rawws.connect(s.port)
            local t0 = proc.now()
            c:send(rawws.request("/w?up=2.5"))
            assert.is_nil((c:http_head()))
            local took = proc.now() - t0
            c:close()
            assert.is_true(took >= 0.9 and took < 2.4, "dropped after " .. took .. " s")
            local x = rawws.open(s.port, "/w")
            assert.equal("echo:x", x:echo("x"))
            x:close()
            proc.sleep(2) -- the handler's answer comes to a connection that is gone
            local y = rawws.open(s.port, "/w")
            assert.equal("echo:y", y:echo("y"))
            y:close()
        end)
        s:stop()
        os.execute("rm -rf '" .. app .. "'")
        assert(ok, err)
    end)
end)

describe("shutdown with handlers waiting", function()
    it("waits for them (up to --drain-timeout), then exits", function()
        local app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/w.lua", W)
        local s = server.start{ app = app, args = { "--no-watch", "--drain-timeout", "5" } }
        local ok, err = pcall(function()
            -- a connection that died while its handler waited and whose close
            -- handler waited too leaves the others listed: they get their 1001
            local idle = rawws.open(s.port, "/w")
            local b = rawws.open(s.port, "/w")
            b:send(wsframe.text("gone"))
            b:close()
            s:wait_log("close after a wait: ws %d+ code 1006")
            local c = rawws.open(s.port, "/w")
            c:send(wsframe.text("gone"))
            proc.sleep(0.05)
            s:signal(proc.SIGTERM)
            assert.equal(1001, (idle:recv_close()))
            idle:send(wsframe.close(1001, ""))
            assert.equal(1001, (c:recv_close()))
            c:send(wsframe.close(1001, ""))
            local how, code = s:wait_exit(10)
            c:close()
            assert.same({ "exited", 0 }, { how, code })
            local log = s:log()
            idle:close()
            local handler = log:find("shutting down", 1, true)
            handler = handler and log:find("send after the peer left: false", handler, true)
            local done = log:find("shutdown complete", 1, true)
            assert.truthy(handler and done and handler < done, log)
        end)
        s:stop()
        os.execute("rm -rf '" .. app .. "'")
        assert(ok, err)
    end)
end)
