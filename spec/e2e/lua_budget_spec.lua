-- The instruction budget (--lua-budget) on the real server: once a handler
-- has spent it, nothing the script does can catch the stop and run on
-- (pcall, xpcall's message handler, __close, coroutines, __gc finalizers).
-- The handler is stopped, its connection closed with 1011, the other
-- connections go on and the server still stops on SIGTERM.
local server = require "server"
local proc = require "sbt_proc"
local rawws = require "rawws"
local wsframe = require "wsframe"

local SPIN = [[
local sb = require "switchboard"
local function forever() while true do end end
local spins = {
    pcall = function()
        while true do pcall(forever) end
    end,
    xpcall = function()
        while true do xpcall(forever, forever) end
    end,
    close = function()
        while true do
            pcall(function()
                local guard <close> = setmetatable({}, { __close = forever })
                forever()
            end)
        end
    end,
    coroutine = function()
        local old = coroutine.create(forever) -- made before the budget is spent
        while true do
            coroutine.resume(old)
            coroutine.resume(coroutine.create(forever))
        end
    end,
    wrap = function()
        while true do pcall(coroutine.wrap(function() while true do pcall(forever) end end)) end
    end,
    wrapclose = function()
        -- the coroutine's __close runs when wrap closes it after the stop
        while true do
            pcall(coroutine.wrap(function()
                local guard <close> = setmetatable({}, { __close = forever })
                forever()
            end))
        end
    end,
    error = function()
        -- a catch that raises its own error instead
        while true do
            local ok = pcall(forever)
            if not ok then pcall(error, "caught") end
        end
    end,
}
return {
    message = function(ws, msg)
        if msg == "gc" then
            -- a finalizer that never ends: GC metamethods run with hooks off,
            -- so it must not run inside the collector
            setmetatable({}, { __gc = forever })
            collectgarbage()
            collectgarbage()
            ws:send("after gc")
            return
        elseif msg == "debuggc" then
            debug.setmetatable({}, { __gc = forever })
            -- a callable table runs Lua too
            setmetatable({}, { __gc = setmetatable({}, { __call = forever }) })
            collectgarbage()
            collectgarbage()
            ws:send("after debug gc")
            return
        end
        if msg == "keep" then
            -- a coroutine stopped by the budget, closed by a later message
            sb.shared.co = coroutine.create(function()
                local guard <close> = setmetatable({}, { __close = forever })
                forever()
            end)
            coroutine.resume(sb.shared.co)
        elseif msg == "closeco" then
            ws:send(tostring(coroutine.close(sb.shared.co)))
            return
        end
        local spin = spins[msg]
        if spin then spin() end
        ws:send("spin:" .. msg)
    end,
    close = function(ws, code) sb.log.info("spin closed " .. ws.id .. " " .. code) end,
}
]]

local OK = [[
return { message = function(ws, msg) ws:send("ok:" .. msg) end }
]]

describe("the instruction budget", function()
    local s, app, clients

    setup(function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/spin.lua", SPIN)
        server.write_file(app .. "/ok.lua", OK)
        s = server.start{ app = app, args = { "--lua-budget", "1000000", "--no-watch" } }
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

    local function stops(how)
        local other = open("/ok")
        local spin = open("/spin")
        assert.equal("spin:warm", spin:echo("warm"))
        spin:send(wsframe.text(how))
        local code, reason = spin:recv_close()
        assert.same({ 1011, "internal error" }, { code, reason })
        s:wait_log("spin closed %d+ 1011")
        assert.equal("ok:" .. how, other:echo(how))
        -- the same route serves the next connection at full budget
        local again = open("/spin")
        assert.equal("spin:again", again:echo("again"))
    end

    it("stops a handler that loops inside pcall once its budget is spent", function()
        stops("pcall")
        assert.matches("route /spin %([^\n]*spin%.lua%): message handler failed: [^\n]*"
            .. "instruction budget exceeded %(%-%-lua%-budget 1000000%)", s:log())
    end)

    it("stops a handler whose xpcall message handler loops", function()
        stops("xpcall")
    end)

    it("stops a handler whose __close metamethod loops", function()
        stops("close")
    end)

    it("stops a handler that resumes looping coroutines, old and new", function()
        stops("coroutine")
    end)

    it("stops a handler that loops in pcall inside a coroutine.wrap", function()
        stops("wrap")
    end)

    it("stops a handler whose coroutine.wrap closes a __close that loops", function()
        stops("wrapclose")
    end)

    it("closes a coroutine the budget stopped without running its __close", function()
        stops("keep")
        local c = open("/spin")
        assert.equal("false", c:echo("closeco"))
        assert.equal("spin:after", c:echo("after"))
    end)

    it("stops a handler that catches the stop and raises its own error", function()
        stops("error")
    end)

    it("runs a script's __gc finalizer after the handler, stopped at the budget", function()
        local other = open("/ok")
        local c = open("/spin")
        assert.equal("after gc", c:echo("gc"))
        s:wait_log("__gc finalizer failed: [^\n]*instruction budget exceeded")
        assert.equal("ok:alive", other:echo("alive"))
        assert.equal("spin:more", c:echo("more"))
    end)

    it("does the same for debug.setmetatable and a callable __gc", function()
        local function stopped()
            local _, n = s:log():gsub("__gc finalizer failed: [^\n]*instruction budget exceeded", "")
            return n
        end
        local before = stopped()
        local c = open("/spin")
        assert.equal("after debug gc", c:echo("debuggc"))
        server.wait_for(function() return stopped() >= before + 2 end, 10, "two stopped finalizers")
        assert.equal("spin:more", c:echo("more"))
    end)

    it("still stops on SIGTERM after the handlers it stopped", function()
        local spin = open("/spin")
        spin:send(wsframe.text("pcall"))
        assert.equal(1011, (spin:recv_close()))
        for _, c in ipairs(clients) do c:close() end
        clients = {}
        s:signal(proc.SIGTERM)
        local how, code = s:wait_exit(10)
        assert.same({ "exited", 0 }, { how, code })
    end)
end)
