-- Everything a script hands the server (the route table, upgrade and request
-- answers) is read under a protected call and the instruction budget: a
-- metamethod that raises or loops is a logged error with a sane answer to the
-- client (500, a refusal, 1011), never a Lua panic that aborts the process.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"

local http = rawws.http

local ANSWERS = [[
local function boom() error("boom in a metamethod") end
local function forever() while true do end end
local raising = setmetatable({}, { __index = boom })
local looping = setmetatable({}, { __index = forever })
local upgrades = {
    accept_raises = function() return true, raising end,
    accept_loops = function() return true, looping end,
    headers_raise = function() return true, { headers = setmetatable({}, { __index = boom }) } end,
    refuse_odd = function()
        return false, setmetatable({}, { __index = boom }), setmetatable({}, { __tostring = boom })
    end,
    refuse = function() return false, 451, "not here" end,
}
local requests = {
    raises = function() return raising end,
    loops = function() return looping end,
    odd_fields = function()
        return { status = setmetatable({}, { __index = boom }), body = setmetatable({}, { __tostring = boom }) }
    end,
}
return {
    upgrade = function(req)
        local u = upgrades[req.query.u]
        if u then return u() end
        return true
    end,
    request = function(req)
        local r = requests[req.query.r]
        if r then return r() end
        return { status = 200, body = "fine" }
    end,
    message = function(ws, msg) ws:send("answers:" .. msg) end,
}
]]

-- a route table with a metatable: handlers found through __index at load
-- (inheritance) are served; an __index that raises later is never reached
local INHERITS = [[
local base = {}
function base.message(ws, msg) ws:send("inherited:" .. msg) end
local armed = false
return setmetatable({ open = function() armed = true end }, {
    __index = function(_, k)
        if armed then error("route table looked up after load: " .. tostring(k)) end
        return base[k]
    end,
})
]]

local RAISING_TABLE = [[
return setmetatable({}, { __index = function() error("boom in the route table") end })
]]
local LOOPING_TABLE = [[
return setmetatable({}, { __index = function() while true do end end })
]]

describe("values a script returns", function()
    local s, app

    setup(function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. app .. "'"))
        server.write_file(app .. "/answers.lua", ANSWERS)
        server.write_file(app .. "/inherits.lua", INHERITS)
        server.write_file(app .. "/raising_table.lua", RAISING_TABLE)
        server.write_file(app .. "/looping_table.lua", LOOPING_TABLE)
        server.write_file(app .. "/later.lua", 'return { message = function(ws, m) ws:send("later v1:" .. m) end }\n')
        s = server.start{ app = app, args = { "--lua-budget", "1000000" } }
    end)

    teardown(function()
        if s then s:stop() end
        if app then os.execute("rm -rf '" .. app .. "'") end
    end)

    local function alive()
        assert.is_true(s:running())
        local c = rawws.open(s.port, "/answers")
        assert.equal("answers:alive", c:echo("alive"))
        c:close()
    end

    it("refuses with 500 when the upgrade's accept table raises in __index", function()
        assert.equal(500, (http(s.port, rawws.request("/answers?u=accept_raises"))))
        s:wait_log("route /answers %([^\n]*answers%.lua%): upgrade answer failed: [^\n]*boom in a metamethod")
        alive()
    end)

    it("refuses with 500 when the upgrade's accept table loops in __index", function()
        assert.equal(500, (http(s.port, rawws.request("/answers?u=accept_loops"))))
        s:wait_log("upgrade answer failed: [^\n]*instruction budget exceeded")
        alive()
    end)

    it("refuses with 500 when the accept table's headers raise in __index", function()
        -- headers are read raw (an empty table here): accepted without extra headers
        local c = rawws.connect(s.port)
        c:send(rawws.request("/answers?u=headers_raise"))
        assert.equal(101, (c:http_head()))
        c:close()
        alive()
    end)

    it("refuses with 403 when a refusal's status and body are tables with metamethods", function()
        local st, _, body = http(s.port, rawws.request("/answers?u=refuse_odd"))
        assert.equal(403, st)
        assert.falsy(body:find("boom", 1, true))
        local st2, _, body2 = http(s.port, rawws.request("/answers?u=refuse"))
        assert.same({ 451, "not here" }, { st2, body2 })
        alive()
    end)

    it("answers 500 when the request answer raises or loops in __index", function()
        assert.equal(500, (http(s.port, "GET /answers?r=raises HTTP/1.1\r\nHost: x\r\n\r\n")))
        s:wait_log("route /answers %([^\n]*answers%.lua%): request answer failed: [^\n]*boom in a metamethod")
        assert.equal(500, (http(s.port, "GET /answers?r=loops HTTP/1.1\r\nHost: x\r\n\r\n")))
        s:wait_log("request answer failed: [^\n]*instruction budget exceeded")
        local st, _, body = http(s.port, "GET /answers?r=odd_fields HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.same({ 200, "" }, { st, body })
        alive()
    end)

    it("does not load a route table that raises or loops in __index, and serves the others", function()
        local log = s:log()
        assert.matches("loading [^\n]*raising_table%.lua: [^\n]*boom in the route table", log)
        assert.matches("loading [^\n]*looping_table%.lua: [^\n]*instruction budget exceeded", log)
        for _, p in ipairs({ "/raising_table", "/looping_table" }) do
            assert.equal(404, (http(s.port, rawws.request(p))), p)
        end
        alive()
    end)

    it("serves handlers a route table inherits through __index, looked up once at load", function()
        local c = rawws.open(s.port, "/inherits")
        assert.equal("inherited:a", c:echo("a"))
        assert.equal("inherited:b", c:echo("b"))
        c:send(wsframe.close(1000, ""))
        assert.equal(1000, (c:recv_close()))
        c:close()
        assert.falsy(s:log():find("looked up after load", 1, true))
        alive()
    end)

    it("keeps the old version when a saved script returns a table that raises or loops", function()
        local c = rawws.open(s.port, "/later")
        assert.equal("later v1:1", c:echo("1"))
        server.write_file(app .. "/later.lua", RAISING_TABLE)
        s:wait_log("reload of [^\n]*later%.lua failed in [%d.]+ ms: route /later keeps serving version 1")
        assert.equal("later v1:2", c:echo("2"))
        server.write_file(app .. "/later.lua", LOOPING_TABLE)
        server.wait_for(function()
            local _, n = s:log():gsub("reload of [^\n]*later%.lua failed", "")
            return n == 2
        end, 10, "the second failed reload")
        assert.equal("later v1:3", c:echo("3"))
        c:close()
        alive()
    end)
end)
