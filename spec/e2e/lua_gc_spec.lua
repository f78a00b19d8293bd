-- A handler that raises costs its error, not a full garbage collection (a
-- client could otherwise buy one per message); the memory cap still holds,
-- since Lua collects in an emergency when an allocation would pass it.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"

-- The collector is stopped: only a full collection frees the garbage, so the
-- Lua memory in use tells whether one ran.
local GARBAGE = [[
collectgarbage("stop")
local function garbage(mb)
    local t = {}
    for i = 1, mb * 16 do t[i] = string.rep(string.char(i % 256), 65536 - 64) .. i end
    return t
end
return {
    message = function(ws, msg)
        if msg == "raise" then
            garbage(4)
            error("raised after making 4 MB of garbage")
        elseif msg == "keep" then
            local t = garbage(4)
            ws:send("kept " .. #t)
        else
            ws:send(("%.0f"):format(collectgarbage("count") / 1024))
        end
    end,
}
]]

local function start(script)
    local app = server.tmpname("-app")
    assert(os.execute("mkdir -p '" .. app .. "'"))
    server.write_file(app .. "/garbage.lua", script)
    local s = server.start{ app = app, args = { "--lua-memory", "24m", "--no-watch" } }
    return s, app
end

local function stop(s, app)
    if s then s:stop() end
    if app then os.execute("rm -rf '" .. app .. "'") end
end

local function mb(c)
    return tonumber((c:echo("count")))
end

local function raise(s)
    local c = rawws.open(s.port, "/garbage")
    c:send(wsframe.text("raise"))
    local code = c:recv_close()
    c:close()
    return code
end

describe("a handler that raises", function()
    local s, app
    setup(function() s, app = start(GARBAGE) end)
    teardown(function() stop(s, app) end)

    it("does not cost a full garbage collection", function()
        local probe = rawws.open(s.port, "/garbage")
        local before = mb(probe)
        assert.equal(1011, raise(s))
        s:wait_log("message handler failed: [^\n]*raised after making 4 MB of garbage")
        -- the garbage is still there: no collection ran after the error
        assert.is_true(mb(probe) >= before + 3, "a full collection ran after the error")
        probe:close()
    end)
end)

describe("handlers that raise, over and over", function()
    local s, app
    setup(function() s, app = start((GARBAGE:gsub('collectgarbage%("stop"%)', ""))) end)
    teardown(function() stop(s, app) end)

    it("leave the state under --lua-memory, its garbage collected as it goes", function()
        -- 20 times 8 MB of garbage under a 24 MB cap
        for i = 1, 20 do
            assert.equal(1011, raise(s), "round " .. i)
        end
        local c = rawws.open(s.port, "/garbage")
        assert.equal("kept 64", c:echo("keep"))
        assert.is_true(mb(c) <= 24)
        c:close()
        assert.falsy(s:log():find("out of memory", 1, true))
    end)
end)

describe("a handler stopped at --lua-memory", function()
    local s, app
    setup(function() s, app = start(GARBAGE) end)
    teardown(function() stop(s, app) end)

    it("leaves the state able to run the next handlers, even with the collector stopped", function()
        for i = 1, 8 do
            assert.equal(1011, raise(s), "round " .. i)
        end
        s:wait_log("out of memory %(Lua state past %-%-lua%-memory 25165824 bytes%)")
        local c = rawws.open(s.port, "/garbage")
        assert.equal("kept 64", c:echo("keep"))
        c:close()
    end)
end)
