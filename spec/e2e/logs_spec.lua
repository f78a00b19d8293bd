-- Structured logs and load-failure metrics on the real server: with
-- --log-format json every line of stderr is one JSON object (decoded here with
-- lua-cjson) with time, level and msg, and route, script, line, conn and
-- remote where the server knows them; a route that fails to load at start-up
-- is counted in /metrics.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"

local write = server.write_file

-- line numbers below are asserted: keep the error on line 6, the log call on line 4
local ROUTE = [[
local sb = require "switchboard"
return {
    message = function(ws, msg)
        sb.log.warn("odd \"bytes\"\t\1\127 \255\254 end " .. msg)
        if msg == "boom" then
            error("kaboom")
        end
        ws:send("ok:" .. msg)
    end,
}
]]

local function make_app()
    local app = server.tmpname(".app")
    assert(os.execute("mkdir -p '" .. app .. "'"))
    write(app .. "/x.lua", ROUTE)
    write(app .. "/broken.lua", "return {\n    message = function(ws) end,\n    ,\n}\n")
    return app
end

-- Every line of text, decoded; raises naming the first line that is not a JSON object.
local function json_lines(text)
    local out = {}
    for line in text:gmatch("[^\n]+") do
        local ok, v = pcall(cjson.decode, line)
        assert(ok and type(v) == "table", "not a JSON object: " .. line)
        assert.falsy(line:find("[%z\1-\31]"), "raw control byte in: " .. line)
        out[#out + 1] = v
    end
    return out
end

local function find(lines, pattern)
    for _, l in ipairs(lines) do
        if type(l.msg) == "string" and l.msg:find(pattern) then return l end
    end
    error("no log line matching " .. pattern)
end

local function metric(port, name)
    local status, _, body = rawws.get(port, "/metrics")
    assert.equal(200, status)
    return tonumber(body:match("\n" .. name:gsub("[%p]", "%%%0") .. " (%d+)"))
end

describe("logs", function()
    local s, app

    before_each(function() app = make_app() end)

    after_each(function()
        if s then s:stop() end
        s = nil
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("with --log-format json are one JSON object per line; a handler error carries route, "
        .. "script, line, conn and remote", function()
        s = server.start{ app = app, args = { "--log-format", "json", "--log-level", "debug" } }
        local c = rawws.open(s.port, "/x")
        assert.equal("ok:hi", c:echo("hi"))
        c:send(wsframe.text("boom"))
        local code = c:recv_close()
        assert.equal(1011, code)
        c:close()
        -- a protocol error: text that is not UTF-8
        local c2 = rawws.open(s.port, "/x")
        c2:send(wsframe.text("\255"))
        assert.equal(1007, (c2:recv_close()))
        c2:close()
        s:wait_log("handler failed")
        s:wait_log("closing with 1007")
        local log = s:stop()
        s = nil
        local lines = json_lines(log)
        assert.is_true(#lines > 5)
        for _, l in ipairs(lines) do
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", l.time)
            assert.truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[l.level], l.level)
            assert.equal("string", type(l.msg))
        end

        local err = find(lines, "handler failed: .*kaboom")
        assert.equal("error", err.level)
        assert.equal("/x", err.route)
        assert.equal(app .. "/x.lua", err.script)
        assert.equal(6, err.line)
        assert.equal("number", type(err.conn))
        assert.matches("^127%.0%.0%.1:%d+$", err.remote)
        -- the traceback stays in msg, its newlines escaped on the one line
        assert.matches("stack traceback:\n", err.msg)

        -- a connection-level line: its id and its peer
        local closing = find(lines, "closing with 1007")
        assert.equal(err.conn + 1, closing.conn)
        assert.matches("^127%.0%.0%.1:%d+$", closing.remote)
        assert.matches(("conn %d %%("):format(closing.conn) .. closing.remote:gsub("%.", "%%.") .. "%)",
            closing.msg)

        -- a script's own log line: where it was called, JSON-escaped, bad UTF-8 replaced
        local own = find(lines, "odd .*end boom")
        assert.equal("warn", own.level)
        assert.equal("/x", own.route)
        assert.equal(4, own.line)
        assert.equal(err.conn, own.conn)
        assert.equal("[x.lua:4] odd \"bytes\"\t\1\127 \u{fffd}\u{fffd} end boom", own.msg)

        -- the start-up load failure: its route, its file and the line of the syntax error
        local load = find(lines, "loading .*broken%.lua")
        assert.equal("error", load.level)
        assert.equal("/broken", load.route)
        assert.equal(app .. "/broken.lua", load.script)
        assert.equal(3, load.line)
    end)

    it("are text by default, and --log-format takes only text or json", function()
        s = server.start{ app = app }
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z error ", s:log())
        s:stop()
        s = server.start{ raw_args = true, expect_exit = true, args = { "--log-format", "xml", app } }
        assert.equal("exited", (s:wait_exit()))
        assert.equal(2, s.exit_code)
        assert.matches("--log-format is text or json, not 'xml'", s:log(), 1, true)
        s:stop()
        s = nil
    end)

    it("count a route that fails to load at start-up in switchboard_route_load_failures_total",
        function()
        s = server.start{ app = app, args = { "--metrics-path", "/metrics" } }
        assert.equal(1, metric(s.port, "switchboard_route_load_failures_total"))
        assert.equal(0, metric(s.port, 'switchboard_reloads_total{outcome="failed"}'))
        -- a failed reload counts in both
        write(app .. "/x.lua", "return {\n")
        s:wait_log("reload of %S*/x%.lua failed")
        assert.equal(2, metric(s.port, "switchboard_route_load_failures_total"))
        assert.equal(1, metric(s.port, 'switchboard_reloads_total{outcome="failed"}'))
    end)
end)
