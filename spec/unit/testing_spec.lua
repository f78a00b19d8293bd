-- switchboard.testing: the harness that runs route scripts without a server.
local t = require "switchboard.testing"

-- Each spec writes the scripts it needs into a fresh app directory.
local dir

local function write(name, src)
    local path = dir .. "/" .. name
    local parent = path:match("^(.*)/[^/]+$")
    os.execute("mkdir -p '" .. parent .. "'")
    local f = assert(io.open(path, "w"))
    f:write(src)
    f:close()
end

before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
end)

after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
end)

-- A route that does whatever the test puts in handlers (a table in shared).
local PROBE = [[
local sb = require "switchboard"
local h = {}
for _, name in ipairs({ "upgrade", "open", "message", "close", "drain", "request" }) do
    h[name] = function(...) return sb.shared.probe[name](...) end
end
return h
]]

local function probe(handlers)
    write("probe.lua", PROBE)
    local app = t.app(dir)
    app.shared.probe = setmetatable(handlers or {}, { __index = function(_, name)
        if name == "upgrade" then return function() return true end end
        return function() end
    end })
    return app, app:load("probe")
end

local function sb_of(app)
    return app.module
end

describe("switchboard.testing: loading", function()
    it("loads a route script with lib/ on require's path and a fake switchboard module", function()
        write("lib/greet.lua", 'local sb = require "switchboard"\nreturn function(n) return "hi " .. n, sb end')
        write("hello.lua", [[
            local sb = require "switchboard"
            local greet = require "greet"
            return { open = function(ws)
                local text, sb2 = greet(ws.query.name)
                assert(sb2 == sb)
                ws:send(text)
            end }
        ]])
        local app = t.app(dir)
        local route = app:load("hello")
        assert.equal("/hello", route.path)
        local c = route:connect{ query = { name = "ann" } }
        assert.same({ { data = "hi ann", binary = false } }, c.sent)
    end)

    it("runs each script in its own environment", function()
        write("a.lua", "leaked = 1\nreturn {}")
        t.app(dir):load("a")
        assert.is_nil(rawget(_G, "leaked"))
    end)

    it("maps index scripts and nested folders to paths", function()
        write("index.lua", "return {}")
        write("api/feed.lua", "return {}")
        write("api/index.lua", "return {}")
        local app = t.app(dir)
        assert.equal("/", app:load("index").path)
        assert.equal("/api/feed", app:load("api/feed").path)
        assert.equal("/api", app:load("api/index.lua").path)
    end)

    it("loads one file with t.load", function()
        write("one.lua", "return { open = function(ws) ws:send('one') end }")
        local route = t.load(dir .. "/one.lua")
        assert.equal("one", route:connect().sent[1].data)
    end)

    it("raises when a script does not compile or does not return a table", function()
        write("broken.lua", "return {")
        write("nothing.lua", "return 42")
        write("badhandler.lua", "return { open = 'yes' }")
        local app = t.app(dir)
        assert.has_error(function() app:load("broken") end)
        assert.error_matches(function() app:load("nothing") end, "must return a table of handlers, got number")
        assert.error_matches(function() app:load("badhandler") end, "handler 'open' must be a function")
    end)

    it("gives scripts lua-cjson as switchboard.json", function()
        local app = probe()
        assert.same({ a = { 1, 2 } }, sb_of(app).json.decode('{"a":[1,2]}'))
        assert.equal('{"x":true}', sb_of(app).json.encode({ x = true }))
    end)
end)

describe("switchboard.testing: upgrade and open", function()
    it("runs upgrade(req) with the request, then open(ws)", function()
        local seen = {}
        local _, route = probe{
            upgrade = function(req) seen.req = req return true end,
            open = function(ws) seen.ws = ws end,
        }
        local c = route:connect{ query = "a=1&b=x%20y&a=2", headers = { ["X-Token"] = "t" },
            protocols = { "p1", "p2" }, remote = "10.0.0.1:5000" }
        assert.is_table(c)
        local req = seen.req
        assert.equal("GET", req.method)
        assert.equal("/probe", req.path)
        assert.same({ a = { "1", "2" }, b = "x y" }, req.query)
        assert.equal("t", req.headers["x-token"])
        assert.equal("websocket", req.headers.upgrade)
        assert.equal("p1, p2", req.headers["sec-websocket-protocol"])
        assert.same({ "p1", "p2" }, req.protocols)
        assert.equal("10.0.0.1:5000", req.remote)
        assert.equal(c.ws, seen.ws)
    end)

    it("gives ws its fields", function()
        local _, route = probe{ upgrade = function() return true, { protocol = "p2" } end }
        local c = route:connect{ query = { n = "1" }, headers = { Origin = "o" }, protocols = { "p1", "p2" } }
        local ws = c.ws
        assert.is_number(ws.id)
        assert.same({}, ws.data)
        assert.equal(c.data, ws.data)
        assert.equal("/probe", ws.path)
        assert.same({ n = "1" }, ws.query)
        assert.equal("o", ws.headers.origin)
        assert.equal("127.0.0.1:40000", ws.remote)
        assert.equal("p2", ws.protocol)
        assert.equal("p2", c.protocol)
        assert.are_not.equal(ws.id, route:connect{ protocols = { "p2" } }.ws.id)
    end)

    it("has no subprotocol when there is no upgrade handler", function()
        write("plain.lua", "return {}")
        local c = t.app(dir):load("plain"):connect{ protocols = { "p1" } }
        assert.is_nil(c.ws.protocol)
    end)

    it("returns nil, status, body when upgrade refuses", function()
        local _, route = probe{ upgrade = function(req)
            if req.query.who == "nobody" then return false end
            return false, 401, "who are you?"
        end }
        assert.same({ nil, 401, "who are you?" }, { route:connect() })
        assert.same({ nil, 403 }, { route:connect{ query = { who = "nobody" } } })
    end)

    it("refuses with 403 when upgrade returns nothing or a status outside 400-599", function()
        local answer
        local _, route = probe{ upgrade = function() return answer() end }
        answer = function() end
        assert.same({ nil, 403 }, { route:connect() })
        answer = function() return false, 200 end
        assert.same({ nil, 403 }, { route:connect() })
    end)

    it("passes the upgrade's response headers on", function()
        local _, route = probe{ upgrade = function() return true, { headers = { ["set-cookie"] = "s=1" } } end }
        assert.same({ ["set-cookie"] = "s=1" }, route:connect().response_headers)
    end)

    it("answers 500 and records the error when upgrade raises or answers nonsense", function()
        local answer
        local _, route = probe{ upgrade = function() return answer() end }
        answer = function() error("no db") end
        assert.same({ nil, 500, "Internal Server Error" }, { route:connect() })
        assert.matches("no db", route.errors[1].message)
        assert.equal("upgrade", route.errors[1].handler)
        answer = function() return true, { protocol = "never-offered" } end
        assert.equal(500, select(2, route:connect{ protocols = { "p1" } }))
        assert.matches("did not offer", route.errors[2].message)
        answer = function() return true, { headers = { ["x-bad"] = "a\r\nb" } } end
        assert.equal(500, select(2, route:connect()))
        assert.matches("forbidden character", route.errors[3].message)
    end)

    it("closes with 1011 when open raises, and still runs close once", function()
        local closes = {}
        local _, route = probe{
            open = function() error("bad open") end,
            close = function(_, code) closes[#closes + 1] = code end,
        }
        local c = route:connect()
        assert.same({ code = 1011, reason = "internal error" }, c.closed)
        assert.same({ 1011 }, closes)
        assert.matches("bad open", route.errors[1].message)
        assert.is_false(c:is_open())
    end)
end)

describe("switchboard.testing: messages and closing", function()
    it("delivers text and binary messages to message(ws, msg, binary)", function()
        local got = {}
        local _, route = probe{ message = function(ws, msg, binary)
            got[#got + 1] = { msg, binary }
            ws:send(msg:upper(), binary)
        end }
        local c = route:connect()
        c:message("hi")
        c:message("\0\255", true)
        assert.same({ { "hi", false }, { "\0\255", true } }, got)
        assert.same({ { data = "HI", binary = false }, { data = "\0\255", binary = true } }, c.sent)
    end)

    it("closes with 1007 on a text message that is not UTF-8", function()
        local closes = {}
        local _, route = probe{ close = function(_, code) closes[#closes + 1] = code end }
        local c = route:connect()
        c:message("\255")
        assert.same({ code = 1007, reason = "invalid UTF-8" }, c.closed)
        assert.same({ 1007 }, closes)
    end)

    it("closes when the script closes; send returns false while closing; close runs once", function()
        local results, closes = {}, {}
        local _, route = probe{
            message = function(ws)
                ws:close(4000, "bye")
                results[#results + 1] = ws:send("late")
                ws:close(1000) -- closing twice is harmless
            end,
            close = function(ws, code, reason)
                closes[#closes + 1] = { code, reason }
                results[#results + 1] = ws:send("in close")
            end,
        }
        local c = route:connect()
        c:message("x")
        assert.same({ code = 4000, reason = "bye" }, c.closed)
        assert.same({ false, false }, results)
        assert.same({ { 4000, "bye" } }, closes)
        assert.same({}, c.sent)
    end)

    it("runs close with the peer's code, 1005 without one, 1006 when it vanishes", function()
        local closes = {}
        local _, route = probe{ close = function(ws, code, reason)
            closes[#closes + 1] = { code, reason, ws.data.tag }
        end, open = function(ws) ws.data.tag = "t" end }
        route:connect():close(1001, "going")
        route:connect():close()
        route:connect():drop()
        assert.same({ { 1001, "going", "t" }, { 1005, "", "t" }, { 1006, "", "t" } }, closes)
        assert.is_nil(route:connect().closed)
    end)

    it("raises when a ws is used after its connection closed", function()
        local kept
        local _, route = probe{ open = function(ws) kept = ws end }
        local c = route:connect()
        c:close(1000)
        for _, call in ipairs({
            function() kept:send("x") end, function() kept:close() end, function() kept:ping() end,
            function() kept:subscribe("t") end, function() kept:unsubscribe("t") end,
            function() kept:publish("t", "x") end, function() kept:buffered() end,
        }) do
            assert.error_matches(call, "ws %d+ is closed")
        end
        assert.equal(c.id, kept.id) -- fields stay readable
        assert.error_matches(function() c:message("x") end, "the connection is closed")
    end)

    it("raises Lua-style errors on misuse, at the caller's line", function()
        local kept
        local app, route = probe{ open = function(ws) kept = ws end }
        route:connect()
        local cases = {
            { function() kept:send(nil) end, "bad argument #1 to 'send' %(string expected, got nil%)" },
            { function() kept:send({}) end, "bad argument #1 to 'send' %(string expected, got table%)" },
            { function() kept.send("x") end, "calling 'send' on bad self %(ws expected, got string%)" },
            { function() kept:close("x") end, "bad argument #1 to 'close' %(number expected, got string%)" },
            { function() kept:close(1005) end, "bad argument #1 to 'close' %(close code must be 1000 or 3000%-4999%)" },
            { function() kept:close(1000, ("r"):rep(124)) end, "bad argument #2 to 'close'" },
            { function() kept:ping(("p"):rep(126)) end, "bad argument #1 to 'ping'" },
            { function() kept:send("\255") end, "bad argument #1 to 'send' %(text is not valid UTF%-8" },
            { function() kept:publish("t", "\255") end, "bad argument #2 to 'publish' %(text is not valid UTF%-8" },
            { function() kept.data = 1 end, "table expected, got number" },
            { function() kept:subscribe() end, "bad argument #1 to 'subscribe' %(string expected, got nil%)" },
            { function() kept:subscribe("") end, "bad argument #1 to 'subscribe' %(topic must not be empty%)" },
            { function() kept:publish("t") end, "bad argument #2 to 'publish' %(string expected, got nil%)" },
            { function() kept.id = 1 end, "ws.id is read%-only" },
        }
        for _, case in ipairs(cases) do
            local ok, err = pcall(case[1])
            assert.is_false(ok)
            assert.matches(case[2], err)
            assert.matches("^.-testing_spec%.lua:%d+:", err)
        end
        -- the fake's other files (json, redis, history, crypto) raise at the caller's line too
        local fake = sb_of(app)
        local more = {
            { function() fake.json.encode(0 / 0) end, "bad argument #1 to 'encode' %(cannot encode NaN" },
            { function() fake.redis.connect(true) end,
              "bad argument #1 to 'connect' %(string expected, got boolean%)" },
            { function() fake.history.keep(1) end, "bad argument #1 to 'keep' %(string expected, got number%)" },
            { function() fake.crypto.sha256() end, "bad argument #1 to 'sha256' %(string expected, got no value%)" },
        }
        for _, case in ipairs(more) do
            local ok, err = pcall(case[1])
            assert.is_false(ok)
            assert.matches(case[2], err)
            assert.matches("^.-testing_spec%.lua:%d+:", err)
        end
    end)

    it("closes with 1011 when message raises and records the error with its traceback", function()
        local app, route = probe{ message = function(_, msg)
            if msg == "boom" then error("exploded") end
        end }
        local a, b = route:connect(), route:connect()
        a:message("boom")
        assert.same({ code = 1011, reason = "internal error" }, a.closed)
        assert.equal(1, #route.errors)
        assert.equal("message", route.errors[1].handler)
        assert.matches("exploded", route.errors[1].message)
        assert.matches("stack traceback", route.errors[1].traceback)
        assert.equal("error", app.logs[#app.logs].level)
        b:message("fine") -- other connections go on
        assert.is_true(b:is_open())
    end)

    it("raises at once in strict mode", function()
        write("bad.lua", "return { message = function() error('strict boom') end }")
        local c = t.app(dir, { strict = true }):load("bad"):connect()
        assert.error_matches(function() c:message("x") end, "strict boom")
    end)

    it("lets a script replace ws.data with another table", function()
        local _, route = probe{ open = function(ws) ws.data = { fresh = true } end }
        local c = route:connect()
        assert.same({ fresh = true }, c.ws.data)
        assert.equal(c.ws.data, c.data)
    end)

    it("records pings", function()
        local _, route = probe{ message = function(ws, msg) ws:ping(msg) end }
        local c = route:connect()
        c:message("abc")
        assert.same({ "abc" }, c.pings)
    end)

    it("reports backpressure through buffered() and send(), and runs drain", function()
        local results = {}
        local _, route = probe{
            message = function(ws) results[#results + 1] = { ws:send("x"), ws:buffered() } end,
            drain = function(ws) results[#results + 1] = "drain " .. ws:buffered() end,
        }
        local c = route:connect()
        c:message("1")
        c:pressure(70000)
        c:message("2")
        c:drain()
        assert.same({ { true, 0 }, { false, 70000 }, "drain 0" }, results)
        assert.equal(2, #c.sent)
    end)
end)

describe("switchboard.testing: sb.subscribe and presence", function()
    it("runs sb.subscribe functions after the event, for the app's and others' publishes", function()
        write("feed.lua", [[
local sb = require "switchboard"
local seen = {}
sb.shared.seen = seen
sb.subscribe("news", function(msg, binary) seen[#seen + 1] = msg .. (binary and "!" or "") end)
return { message = function(ws, msg)
    sb.publish("news", msg)
    ws:send(tostring(#seen))  -- not yet: the subscriber runs after this handler
end }
]])
        local app = t.app(dir)
        local route = app:load("feed")
        local c = route:connect()
        c:message("one")
        assert.equal("0", c.sent[1].data)
        assert.same({ "one" }, app.shared.seen)
        assert.equal(0, app:publish("news", "from a backend"))
        app:publish("news", "\1", true)
        assert.same({ "one", "from a backend", "\1!" }, app.shared.seen)
        assert.equal(1, #app.published) -- app:publish is not the app's own
    end)

    it("replaces a version's subscriptions on reload, and keeps them when the reload fails", function()
        local src = [[
local sb = require "switchboard"
sb.shared.seen = sb.shared.seen or {}
sb.subscribe("t", function(msg) table.insert(sb.shared.seen, "%s " .. msg) end)
%s
return {}
]]
        write("r.lua", src:format("v1", ""))
        local app = t.app(dir)
        local route = app:load("r")
        app:publish("t", "a")
        write("r.lua", src:format("v2", ""))
        assert.is_true(route:reload())
        app:publish("t", "b")
        write("r.lua", src:format("v3", "error('broken')"))
        assert.is_nil(route:reload())
        app:publish("t", "c")
        assert.same({ "v1 a", "v2 b", "v2 c" }, app.shared.seen)
    end)

    it("lists presence until the connection unsubscribes or closes", function()
        local app, route = probe{
            open = function(ws) ws:subscribe("room", { presence = { nick = ws.query.nick } }) end,
            message = function(ws) ws:unsubscribe("room") end,
        }
        local sb = sb_of(app)
        local ann, bob = route:connect{ query = { nick = "ann" } }, route:connect{ query = { nick = "bob" } }
        local nicks = {}
        for i, info in ipairs(sb.presence("room")) do nicks[i] = info.nick end
        table.sort(nicks)
        assert.same({ "ann", "bob" }, nicks)
        ann:message("leave")
        assert.same({ { nick = "bob" } }, sb.presence("room"))
        bob:close(1000)
        assert.same({}, sb.presence("room"))
    end)
end)

describe("switchboard.testing: pub/sub", function()
    it("publishes to every subscriber; ws:publish skips the sender", function()
        local app, route
        app, route = probe{
            open = function(ws) ws:subscribe("room") end,
            message = function(ws, msg)
                if msg == "all" then app.module.publish("room", "to all") else ws:publish("room", msg) end
            end,
        }
        local a, b, c = route:connect(), route:connect(), route:connect()
        b:message("from b")
        assert.same({ { data = "from b", binary = false } }, a.sent)
        assert.same({}, b.sent)
        assert.same({ { data = "from b", binary = false } }, c.sent)
        a:message("all")
        assert.equal("to all", a.sent[2].data)
        assert.equal("to all", b.sent[1].data)
        assert.same({ topic = "room", data = "from b", binary = false, sender = b.id }, app.published[1])
        assert.same({ topic = "room", data = "to all", binary = false }, app.published[2])
    end)

    it("counts subscribers, lists topics, and forgets a closed connection's topics", function()
        local app, route = probe{ open = function(ws)
            ws:subscribe("a")
            ws:subscribe("a") -- twice is once
            ws:subscribe(ws.query.t)
        end, message = function(ws, topic) ws:unsubscribe(topic) end }
        local sb = sb_of(app)
        local x = route:connect{ query = { t = "x" } }
        local y = route:connect{ query = { t = "y" } }
        assert.equal(2, sb.subscribers("a"))
        assert.equal(0, sb.subscribers("nothing"))
        assert.same({ "a", "x", "y" }, sb.topics())
        x:message("a")
        assert.equal(1, sb.subscribers("a"))
        y:close(1000)
        assert.same({ "x" }, sb.topics())
        assert.error_matches(function() sb.subscribers(1 > 2) end, "bad argument #1 to 'subscribers'")
    end)

    it("reports what subscribe, unsubscribe and publish did", function()
        local results = {}
        local app, route = probe{ open = function(ws)
            results[#results + 1] = { ws:subscribe("t"), ws:subscribe("t"), ws:unsubscribe("x") }
            results[#results + 1] = ws:publish("t", "hi")
        end }
        route:connect()
        route:connect()
        assert.same({ { true, false, false }, 0, { true, false, false }, 1 }, results)
        assert.equal(2, app.module.publish("t", "all"))
    end)

    it("delivers binary publishes as binary", function()
        local app, route = probe{ open = function(ws) ws:subscribe("b") end }
        local c = route:connect()
        app.module.publish("b", "\1\2", true)
        assert.same({ { data = "\1\2", binary = true } }, c.sent)
    end)
end)

describe("switchboard.testing: timers and the clock", function()
    it("fires after and every timers in time order, with now() at each due time", function()
        local app = probe()
        local sb = sb_of(app)
        local log = {}
        sb.after(2, function() log[#log + 1] = "after2@" .. sb.now() end)
        local tick = sb.every(1, function() log[#log + 1] = "every@" .. sb.now() end)
        sb.after(1, function() log[#log + 1] = "after1@" .. sb.now() end)
        assert.equal(0, sb.now())
        t.clock:advance(2.5)
        assert.same({ "every@1.0", "after1@1.0", "after2@2.0", "every@2.0" }, log)
        assert.equal(2.5, sb.now())
        tick:cancel()
        tick:cancel()
        assert.equal(0, app:advance(10))
        assert.equal(12.5, t.clock.now)
    end)

    it("fires a timer set by a timer in the same advance when it falls due", function()
        local app = probe()
        local sb = sb_of(app)
        local fired = {}
        sb.after(1, function() sb.after(1, function() fired[#fired + 1] = sb.now() end) end)
        app:advance(5)
        assert.same({ 2 }, fired)
    end)

    it("passes the timer to its function; cancel reports whether it was pending", function()
        local app = probe()
        local sb = sb_of(app)
        local seen = {}
        local tick
        tick = sb.every(1, function(tm)
            seen[#seen + 1] = tm == tick
            if #seen == 2 then assert(tm:cancel() == true) end
        end)
        app:advance(5)
        assert.same({ true, true }, seen)
        assert.is_false(tick:cancel())
        local once = sb.after(1, function() end)
        app:advance(1)
        assert.is_false(once:cancel())
    end)

    it("checks timer arguments", function()
        local sb = sb_of(probe())
        assert.error_matches(function() sb.after("1", print) end,
            "bad argument #1 to 'after' %(number expected, got string%)")
        -- as the server words them: an absent argument is "no value", an explicit nil "nil"
        assert.error_matches(function() sb.every(1) end,
            "bad argument #2 to 'every' %(function expected, got no value%)")
        assert.error_matches(function() sb.every(1, nil) end,
            "bad argument #2 to 'every' %(function expected, got nil%)")
        assert.error_matches(function() sb.every(0, print) end, "interval must be at least 0.001 seconds")
        assert.error_matches(function() sb.after(-1, print) end, "seconds must be between 0 and 1e9")
    end)

    it("records a timer callback that raises against its route", function()
        write("tick.lua", [[
            local sb = require "switchboard"
            sb.every(1, function() error("tick failed") end)
            return {}
        ]])
        local app = t.app(dir)
        local route = app:load("tick")
        app:advance(2)
        assert.equal(2, #route.errors)
        assert.equal("every", route.errors[1].handler)
        assert.matches("tick failed", route.errors[1].message)
    end)
end)

describe("switchboard.testing: reload, shared, log, request", function()
    it("swaps handlers on reload, keeping ws.data, shared and subscriptions; cancels old timers", function()
        write("r.lua", [[
            local sb = require "switchboard"
            sb.shared.loads = (sb.shared.loads or 0) + 1
            sb.every(1, function() sb.publish("t", "v1 tick") end)
            return {
                open = function(ws) ws.data.n = 0 ws:subscribe("t") end,
                message = function(ws) ws.data.n = ws.data.n + 1 ws:send("v1 " .. ws.data.n) end,
            }
        ]])
        local app = t.app(dir)
        local route = app:load("r")
        local c = route:connect()
        c:message("x")
        write("r.lua", [[
            local sb = require "switchboard"
            sb.shared.loads = sb.shared.loads + 1
            return { message = function(ws) ws.data.n = ws.data.n + 1 ws:send("v2 " .. ws.data.n) end }
        ]])
        assert.is_true(route:reload())
        c:message("x")
        assert.equal("v2 2", c.sent[#c.sent].data)
        assert.equal(2, app.shared.loads)
        assert.equal(0, app:advance(5))
        assert.equal(1, app:subscribers("t"))
    end)

    it("runs the new version's reload(old) hook with the old handlers", function()
        write("r.lua", "return { name = 'v1' }")
        local app = t.app(dir)
        local route = app:load("r")
        write("r.lua", [[
            local sb = require "switchboard"
            return { name = "v2", reload = function(old) sb.shared.migrated_from = old.name end }
        ]])
        assert.is_true(route:reload())
        assert.equal("v1", app.shared.migrated_from)
    end)

    it("keeps the previous version when a reload fails", function()
        write("r.lua", "return { open = function(ws) ws:send('v1') end }")
        local app = t.app(dir)
        local route = app:load("r")
        write("r.lua", "return { open = ")
        local ok, err = route:reload()
        assert.is_nil(ok)
        assert.is_string(err)
        assert.equal("v1", route:connect().sent[1].data)
        assert.equal("error", app.logs[#app.logs].level)
    end)

    it("captures log lines with their level and route", function()
        write("l.lua", [[
            local sb = require "switchboard"
            sb.log.info("loaded", 1)
            return { open = function() sb.log.warn("opened") sb.log.error("oops") end }
        ]])
        local app = t.app(dir)
        app:load("l"):connect()
        assert.same({
            { level = "info", route = "l", message = "loaded 1" },
            { level = "warn", route = "l", message = "opened" },
            { level = "error", route = "l", message = "oops" },
        }, app.logs)
    end)

    it("runs request(req) for plain HTTP", function()
        local seen
        local _, route = probe{ request = function(req)
            seen = req
            return { status = 201, headers = { ["content-type"] = "text/plain" }, body = "made" }
        end }
        local res = route:request{ method = "POST", query = "x=1", headers = { ["Content-Type"] = "a/b" },
            body = "payload" }
        assert.same({ status = 201, headers = { ["content-type"] = "text/plain" }, body = "made" }, res)
        assert.equal("POST", seen.method)
        assert.equal("/probe", seen.path)
        assert.same({ x = "1" }, seen.query)
        assert.equal("a/b", seen.headers["content-type"])
        assert.equal("payload", seen.body)
    end)

    it("fills in a response's defaults, and answers 500 for errors and non-responses", function()
        local answer
        local _, route = probe{ request = function() return answer() end }
        answer = function() return {} end
        assert.same({ status = 200, headers = {}, body = "" }, route:request{})
        answer = function() error("db down") end
        assert.equal(500, route:request{}.status)
        answer = function() return "ok" end
        assert.equal(500, route:request{}.status)
        answer = function() return { headers = { ["x-bad"] = "a\nb" } } end
        assert.equal(500, route:request{}.status)
        assert.equal(3, #route.errors)
        answer = function() return { status = "201", body = 42 } end
        assert.same({ status = 200, headers = {}, body = "42" }, route:request{})
        answer = function() return { status = 700 } end
        assert.equal(500, route:request{}.status)
    end)

    it("answers 426 on a route without a request handler", function()
        write("ws.lua", "return {}")
        assert.equal(426, t.app(dir):load("ws"):request{}.status)
    end)
end)

describe("switchboard.testing: handlers that wait", function()
    it("runs handlers as coroutines: sb.sleep advances the clock and fires the timers due meanwhile", function()
        local app, route
        local log = {}
        app, route = probe({
            message = function(ws, msg)
                local sb = sb_of(app)
                sb.after(0.5, function() log[#log + 1] = "timer@" .. sb.now() end)
                sb.sleep(1)
                log[#log + 1] = "woke@" .. sb.now()
                ws:send(msg)
            end,
        })
        local c = route:connect()
        c:message("hi")
        assert.same({ "timer@0.5", "woke@1.0" }, log)
        assert.equal("hi", c.sent[1].data)
        assert.equal(1, t.clock.now)
    end)

    it("lets upgrade and request wait, and timers too", function()
        local app, route
        app, route = probe({
            upgrade = function() sb_of(app).sleep(2) return true end,
            request = function() sb_of(app).sleep(3) return { status = 200, body = "late" } end,
        })
        assert.truthy(route:connect())
        assert.equal(2, t.clock.now)
        assert.equal("late", route:request{}.body)
        assert.equal(5, t.clock.now)
        local sb = sb_of(app)
        local woke
        sb.after(1, function() sb.sleep(1) woke = sb.now() end)
        app:advance(1)
        assert.equal(7, woke)
    end)

    it("runs light threads until each has returned, and sb.wait gets their results", function()
        local app, route
        local got
        app, route = probe({
            message = function()
                local sb = sb_of(app)
                local a = sb.spawn(function(x) sb.sleep(2) return x + 1 end, 1)
                local b = sb.spawn(function() sb.sleep(1) error("no", 0) end)
                got = { sb.wait(a) }
                got[#got + 1] = select(2, sb.wait(b))
            end,
        })
        route:connect():message("go")
        assert.same({ true, 2, "no" }, got)
        assert.equal(2, t.clock.now) -- the threads slept side by side
    end)

    it("refuses to load a script whose top level waits", function()
        write("top.lua", 'local sb = require "switchboard"\nsb.sleep(1)\nreturn {}')
        local ok, err = pcall(function() return t.app(dir):load("top") end)
        assert.is_false(ok)
        assert.matches("'sleep' cannot wait here", tostring(err))
    end)

    it("closes with 1011 when a handler yields by itself", function()
        local _, route = probe({ message = function() coroutine.yield() end })
        local c = route:connect()
        c:message("x")
        assert.equal(1011, c.closed.code)
        assert.matches("attempt to yield from a handler", route.errors[1].message)
    end)
end)

describe("switchboard.testing: topic history", function()
    local ROOM = [[
local sb = require "switchboard"
sb.history.keep("room:", { size = 3, ttl = 10, format = function(msg, pos, epoch)
    return pos .. "@" .. epoch .. ":" .. msg
end })
return {
    message = function(ws, msg)
        local cmd, a, b = msg:match("^(%w+) ?(%S*) ?(%S*)$")
        if cmd == "pub" then sb.publish("room:x", a)
        elseif cmd == "sub" then
            local ok, epoch = ws:subscribe("room:x", { since = tonumber(a), epoch = b })
            ws:send("=" .. tostring(ok) .. " " .. tostring(epoch))
        elseif cmd == "read" then
            local items, epoch = sb.history.read("room:x")
            local out = {}
            for _, it in ipairs(items) do out[#out + 1] = it.pos .. "=" .. it.msg end
            ws:send("=" .. table.concat(out, ",") .. " " .. tostring(epoch))
        end
    end,
}
]]

    local function data(c)
        local out = {}
        for _, m in ipairs(c.sent) do out[#out + 1] = m.data end
        return out
    end

    it("numbers, formats and keeps publications; recovers with since and epoch", function()
        write("room.lua", ROOM)
        local app = t.app(dir)
        local route = app:load("room")
        local p = route:connect()
        for i = 1, 4 do p:message("pub m" .. i) end
        p:clear()
        p:message("read")
        local epoch = data(p)[1]:match(" (%S+)$")
        assert.are.equal("=2=m2,3=m3,4=m4 " .. epoch, data(p)[1])
        local c = route:connect()
        c:message("sub 2 " .. epoch)
        assert.are.same({ "3@" .. epoch .. ":m3", "4@" .. epoch .. ":m4", "=true " .. epoch },
            data(c))
        p:message("pub m5")
        assert.are.equal("5@" .. epoch .. ":m5", data(c)[4])
        local d = route:connect()
        d:message("sub 0 " .. epoch) -- 1 is no longer kept: not recovered, the kept ones
        assert.are.same({ "3@" .. epoch .. ":m3", "4@" .. epoch .. ":m4",
            "5@" .. epoch .. ":m5", "=false " .. epoch }, data(d))
        app:advance(11) -- past the ttl
        p:clear()
        p:message("read")
        assert.are.equal("= " .. epoch, data(p)[1])
    end)
end)
