-- switchboard.testing's sb.http: the spec answers requests with t.http.on, so an
-- `upgrade` that asks an auth service is tested without one.
local t = require "switchboard.testing"

local dir

local AUTH = [[
local sb = require "switchboard"
local auth = {}
function auth.upgrade(req)
    local res, err = sb.http.request("http://auth.local/check?token=" .. (req.query.token or ""),
        { headers = { ["X-From"] = "switchboard" }, timeout = 2 })
    if not res then return false, 503, err end
    if res.status ~= 200 then return false, 403 end
    return true
end
function auth.open(ws) ws:send("welcome") end
return auth
]]

before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    local f = assert(io.open(dir .. "/auth.lua", "w"))
    f:write(AUTH)
    f:close()
    t.http.clear()
end)

after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
    t.http.clear()
end)

describe("switchboard.testing: sb.http", function()
    it("answers an upgrade's request with the spec's function", function()
        local seen
        t.http.on("^http://auth%.local/", function(req)
            seen = req
            if req.url:match("token=good") then return { status = 200, body = "ok" } end
            return { status = 401 }
        end)
        local route = t.app(dir):load("auth")
        local c = route:connect{ query = { token = "good" } }
        assert.is_true(c:is_open())
        assert.are.equal("welcome", c.sent[1].data)
        assert.are.equal("GET", seen.method)
        assert.are.equal("switchboard", seen.headers["X-From"])
        assert.are.equal(2, seen.timeout)
        local refused, status = route:connect{ query = { token = "bad" } }
        assert.is_nil(refused)
        assert.are.equal(403, status)
    end)

    it("passes nil, err through and lower-cases the answer's header names", function()
        t.http.on("/down", function() return nil, "connection refused" end)
        t.http.on("/up", function() return { headers = { ["Content-Type"] = "text/plain" } } end)
        local sb = t.app(dir).module
        local res, err = sb.http.request("http://x/down")
        assert.is_nil(res)
        assert.are.equal("connection refused", err)
        res = sb.http.request("https://x/up")
        assert.are.same({ status = 200, headers = { ["content-type"] = "text/plain" }, body = "" }, res)
    end)

    it("refuses a body past opts.max_body as the server does", function()
        t.http.on(".", function() return { body = ("x"):rep(11) } end)
        local sb = t.app(dir).module
        assert.are.same({ nil, "body too large" }, { sb.http.request("http://x/", { max_body = 10 }) })
        assert.are.equal(11, #sb.http.request("http://x/", { max_body = 11 }).body)
    end)

    it("raises on misuse, and when no answer matches", function()
        local sb = t.app(dir).module
        assert.has_error(function() sb.http.request("ftp://x/") end,
            "bad argument #1 to 'request' (URL scheme must be http:// or https://)")
        assert.has_error(function() sb.http.request("http://x/", { timeout = "1" }) end,
            "bad argument #2 to 'request' (opts.timeout must be a number, not a string)")
        assert.has_error(function() sb.http.request("http://x/", { method = "G T" }) end)
        assert.has_error(function() sb.http.request("http://x/", { headers = { ["X-A"] = "a\r\nb" } }) end,
            "bad argument #2 to 'request' (opts.headers['X-A'] has a CR, LF or NUL)")
        assert.has_error(function() sb.http.request("http://x/", { headers = { ["X A"] = "a" } }) end,
            "bad argument #2 to 'request' (opts.headers: 'X A' is not a header name)")
        assert.has_error(function() sb.http.request("http://nobody/") end,
            "switchboard.testing: no t.http.on pattern matches GET http://nobody/")
    end)
end)

describe("switchboard.testing: sb.http redirects", function()
    it("follows opts.redirects as the server does", function()
        local seen = {}
        t.http.on("^http://a%.local/old", function(req)
            seen[#seen + 1] = req
            return { status = 303, headers = { Location = "/new" } }
        end)
        t.http.on("^http://a%.local/new", function(req)
            seen[#seen + 1] = req
            return { status = 307, headers = { Location = "http://b.local/last" } }
        end)
        t.http.on("^http://b%.local/last", function(req)
            seen[#seen + 1] = req
            return { body = req.method .. " " .. tostring(req.headers.Authorization) }
        end)
        local sb = t.app(dir).module
        local res = sb.http.request("http://a.local/old")
        assert.are.equal(303, res.status) -- not followed by default
        seen = {}
        res = sb.http.request("http://a.local/old", { method = "POST", body = "x", redirects = 2,
            headers = { Authorization = "Bearer t" } })
        assert.are.equal(200, res.status)
        assert.are.equal("GET nil", res.body) -- 303: a GET; another origin: no Authorization
        assert.are.equal("Bearer t", seen[2].headers.Authorization)
        assert.are.equal(301 + 6, sb.http.request("http://a.local/old", { redirects = 1 }).status)
        -- the default port written out is the same origin: Authorization stays
        t.http.on("^http://a%.local/port", function()
            return { status = 307, headers = { Location = "http://A.local:80/echo" } }
        end)
        t.http.on("^http://A%.local:80/echo", function(req)
            return { body = tostring(req.headers.Authorization) }
        end)
        res = sb.http.request("http://a.local/port", { redirects = 1, headers = { Authorization = "Bearer t" } })
        assert.are.equal("Bearer t", res.body)
        assert.has_error(function() sb.http.request("http://a.local/old", { redirects = 21 }) end,
            "bad argument #2 to 'request' (opts.redirects must be an integer 0..20)")
    end)
end)
