-- The editor types (lua/switchboard/meta/*.lua, LuaLS ---@meta files) name
-- exactly what the server and switchboard.testing export, so they cannot drift:
-- a route inside a running server reports the names of `require "switchboard"`,
-- its log and stats, the ws fields and methods, the timer methods and the
-- request tables, and each is compared with the annotated class.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"
local testing = require "switchboard.testing"

local META = server.root .. "/lua/switchboard/meta"

-- class name -> { fields = set, optional = set, fns = set } from ---@class,
-- ---@field and `function V.name` / `function V:name` after `local V = {}`.
local function read_types()
    local classes = {}
    local p = io.popen("ls '" .. META .. "'")
    for file in p:lines() do
        local cur, class_of = nil, {}
        for line in io.lines(META .. "/" .. file) do
            local c = line:match("^%-%-%-@class%s+([%w%._]+)")
            if c then
                cur = c
                classes[c] = classes[c] or { fields = {}, optional = {}, fns = {} }
            elseif cur then
                local f, opt = line:match("^%-%-%-@field%s+([%w_]+)(%??)%s")
                if f then
                    classes[cur].fields[f] = true
                    if opt == "?" then classes[cur].optional[f] = true end
                end
                local v = line:match("^local%s+([%w_]+)%s*=%s*{}")
                if v then class_of[v] = cur end
                local tv, fn = line:match("^function%s+([%w_]+)[%.:]([%w_]+)%s*%(")
                if tv then classes[assert(class_of[tv], line)].fns[fn] = true end
            end
        end
    end
    p:close()
    return classes
end

local function set(list)
    local r = {}
    for _, k in ipairs(list) do r[k] = true end
    return r
end

local function sorted(s)
    local r = {}
    for k in pairs(s) do r[#r + 1] = k end
    table.sort(r)
    return r
end

local function names(class)
    local r = {}
    for k in pairs(class.fields) do r[k] = true end
    for k in pairs(class.fns) do r[k] = true end
    return r
end

-- The same names, listed, so a failure shows both sides.
local function assert_names(want, got, what)
    assert.are.same(sorted(want), sorted(got), what)
end

local PROBE = [[
local sb = require "switchboard"
local function keys(t)
    local r = {}
    for k in pairs(t) do r[#r + 1] = tostring(k) end
    return r
end
local probe = {}
function probe.upgrade(req)
    sb.shared.upgrade_req = keys(req)
    return true, { protocol = req.protocols[1] }
end
function probe.request(req)
    local t = sb.after(100, function() end)
    local timer = keys(debug.getmetatable(t).__index)
    t:cancel()
    return { status = 200, body = sb.json.encode({ module = keys(sb), log = keys(sb.log),
        stats = keys(sb.stats()), timer = timer, request_req = keys(req) }) }
end
function probe.message(ws)
    local _ = ws.path -- the fields' cache is made on first read
    local _, methods = debug.getupvalue(debug.getmetatable(ws).__index, 1)
    local fields = keys(debug.getuservalue(ws, 2))
    fields[#fields + 1] = "id"
    fields[#fields + 1] = "data"
    ws:send(sb.json.encode({ methods = keys(methods), fields = fields, upgrade_req = sb.shared.upgrade_req }))
end
return probe
]]

describe("editor types", function()
    local types = read_types()
    local s, app, report

    setup(function()
        app = server.tmpname(".app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/probe.lua", PROBE)
        -- uncompressed answers, though permessage-deflate is negotiated (ws.extensions)
        s = server.start{ app = app, args = { "--deflate-min-size", "1g" } }
        local status, _, body = rawws.get(s.port, "/probe")
        assert.are.equal(200, status, body)
        report = cjson.decode(body)
        local c = rawws.open(s.port, "/probe", { "Origin: http://127.0.0.1", -- req.origin
            "Sec-WebSocket-Protocol: probe.v1",
            "Sec-WebSocket-Extensions: permessage-deflate" })
        assert(c:send(wsframe.text("names")))
        local f = assert(c:recv_frame())
        c:close()
        for k, v in pairs(cjson.decode(f.payload)) do report[k] = v end
    end)

    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf '" .. app .. "'")
    end)

    it("has a ---@meta file for switchboard, ws, req, timer and switchboard.testing", function()
        for _, c in ipairs({ "switchboard", "switchboard.log", "switchboard.json", "switchboard.stats",
                "switchboard.ws", "switchboard.timer", "switchboard.req", "switchboard.accept",
                "switchboard.response", "switchboard.route", "switchboard.testing",
                "switchboard.testing.app", "switchboard.testing.route", "switchboard.testing.client",
                "switchboard.testing.clock" }) do
            assert.truthy(types[c], "no ---@class " .. c)
        end
    end)

    it("names what require 'switchboard' exports in the server", function()
        assert_names(names(types["switchboard"]), set(report.module), "switchboard")
        assert_names(names(types["switchboard.log"]), set(report.log), "switchboard.log")
        assert_names(names(types["switchboard.stats"]), set(report.stats), "switchboard.stats")
    end)

    it("names the ws fields and methods and the timer methods", function()
        local ws = types["switchboard.ws"]
        assert_names(ws.fns, set(report.methods), "ws methods")
        assert_names(ws.fields, set(report.fields), "ws fields")
        assert_names(types["switchboard.timer"].fns, set(report.timer), "timer methods")
    end)

    it("names the request table's fields, body only in request", function()
        local req = types["switchboard.req"]
        local both = set(report.upgrade_req)
        for _, k in ipairs(report.request_req) do both[k] = true end
        assert_names(req.fields, both, "req")
        assert.is_nil(set(report.upgrade_req).body)
        assert.is_true(req.optional.body)
    end)

    it("names every handler the server resolves, and compression", function()
        local src = server.read_file(server.root .. "/core/script_route.c")
        local list = assert(src:match("script__handler_names%[%]%s*=%s*(%b{})"), "handler list not found")
        local want = { compression = true }
        for h in list:gmatch('"([%w_]+)"') do want[h] = true end
        assert_names(types["switchboard.route"].fields, want, "switchboard.route")
    end)

    describe("of switchboard.testing", function()
        local dir, tapp, route, client

        setup(function()
            dir = server.tmpname(".fake")
            assert(os.execute("mkdir -p '" .. dir .. "'"))
            server.write_file(dir .. "/r.lua", "return { open = function(ws) ws:send('hi') end }\n")
            tapp = testing.app(dir)
            route = tapp:load("r")
            client = route:connect()
        end)

        teardown(function()
            os.execute("rm -rf '" .. dir .. "'")
        end)

        -- Every public method (no leading _) is annotated, every annotated name
        -- exists (fields marked optional may be nil).
        local function check(obj, class_name)
            local class = types[class_name]
            local methods = {}
            for k, v in pairs(getmetatable(obj).__index) do
                if type(v) == "function" and not k:match("^_") then methods[k] = true end
            end
            assert_names(class.fns, methods, class_name .. " methods")
            for f in pairs(class.fields) do
                assert.truthy(class.optional[f] or obj[f] ~= nil, class_name .. "." .. f .. " is not there")
            end
        end

        it("names the module's functions", function()
            assert_names(names(types["switchboard.testing"]), set({ "app", "load", "clock", "http", "tcp" }),
                "switchboard.testing")
            local exported = {}
            for k in pairs(testing) do exported[k] = true end
            assert_names(names(types["switchboard.testing"]), exported, "switchboard.testing")
        end)

        it("names the app, route, client and clock", function()
            check(tapp, "switchboard.testing.app")
            check(route, "switchboard.testing.route")
            check(client, "switchboard.testing.client")
            check(tapp.clock, "switchboard.testing.clock")
        end)

        it("offers no switchboard function the server's types do not name", function()
            local annotated = names(types["switchboard"])
            for k in pairs(tapp.module) do
                assert.truthy(annotated[k], "the fake's sb." .. k .. " is not annotated")
            end
        end)
    end)
end)
