-- Hot reload on the real server: the app (spec/apps/reload) is copied to a
-- temp dir per spec, edited while clients are connected, and the server must
-- swap handlers without dropping a connection or a message.
local server = require "server"
local proc = require "sbt_proc"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"

local write = server.write_file

local function count(text, pattern)
    local n = 0
    for _ in text:gmatch(pattern) do n = n + 1 end
    return n
end

local function http_get(port, path)
    local status, _, body = rawws.get(port, path)
    return status, body
end

local function upgrade_status(port, path)
    local c = rawws.connect(port)
    c:send(rawws.request(path))
    local status = c:http()
    c:close()
    return status
end

local OTHER_V2 = [[
return { message = function(ws, msg) ws:send("other v2:" .. msg) end }
]]
local OTHER_V3 = [[
return { message = function(ws, msg) ws:send("other v3:" .. msg) end }
]]

describe("hot reload", function()
    local s, app, clients

    local function start(args)
        s = server.start{ app = app, args = args }
        return s
    end

    local function open(path)
        local c = rawws.open(s.port, path)
        clients[#clients + 1] = c
        return c
    end

    before_each(function()
        app = server.tmpname(".app")
        assert(os.execute("cp -r '" .. server.root .. "/spec/apps/reload' '" .. app .. "'"))
        clients = {}
    end)

    after_each(function()
        for _, c in ipairs(clients) do c:close() end
        if s then s:stop() end
        s = nil
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("keeps 100 busy connections through 20 saves of two good versions and a broken one", function()
        start()
        s:wait_log("reload: watching")
        local out = server.tmpname(".out")
        local p = io.popen(("env -u LD_PRELOAD timeout 120 %s %s/spec/support/reload_client.py %d %s %s 100 20 2>%s")
            :format(PYTHON, server.root, s.port, app .. "/tag.lua", s.logfile, out))
        local text = p:read("a")
        p:close()
        local errs = server.read_file(out)
        os.remove(out)
        local ok, r = pcall(cjson.decode, text:match("([^\n]*)\n?$"))
        assert(ok and type(r) == "table", "client failed:\n" .. text .. errs)
        assert.same({}, r.errors)
        assert.equal(100, r.open_at_end)
        assert.is_true(r.answers > 2000)
        -- one save, one reload: 14 good saves, 6 broken ones, whatever the save pattern
        assert.equal(14, r.reloads_logged)
        assert.equal(6, r.failures_logged)
        assert.equal(14, r.latency_ms.n)
        local log = s:log()
        -- each broken save: file:line and message, and the old version kept serving
        assert.truthy(log:find("tag.lua:4: ')' expected", 1, true))
        assert.truthy(log:find("tag.lua:6: attempt to index a nil value", 1, true))
        assert.truthy(log:find("tag.lua: handler 'open' must be a function, not number", 1, true))
        assert.equal(6, count(log, "reload of %S*/tag%.lua failed in [%d.]+ ms: route /tag keeps serving version %d+"))
        assert.equal(14, count(log, "reloaded %S*/tag%.lua %(route /tag, version %d+%) in [%d.]+ ms"))
        assert.falsy(log:find("deleted ", 1, true))
        local status, body = http_get(s.port, "/stats")
        assert.equal(200, status)
        assert.equal("14 6", body)
        io.stderr:write(("\n# save to new handlers live over %d saves: median %.1f ms, worst %.1f ms"
            .. " (debounce 50 ms)\n"):format(r.latency_ms.n, r.latency_ms.median, r.latency_ms.worst))
    end)

    it("reloads the routes that require a changed lib/ module, through another module, and no other", function()
        start()
        s:wait_log("reload: watching")
        local lib, other = open("/uses_lib"), open("/other")
        assert.equal("hello, bob true", lib:echo("bob"))
        write(app .. "/lib/words.lua", 'return { hello = "hi" }\n')
        s:wait_log("reloaded %S*/uses_lib%.lua %(route /uses_lib, version 2%)")
        -- the same connection, the new module; cjson was not loaded again
        assert.equal("hi, bob true", lib:echo("bob"))
        assert.equal("other:x", other:echo("x"))
        -- a broken module: the route keeps its version; the next good save is picked up
        write(app .. "/lib/words.lua", 'return { hello = }\n')
        s:wait_log("reload of %S*/uses_lib%.lua failed")
        assert.equal("hi, bob true", lib:echo("bob"))
        write(app .. "/lib/words.lua", 'return { hello = "hey" }\n')
        s:wait_log("reloaded %S*/uses_lib%.lua %(route /uses_lib, version 3%)")
        assert.equal("hey, bob true", lib:echo("bob"))
        local log = s:log()
        assert.truthy(log:find("words%.lua:1: unexpected symbol near '}'"))
        assert.falsy(log:find("reloaded %S*/other%.lua"))
        assert.falsy(log:find("reloaded %S*/tag%.lua"))
        assert.equal("2 1", select(2, http_get(s.port, "/stats")))
    end)

    it("makes a new script a live route at once, in a folder made later; "
        .. "a deleted one answers 404 and closes with 1001", function()
        start()
        s:wait_log("reload: watching")
        assert.equal(404, upgrade_status(s.port, "/rooms/new"))
        assert(os.execute("mkdir '" .. app .. "/rooms'"))
        write(app .. "/rooms/new.lua", 'return { message = function(ws, m) ws:send("new:" .. m) end }\n')
        s:wait_log("reloaded %S*/rooms/new%.lua %(route /rooms/new, version 1, new route%)")
        local c = open("/rooms/new")
        assert.equal("new:a", c:echo("a"))
        -- scripts under public/ are files to serve, never routes
        write(app .. "/public/x.lua", "return {}\n")
        assert(os.remove(app .. "/rooms/new.lua"))
        local f = assert(c:recv_frame())
        assert.same({ fin = true, rsv = 0, opcode = 8, payload = "\x03\xe9route removed" }, f)
        c:send(wsframe.close(1001, ""))
        assert.is_true(c:eof())
        s:wait_log("deleted %S*/rooms/new%.lua: route /rooms/new gone, 1 connection%(s%) closed with 1001")
        assert.equal(404, upgrade_status(s.port, "/rooms/new"))
        assert.equal(101, upgrade_status(s.port, "/other"))
        assert.falsy(s:log():find("public/x.lua", 1, true))
    end)

    it("takes a rename into place and a delete-then-create as one reload each, connections kept", function()
        start()
        s:wait_log("reload: watching")
        local c = open("/other")
        assert.equal("other:1", c:echo("1"))
        write(app .. "/.other.lua.swp", OTHER_V2)
        assert(os.rename(app .. "/.other.lua.swp", app .. "/other.lua"))
        s:wait_log("reloaded %S*/other%.lua %(route /other, version 2%)")
        assert.equal("other v2:2", c:echo("2"))
        assert(os.remove(app .. "/other.lua"))
        write(app .. "/other.lua", OTHER_V3)
        s:wait_log("reloaded %S*/other%.lua %(route /other, version 3%)")
        assert.equal("other v3:3", c:echo("3"))
        local log = s:log()
        assert.equal(2, count(log, "reloaded %S*/other%.lua"))
        assert.falsy(log:find("deleted ", 1, true))
        assert.falsy(log:find(".swp", 1, true))
    end)

    it("with --no-watch leaves saves alone until SIGHUP, which reloads scripts and lib modules", function()
        start{ "--no-watch" }
        local other, lib = open("/other"), open("/uses_lib")
        assert.equal("other:1", other:echo("1"))
        write(app .. "/other.lua", OTHER_V2)
        write(app .. "/lib/words.lua", 'return { hello = "hi" }\n')
        proc.sleep(0.3) -- six debounce periods: nothing may happen, so no event to wait for
        assert.equal("other:2", other:echo("2"))
        assert.equal("hello, x true", lib:echo("x"))
        s:signal(proc.SIGHUP)
        s:wait_log("reloaded every script")
        assert.equal("other v2:3", other:echo("3"))
        assert.equal("hi, x true", lib:echo("x"))
        assert.falsy(s:log():find("reload: watching", 1, true))
    end)
end)
