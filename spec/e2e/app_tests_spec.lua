-- Running an app's own tests from its folder: `switchboard --init APP_DIR`
-- writes APP_DIR/.busted (and .luarc.json for the editor) so that a plain
-- `busted` in an app folder outside this repo finds switchboard.testing (from
-- the build tree or the install prefix this binary belongs to) and the app's
-- lib/ modules, with no other setup.
local server = require "server"
local cjson = require "cjson"

local write = server.write_file

local run = server.run

-- `busted` with no arguments in dir, in a clean environment (no LUA_PATH, no
-- sanitizer runtime): what a user types. Returns ok, output.
local function busted_in(dir)
    local p = io.popen(("cd '%s' && env -u LD_PRELOAD -u LUA_PATH -u LUA_PATH_5_4 -u LUA_INIT "
        .. "-u LUA_INIT_5_4 busted -o TAP 2>&1"):format(dir))
    local out = p:read("a")
    local ok = p:close()
    return ok, out
end

local function realpath(path)
    local p = io.popen("realpath '" .. path .. "'")
    local r = p:read("l")
    p:close()
    return r
end

local HELLO = [[
local greet = require "greet"
local hello = {}
function hello.message(ws, msg) ws:send(greet.hello(msg)) end
return hello
]]

local HELLO_SPEC = [[
local t = require "switchboard.testing"
describe("my hello route", function()
    it("greets", function()
        local c = t.app("."):load("hello"):connect()
        c:message("ann")
        assert.are.equal("hello ann", c.sent[1].data)
    end)
end)
]]

describe("tests from the app folder", function()
    local app

    before_each(function()
        app = server.tmpname(".myapp")
        assert(app:sub(1, #server.root) ~= server.root, "the app must be outside the repo")
        assert(os.execute(("mkdir -p '%s/lib' '%s/spec'"):format(app, app)))
        write(app .. "/hello.lua", HELLO)
        write(app .. "/lib/greet.lua", 'return { hello = function(n) return "hello " .. n end }\n')
        write(app .. "/spec/hello_spec.lua", HELLO_SPEC)
    end)

    after_each(function()
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("cannot find switchboard.testing before --init", function()
        local ok, out = busted_in(app)
        assert.is_falsy(ok, out)
        assert.truthy(out:find("module 'switchboard.testing' not found", 1, true), out)
    end)

    it("runs the app's specs with a plain busted after --init, and fails a failing one", function()
        local code, out = run{ "--init", app }
        assert.are.equal(0, code, out)
        assert.truthy(out:find("wrote " .. app .. "/.busted", 1, true), out)
        assert.truthy(out:find("wrote " .. app .. "/.luarc.json", 1, true), out)
        local lua_dir = realpath(server.root .. "/lua") -- this binary is in a build dir of the tree
        assert.truthy(server.read_file(app .. "/.busted"):find(lua_dir .. "/?.lua", 1, true))

        local ok, res = busted_in(app)
        assert(ok, res)
        assert.truthy(res:find("ok 1 - my hello route greets", 1, true), res)

        -- a spec beside the script, whose assertion fails: busted fails
        write(app .. "/hello_spec.lua", [[
local t = require "switchboard.testing"
describe("hello beside its script", function()
    it("is wrong on purpose", function()
        local c = t.load("hello.lua"):connect()
        c:message("bob")
        assert.are.equal("goodbye bob", c.sent[1].data)
    end)
end)
]])
        ok, res = busted_in(app)
        assert.is_falsy(ok, res)
        assert.truthy(res:find("not ok %d+ %- hello beside its script is wrong on purpose"), res)
        assert.truthy(res:find("ok %d+ %- my hello route greets"), res)

        -- and the specs in the app folder are no routes: the app checks clean
        local code2, out2 = run{ "--check", "--strict", app }
        assert.are.equal(0, code2, out2)
        assert.truthy(out2:find("1 route(s), 1 lib module(s): 0 error(s), 0 warning(s): ok", 1, true), out2)
    end)

    it("writes a .luarc.json whose library holds the ---@meta types", function()
        assert.are.equal(0, (run{ "--init", app }))
        local rc = cjson.decode(server.read_file(app .. "/.luarc.json"))
        assert.are.equal("Lua 5.4", rc["runtime.version"])
        local meta = rc["workspace.library"][1]
        assert.are.equal(realpath(server.root .. "/lua") .. "/switchboard/meta", meta)
        for _, f in ipairs({ "switchboard.lua", "ws.lua", "req.lua", "timer.lua", "testing.lua" }) do
            assert.truthy(server.read_file(meta .. "/" .. f):find("^%-%-%-@meta"), meta .. "/" .. f)
        end
    end)

    it("rewrites its own .busted but keeps files the user wrote", function()
        write(app .. "/.busted", "-- Written by `switchboard --init`: an old one\nreturn {}\n")
        write(app .. "/.luarc.json", '{ "runtime.version": "Lua 5.4" }\n')
        local code, out = run{ "--init", app }
        assert.are.equal(0, code, out)
        assert.truthy(out:find("wrote " .. app .. "/.busted", 1, true), out)
        assert.truthy(out:find("kept " .. app .. "/.luarc.json (yours): it should read", 1, true), out)
        assert.are.equal('{ "runtime.version": "Lua 5.4" }\n', server.read_file(app .. "/.luarc.json"))
        write(app .. "/.busted", "return { _all = { lua = 'lua5.4' } }\n")
        code, out = run{ "--init", app }
        assert.are.equal(0, code, out)
        assert.truthy(out:find("kept " .. app .. "/.busted (yours)", 1, true), out)
        assert.are.equal("return { _all = { lua = 'lua5.4' } }\n", server.read_file(app .. "/.busted"))
    end)
end)
