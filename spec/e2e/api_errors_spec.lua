-- Error isolation on the real server (spec/apps/errors, copied to a temporary
-- folder with a script that does not even compile): handlers that raise, run
-- away or allocate without bound are stopped, logged and closed with 1011;
-- the other connections and routes go on.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"

local http = rawws.http

local function make_app()
    local dir = server.tmpname("-app")
    assert(os.execute(("cp -r '%s/spec/apps/errors' '%s'"):format(server.root, dir)))
    local f = assert(io.open(dir .. "/broken_syntax.lua", "w"))
    f:write('-- a syntax error on line 3\nreturn {\n    open = function(ws) ws:send("x" end,\n}\n')
    f:close()
    return dir
end

describe("error isolation", function()
    local s, app
    setup(function()
        app = make_app()
        s = server.start{ app = app, args = { "--lua-budget", "2000000", "--lua-memory", "24m",
            "--drain-timeout", "1" } }
    end)
    teardown(function()
        if s then s:stop() end
        if app then os.execute("rm -rf '" .. app .. "'") end
    end)

    it("reports a script that fails to load with file:line and serves the other routes", function()
        local log = s:log()
        assert.matches("loading [^\n]*broken_syntax%.lua: [^\n]*broken_syntax%.lua:3:", log)
        assert.matches("loading [^\n]*broken_top%.lua: [^\n]*broken_top%.lua:3: attempt to index", log)
        assert.matches("not_table%.lua: the script must return a table of handlers, not number", log)
        for _, p in ipairs({ "/broken_syntax", "/broken_top", "/not_table" }) do
            local c = rawws.connect(s.port)
            c:send(rawws.request(p))
            assert.equal(404, (c:http()), p)
            c:close()
        end
        local ok = rawws.open(s.port, "/ok")
        assert.equal("ok:hi", ok:echo("hi"))
        ok:close()
    end)

    it("closes only the raising connection with 1011 and logs script, line and traceback", function()
        local bad = rawws.open(s.port, "/boom")
        local good = rawws.open(s.port, "/boom")
        assert.equal("fine:1", good:echo("1"))
        bad:send(wsframe.text("raise"))
        local code, reason = bad:recv_close()
        assert.same({ 1011, "internal error" }, { code, reason })
        bad:close()
        local log = s:wait_log("route /boom %([^\n]*boom%.lua%): message handler failed:[^\n]*")
        assert.matches("boom%.lua:5: boom in message", log)
        local full = s:log()
        assert.matches("stack traceback:\n[^\n]*\n[^\n]*boom%.lua:5: in upvalue 'explode'\n"
            .. "[^\n]*boom%.lua:18: in", full)
        -- the other connection on the same route goes on
        assert.equal("fine:2", good:echo("2"))
        good:close()
        s:wait_log("boom closed %d+ 1011")
    end)

    it("closes with 1011 when open raises, and a non-string error is still logged", function()
        local c = rawws.open(s.port, "/boom?open=1")
        assert.equal(1011, (c:recv_close()))
        c:close()
        s:wait_log("open handler failed:[^\n]*boom%.lua:5: boom in open")
        local d = rawws.open(s.port, "/boom")
        d:send(wsframe.text("table"))
        assert.equal(1011, (d:recv_close()))
        d:close()
        s:wait_log("message handler failed: table: 0x")
    end)

    it("answers 500 when upgrade or request raises or returns nonsense", function()
        local st = http(s.port, rawws.request("/boom?upgrade=1"))
        assert.equal(500, st)
        s:wait_log("upgrade handler failed:[^\n]*boom in upgrade")
        assert.equal(500, (http(s.port, "GET /boom?raise=1 HTTP/1.1\r\nHost: x\r\n\r\n")))
        s:wait_log("request handler failed:[^\n]*boom in request")
        assert.equal(500, (http(s.port, "GET /boom?badhdr=1 HTTP/1.1\r\nHost: x\r\n\r\n")))
        assert.equal(500, (http(s.port, "GET /boom?notable=1 HTTP/1.1\r\nHost: x\r\n\r\n")))
        local st2, _, body = http(s.port, "GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.equal(200, st2)
        assert.equal("request ok", body)
    end)

    it("stops an endless loop at --lua-budget while other connections are served", function()
        local spin = rawws.open(s.port, "/loop")
        local other = rawws.open(s.port, "/ok")
        assert.equal("loop:x", spin:echo("x"))
        spin:send(wsframe.text("spin"))
        assert.equal(1011, (spin:recv_close()))
        spin:close()
        s:wait_log("message handler failed: [^\n]*instruction budget exceeded %(%-%-lua%-budget 2000000%)")
        assert.equal("ok:still here", other:echo("still here"))
        local again = rawws.open(s.port, "/loop")
        assert.equal("loop:y", again:echo("y"))
        again:close()
        other:close()
        s:wait_log("loop closed %d+ 1011")
    end)

    it("stops a runaway allocation at --lua-memory while other connections are served", function()
        local grow = rawws.open(s.port, "/alloc")
        local other = rawws.open(s.port, "/ok")
        grow:send(wsframe.text("grow"))
        assert.equal(1011, (grow:recv_close()))
        grow:close()
        s:wait_log("message handler failed: out of memory %(Lua state past %-%-lua%-memory 25165824 bytes%)")
        assert.equal("ok:alive", other:echo("alive"))
        local again = rawws.open(s.port, "/alloc")
        assert.equal("alloc:small", again:echo("small"))
        again:close()
        other:close()
    end)
end)

describe("start-up", function()
    it("fails with a clear message and a non-zero exit only when no route loads", function()
        local s = server.start{ app = "spec/apps/none", expect_exit = true }
        local how, code = s:wait_exit(10)
        local log = s:stop()
        assert.equal("exited", how)
        assert.is_true(code ~= 0)
        assert.matches("only%.lua:2: this app has no working route", log)
        assert.matches("no route script loaded from [^\n]*spec/apps/none %(1 failed%)", log)
    end)
end)
