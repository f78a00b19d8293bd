-- `switchboard --check APP_DIR`, for an app's CI: every route script and lib/
-- module is loaded as the server would load it (budget and memory cap on), with
-- no listener; each failure is reported as FILE:LINE on stdout, unknown handler
-- names and globals written at top level are warnings; exit 0 clean, 1 on an
-- error, and with --strict on a warning too.
local server = require "server"

local write = server.write_file

local run = server.run

local function lines(text)
    local r = {}
    for l in text:gmatch("[^\n]+") do r[#r + 1] = l end
    return r
end

describe("switchboard --check", function()
    local app

    before_each(function()
        app = server.tmpname(".app")
        assert(os.execute(("mkdir -p '%s/lib/util' '%s/spec'"):format(app, app)))
    end)

    after_each(function()
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("passes the sample app with exit 0 and says so", function()
        local code, out, err = run{ "--check", server.root .. "/scripts" }
        assert.are.equal(0, code, out .. err)
        assert.truthy(out:find("3 route(s), 4 lib module(s): 0 error(s), 0 warning(s): ok", 1, true), out)
        assert.falsy(err:find("listening", 1, true), err)
    end)

    it("reports each failing route and lib/ module at FILE:LINE and exits 1", function()
        write(app .. "/ok.lua", "return { message = function(ws, m) ws:send(m) end }\n")
        write(app .. "/syntax.lua", "local x = {\nreturn x\n")
        write(app .. "/raises.lua", "local t = {}\n\nerror('no config for ' .. 'syntax')\nreturn t\n")
        write(app .. "/loops.lua", "local n = 0\nwhile true do n = n + 1 end\n")
        write(app .. "/number.lua", "return 42\n")
        write(app .. "/handler.lua", "return { message = 'hello' }\n")
        write(app .. "/needs.lua", "local bad = require 'util.bad'\nreturn { open = function() end }\n")
        write(app .. "/missing.lua", "local m = require 'nowhere'\nreturn {}\n")
        write(app .. "/lib/util/bad.lua", "local M = nil\n\nreturn M.x\n")
        write(app .. "/lib/alone.lua", "-- required by no route\nlocal x = #nil\nreturn x\n")
        local code, out = run{ "--check", "--lua-budget", "100000", app }
        assert.are.equal(1, code, out)
        local want = {
            app .. "/syntax.lua:2: error: unexpected symbol near 'return'",
            app .. "/raises.lua:3: error: no config for syntax",
            app .. "/loops.lua:2: error: instruction budget exceeded (--lua-budget 100000)",
            app .. "/number.lua: error: the script must return a table of handlers, not number",
            app .. "/handler.lua: error: handler 'message' must be a function, not string",
            app .. "/lib/util/bad.lua:3: error: attempt to index a nil value (local 'M') (loading "
                .. app .. "/needs.lua)",
            app .. "/missing.lua:1: error: module 'nowhere' not found:",
            app .. "/lib/alone.lua:2: error: attempt to get length of a nil value",
        }
        for _, w in ipairs(want) do
            assert.truthy(out:find(w, 1, true), "missing: " .. w .. "\n" .. out)
        end
        -- once each: the lib/ module that failed for a route is not reported again
        local _, n = out:gsub("lib/util/bad%.lua:3: error", "")
        assert.are.equal(1, n, out)
        assert.truthy(out:find(app .. ": 8 route(s), 2 lib module(s): 8 error(s), 0 warning(s)\n", 1, true), out)
        assert.falsy(out:find("ok.lua", 1, true), out)
    end)

    it("keeps the memory cap on", function()
        write(app .. "/big.lua", "local s = ('x'):rep(4 * 1024 * 1024)\nreturn { s = s }\n")
        local code, out = run{ "--check", "--lua-memory", "1m", app }
        assert.are.equal(1, code, out)
        assert.truthy(out:find(app .. "/big.lua: error: out of memory (Lua state past --lua-memory 1048576 bytes)",
            1, true), out)
    end)

    it("warns on unknown handler names and top-level globals; --strict makes them fail", function()
        write(app .. "/chat.lua", table.concat({
            "local sb = require 'switchboard'",
            "local fmt = require 'util.fmt'",
            "count = 0",
            "local chat = { rooms = {}, compression = false }",
            "function chat.open(ws) ws:send(fmt.hi()) end",
            "function chat.mesage(ws, msg) ws:send(msg) end",
            "function chat.Close(ws) end",
            "function chat.broadcast(msg) sb.publish('all', msg) end",
            "for i = 1, 3 do count = count + i end",
            "return chat",
        }, "\n") .. "\n")
        write(app .. "/lib/util/fmt.lua", "local M = {}\nfunction M.hi() return 'hi' end\nLOADED = true\nreturn M\n")
        local code, out = run{ "--check", app }
        assert.are.equal(0, code, out)
        local want = {
            app .. "/chat.lua:3: warning: global 'count' written at top level (make it local)",
            app .. "/chat.lua:6: warning: unknown handler 'mesage' (did you mean 'message'?)",
            app .. "/chat.lua:7: warning: unknown handler 'Close' (did you mean 'close'?)",
            app .. "/chat.lua:8: warning: unknown handler 'broadcast': the server never calls it",
            app .. "/lib/util/fmt.lua:3: warning: global 'LOADED' written at top level (make it local)",
        }
        for _, w in ipairs(want) do
            assert.truthy(out:find(w, 1, true), "missing: " .. w .. "\n" .. out)
        end
        assert.are.equal(6, #lines(out), out) -- each once (count is written 4 times), and the summary
        assert.truthy(out:find("1 route(s), 1 lib module(s): 0 error(s), 5 warning(s): ok\n", 1, true), out)
        local code2, out2 = run{ "--check", "--strict", app }
        assert.are.equal(1, code2, out2)
        assert.truthy(out2:find("0 error(s), 5 warning(s) (--strict)", 1, true), out2)
    end)

    it("follows the app layout rules and runs no loop: top-level timers never fire", function()
        write(app .. "/ok.lua", table.concat({
            "local sb = require 'switchboard'",
            "sb.every(0.001, function() error('a timer ran under --check') end)",
            "sb.publish('nobody', 'at load')",
            "return { request = function() return { status = 200 } end }",
        }, "\n") .. "\n")
        write(app .. "/spec/helper.lua", "HELPER = true\nreturn 42\n")
        write(app .. "/ok_spec.lua", "describe('x', function() end)\n")
        write(app .. "/.sbignore", "drafts\n")
        assert(os.execute(("mkdir -p '%s/drafts'"):format(app)))
        write(app .. "/drafts/wip.lua", "local x = (\n")
        local code, out, err = run{ "--check", "--listen", "127.0.0.1:1", app }
        assert.are.equal(0, code, out .. err)
        assert.truthy(out:find(app .. ": 1 route(s), 0 lib module(s): 0 error(s), 0 warning(s): ok", 1, true), out)
        assert.falsy(err:find("listening", 1, true), err)
    end)

    it("fails an app with no route script, as the server would not start", function()
        local code, out = run{ "--check", app .. "/" }
        assert.are.equal(1, code, out)
        assert.truthy(out:find(app .. ": error: no route script", 1, true), out)
    end)

    it("exits 2 on --strict without --check, and on a missing APP_DIR", function()
        local code, _, err = run{ "--strict", app }
        assert.are.equal(2, code)
        assert.truthy(err:find("switchboard: --strict goes with --check", 1, true), err)
        code, _, err = run{ "--check", app .. "/nope" }
        assert.are.equal(2, code)
        assert.truthy(err:find("is not a readable directory", 1, true), err)
    end)
end)
