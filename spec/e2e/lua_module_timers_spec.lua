-- Timers a lib/ module makes at its top level belong to the module, not to the
-- route that happened to require it first: they live on when that route
-- reloads, and are replaced when the module itself reloads.
local server = require "server"
local rawws = require "rawws"

local TICKER = [[
local sb = require "switchboard"
local ticks = sb.shared
sb.every(0.02, function() ticks.%s = (ticks.%s or 0) + 1 end)
%s
return { version = "%s" }
]]

local function ticker(counter, extra)
    return TICKER:format(counter, counter, extra or "", counter)
end

local USER = [[
local ticker = require "ticker"
return { message = function(ws, m) ws:send("%s " .. ticker.version .. " " .. m) end }
]]

-- reads the counters without requiring the module
local COUNTS = [[
local sb = require "switchboard"
return { request = function()
    local t = sb.shared
    return { status = 200, body = ("%d %d %d"):format(t.v1 or 0, t.v2 or 0, t.v3 or 0) }
end }
]]

describe("timers of a lib/ module", function()
    local s, app

    local function counts()
        local st, _, body = rawws.get(s.port, "/counts")
        assert.equal(200, st)
        local a, b, c = body:match("^(%d+) (%d+) (%d+)$")
        return { v1 = tonumber(a), v2 = tonumber(b), v3 = tonumber(c) }
    end

    -- wait until counter `name` has gone up by n from now
    local function ticking(name, n)
        local from = counts()[name]
        server.wait_for(function() return counts()[name] >= from + n end, 10, name .. " to tick")
    end

    before_each(function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "/lib'"))
        server.write_file(app .. "/lib/ticker.lua", ticker("v1"))
        server.write_file(app .. "/first.lua", USER:format("first"))
        server.write_file(app .. "/counts.lua", COUNTS)
        s = server.start{ app = app }
        s:wait_log("reload: watching")
    end)

    after_each(function()
        if s then s:stop() end
        s = nil
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("keep running when the route that required the module first reloads", function()
        ticking("v1", 3)
        server.write_file(app .. "/first.lua", USER:format("first v2"))
        s:wait_log("reloaded %S*/first%.lua %(route /first, version 2%)")
        local c = rawws.open(s.port, "/first")
        assert.equal("first v2 v1 x", c:echo("x"))
        c:close()
        ticking("v1", 5)
    end)

    it("are replaced when the module reloads, and a broken save keeps the old ones", function()
        ticking("v1", 3)
        server.write_file(app .. "/lib/ticker.lua", ticker("v2"))
        s:wait_log("reloaded %S*/first%.lua %(route /first, version 2%)")
        local frozen = counts().v1
        ticking("v2", 5)
        assert.equal(frozen, counts().v1)
        -- a save whose top level fails: its timer dies with it, the old module ticks on
        server.write_file(app .. "/lib/ticker.lua", ticker("v3", 'error("broken ticker")'))
        s:wait_log("reload of %S*/first%.lua failed")
        ticking("v2", 5)
        assert.equal(0, counts().v3)
        local c = rawws.open(s.port, "/first")
        assert.equal("first v2 y", c:echo("y"))
        c:close()
    end)

    it("report a failure with the module's name", function()
        server.write_file(app .. "/lib/ticker.lua", [[
local sb = require "switchboard"
sb.after(0, function() error("tick failed") end)
return { version = "bad timer" }
]])
        s:wait_log("reloaded %S*/first%.lua %(route /first, version 2%)")
        s:wait_log("module ticker %([^\n]*lib/ticker%.lua%): timer handler failed: [^\n]*tick failed")
    end)
end)
