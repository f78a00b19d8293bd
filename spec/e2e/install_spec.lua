-- `cmake --install` into a temporary prefix: the installed binary serves a copy
-- of scripts/ and finds the shipped Lua modules next to itself, and a user's own
-- spec outside the source tree runs under busted with require "switchboard.testing"
-- from the prefix.
local server = require "server"
local rawws = require "rawws"

local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    local ok, how, code = p:close()
    return ok, out, how, code
end

local write = server.write_file

local function exists(path)
    local f = io.open(path, "r")
    if f then f:close() end
    return f ~= nil
end

describe("cmake --install", function()
    local prefix, work, s
    setup(function()
        prefix = server.tmpname(".prefix")
        work = server.tmpname(".user")
        local build = os.getenv("SB_BUILD") or (server.root .. "/build")
        local ok, out = sh(("cmake --install '%s' --prefix '%s'"):format(build, prefix))
        assert(ok, out)
    end)
    teardown(function()
        if s then s:stop() end
        os.execute(("rm -rf '%s' '%s'"):format(prefix, work))
    end)

    it("puts the binary in bin/ and the Lua modules in share/lua/5.4/", function()
        assert.is_true(exists(prefix .. "/bin/switchboard"))
        assert.is_true(exists(prefix .. "/share/lua/5.4/switchboard/testing.lua"))
        for _, f in ipairs({ "switchboard", "ws", "req", "timer", "testing" }) do
            assert.is_true(exists(prefix .. "/share/lua/5.4/switchboard/meta/" .. f .. ".lua"), f)
        end
    end)

    it("runs the installed binary on a copy of scripts/, finding the modules beside it", function()
        local app = work .. "/app"
        assert(os.execute(("mkdir -p '%s' && cp -r '%s/scripts/.' '%s'"):format(work, server.root, app)))
        write(app .. "/probe.lua", [[
return { request = function()
    return { status = 200, body = package.searchpath("switchboard.testing", package.path) or "not found" }
end }
]])
        local saved = server.bin
        server.bin = prefix .. "/bin/switchboard"
        local ok, started = pcall(server.start, { app = app })
        server.bin = saved
        assert(ok, started)
        s = started
        local c = rawws.open(s.port, "/echo")
        assert.are.equal("installed", c:echo("installed"))
        c:close()
        c = rawws.connect(s.port)
        assert(c:send("GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
        local status, _, body = c:http()
        c:close()
        assert.are.equal(200, status)
        assert.are.equal(prefix .. "/bin/../share/lua/5.4/switchboard/testing.lua", body)
    end)

    it("lets a user's spec outside the source tree require switchboard.testing from the prefix", function()
        assert(os.execute(("mkdir -p '%s/mine/app' '%s/mine/spec'"):format(work, work)))
        write(work .. "/mine/app/hello.lua", [[
local hello = {}
function hello.message(ws, msg) ws:send("hello " .. msg) end
return hello
]])
        write(work .. "/mine/spec/hello_spec.lua", [[
local t = require "switchboard.testing"
describe("my hello route", function()
    it("greets", function()
        assert.truthy(package.searchpath("switchboard.testing", package.path):find(os.getenv("PREFIX"), 1, true))
        local c = t.app("app"):load("hello"):connect()
        c:message("ann")
        assert.are.equal("hello ann", c.sent[1].data)
    end)
end)
]])
        local lua_path = prefix .. "/share/lua/5.4/?.lua;" .. prefix .. "/share/lua/5.4/?/init.lua;;"
        local ok, out = sh(("cd '%s/mine' && env -u LD_PRELOAD PREFIX='%s' LUA_PATH='%s' "
            .. "busted --lua=lua5.4 -o TAP spec")
            :format(work, prefix, lua_path))
        assert(ok, out)
        assert.truthy(out:find("ok 1 - my hello route greets", 1, true), out)
    end)
end)
