-- The app layout rules: an app keeps its specs beside its scripts. spec/ and
-- test/ folders, dot-folders, *_spec.lua files and what APP_DIR/.sbignore names
-- are never routes: not at start-up, not when they are saved while the server
-- runs, and nothing of theirs is loaded (no load error in the log).
local server = require "server"
local rawws = require "rawws"

local write = server.write_file

-- A spec helper that would make a fine public URL if it were routed.
local HELPER = [[
return { request = function() return { status = 200, body = "helper is live" } end,
         message = function(ws, msg) ws:send("helper " .. msg) end }
]]
-- A busted spec: loading it as a route fails (describe is not a global there).
local SPEC = [[
describe("x", function() it("y", function() end) end)
]]
local ROUTE = [[
return { request = function() return { status = 200, body = "route %s" } end }
]]

local function upgrade_status(port, path)
    local c = rawws.connect(port)
    c:send(rawws.request(path))
    local status = c:http()
    c:close()
    return status
end

local function get(s, path)
    local status, _, body = rawws.get(s.port, path)
    return status, body
end

-- Not a route: a GET is 404 (no request handler, no static file) and so is an upgrade.
local function assert_not_routed(s, path)
    local status, body = get(s, path)
    assert.are.equal(404, status, path .. " answered " .. tostring(status) .. ": " .. tostring(body))
    assert.are.equal(404, upgrade_status(s.port, path), path .. " accepted an upgrade")
end

local function assert_routed(s, path, name)
    local status, body = get(s, path)
    assert.are.equal(200, status, path)
    assert.are.equal("route " .. name, body)
end

local function mkdirs(app, ...)
    for _, d in ipairs({ ... }) do assert(os.execute(("mkdir -p '%s/%s'"):format(app, d))) end
end

-- Every file that must never be a route, relative to the app dir, and the URL it would have had.
local NEVER = {
    { "spec/helper.lua", "/spec/helper", HELPER },
    { "spec/support/helper.lua", "/spec/support/helper", HELPER },
    { "test/x.lua", "/test/x", HELPER },
    { ".hidden/y.lua", "/.hidden/y", HELPER },
    { "foo_spec.lua", "/foo_spec", SPEC },
    { "api/bar_spec.lua", "/api/bar_spec", SPEC },
    { "api/test/z.lua", "/api/test/z", HELPER },
}

describe("app layout", function()
    local s, app

    before_each(function()
        app = server.tmpname(".app")
        mkdirs(app, "spec/support", "test", ".hidden", "api/test")
        write(app .. "/ok.lua", ROUTE:format("ok"))
        write(app .. "/api/feed.lua", ROUTE:format("feed"))
    end)

    after_each(function()
        if s then s:stop() end
        s = nil
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("never routes spec/, test/, dot-folders or *_spec.lua at start-up", function()
        for _, f in ipairs(NEVER) do write(app .. "/" .. f[1], f[3]) end
        s = server.start{ app = app }
        s:wait_log("reload: watching")
        assert_routed(s, "/ok", "ok")
        assert_routed(s, "/api/feed", "feed")
        for _, f in ipairs(NEVER) do assert_not_routed(s, f[2]) end
        local log = s:log()
        assert.truthy(log:find("loaded 2 route(s)", 1, true), log)
        -- the app folder and api/: spec/, spec/support/, test/, .hidden/, api/test/ are not watched
        assert.truthy(log:find("reload: watching 2 folder(s)", 1, true), log)
        assert.falsy(log:find("error", 1, true), log)
    end)

    it("never loads them when they are saved while the server runs", function()
        s = server.start{ app = app }
        s:wait_log("reload: watching")
        mkdirs(app, "spec/new")
        for _, f in ipairs(NEVER) do write(app .. "/" .. f[1], f[3]) end
        write(app .. "/spec/new/later.lua", HELPER)
        -- a real route saved after them: once it is live, their events were handled too
        write(app .. "/probe.lua", ROUTE:format("probe"))
        s:wait_log("reloaded [^\n]*/probe%.lua")
        assert_routed(s, "/probe", "probe")
        for _, f in ipairs(NEVER) do assert_not_routed(s, f[2]) end
        assert_not_routed(s, "/spec/new/later")
        local log = s:log()
        assert.falsy(log:find("error", 1, true), log)
        assert.falsy(log:find("reloaded [^\n]*/spec/"), log)
        assert.falsy(log:find("_spec.lua", 1, true), log)
    end)

    it("leaves out what APP_DIR/.sbignore names, and follows its edits", function()
        mkdirs(app, "drafts", "api/old")
        write(app .. "/.sbignore", "# work in progress\n\ndrafts\n  *.wip.lua  \n/api/old/\napi/legacy*.lua\n")
        write(app .. "/drafts/idea.lua", ROUTE:format("idea"))
        write(app .. "/half.wip.lua", ROUTE:format("half"))
        write(app .. "/api/old/thing.lua", ROUTE:format("thing"))
        write(app .. "/api/legacy_v1.lua", ROUTE:format("legacy"))
        s = server.start{ app = app }
        s:wait_log("reload: watching")
        for _, p in ipairs({ "/drafts/idea", "/half.wip", "/api/old/thing", "/api/legacy_v1" }) do
            assert_not_routed(s, p)
        end
        assert_routed(s, "/api/feed", "feed")
        -- saved while ignored: still nothing
        write(app .. "/drafts/idea.lua", ROUTE:format("idea2"))
        write(app .. "/probe.lua", ROUTE:format("probe"))
        s:wait_log("reloaded [^\n]*/probe%.lua")
        assert_not_routed(s, "/drafts/idea")
        -- drafts/ un-ignored, api/feed.lua ignored: the first goes live, the second goes away
        write(app .. "/.sbignore", "*.wip.lua\n/api/old/\napi/legacy*.lua\napi/feed.lua\n")
        s:wait_log("reloaded every script")
        assert_routed(s, "/drafts/idea", "idea2")
        assert_not_routed(s, "/api/feed")
        assert_not_routed(s, "/half.wip")
        -- and a folder that is no longer ignored is watched again
        write(app .. "/drafts/idea.lua", ROUTE:format("idea3"))
        server.wait_for(function() return select(2, get(s, "/drafts/idea")) == "route idea3" end, 10,
            "drafts/idea.lua to reload")
        assert.falsy(s:log():find("error", 1, true), s:log())
    end)
end)
