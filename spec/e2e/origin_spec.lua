-- Origin checks before the upgrade (--allowed-origins, req.origin) and the
-- sample chat's same-origin default: a page on another site must not get a
-- WebSocket the browser opened with this site's cookies.
local server = require "server"
local rawws = require "rawws"

-- Send a handshake with these extra header lines; the answer's status and headers.
local function handshake(port, path, extra)
    local c = rawws.connect(port)
    c:send(rawws.request(path, extra))
    local status, headers, body = c:http()
    c:close()
    return status, headers, body
end

local APP = {
    -- no upgrade handler: the server alone decides
    ["plain.lua"] = "return {}\n",
    -- shows what the script saw, and that it ran at all
    ["who.lua"] = [[
local sb = require "switchboard"
return {
    upgrade = function(req)
        sb.log.info("upgrade handler ran for " .. tostring(req.origin))
        return true, { headers = { ["X-Origin"] = req.origin or "none" } }
    end,
}
]],
}

describe("--allowed-origins", function()
    local dir, s

    setup(function()
        dir = server.tmpname("-app")
        assert(os.execute("mkdir -p '" .. dir .. "'"))
        for name, text in pairs(APP) do server.write_file(dir .. "/" .. name, text) end
        s = server.start{ app = dir, args = { "--no-watch", "--allowed-origins",
            "https://chat.example.com, http://localhost:3000,*.example.org" } }
    end)

    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf '" .. dir .. "'")
    end)

    it("accepts an upgrade from a listed origin, and shows it as req.origin", function()
        local status, headers = handshake(s.port, "/who", { "Origin: https://chat.example.com" })
        assert.equal(101, status)
        assert.equal("https://chat.example.com", headers["x-origin"])
        assert.equal(101, (handshake(s.port, "/plain", { "Origin: http://localhost:3000" })))
        assert.equal(101, (handshake(s.port, "/plain", { "Origin: HTTPS://Chat.Example.COM" })))
    end)

    it("accepts any subdomain of a *. entry, but not the domain itself", function()
        assert.equal(101, (handshake(s.port, "/plain", { "Origin: https://a.example.org" })))
        assert.equal(101, (handshake(s.port, "/plain", { "Origin: http://a.b.example.org" })))
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: https://example.org" })))
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: https://evilexample.org" })))
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: https://a.example.org:8443" })))
    end)

    it("refuses any other origin with 403 before the script's upgrade runs, and logs it", function()
        local status, _, body = handshake(s.port, "/who", { "Origin: https://evil.example" })
        assert.equal(403, status)
        assert.equal("403 Forbidden\n", body)
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: http://localhost:3001" })))
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: https://chat.example.com.evil.example" })))
        assert.equal(403, (handshake(s.port, "/plain", { "Origin: null" })))
        s:wait_log("upgrade refused %(403%): Origin 'https://evil%.example' is not in %-%-allowed%-origins")
        assert.is_nil(s:log():find("upgrade handler ran for https://evil.example", 1, true))
    end)

    it("lets an upgrade without Origin through (not a browser) to the script", function()
        local status, headers = handshake(s.port, "/who")
        assert.equal(101, status)
        assert.equal("none", headers["x-origin"])
    end)
end)

describe("--allowed-origins on the command line", function()
    it("exits with status 2 on an entry that is not an origin", function()
        for _, bad in ipairs({ "https://", "", ",", "https://a.com/path", "https://a.com:x" }) do
            local s = server.start{ raw_args = true, expect_exit = true,
                args = { "--allowed-origins", bad, server.root .. "/scripts" } }
            local how, code = s:wait_exit()
            local log = s:stop()
            assert.same({ "exited", 2 }, { how, code })
            assert.truthy(log:find("--allowed-origins takes origins", 1, true), log)
        end
    end)
end)

describe("the sample chat", function()
    local s

    setup(function()
        s = server.start{ app = "scripts", args = { "--no-watch" } }
    end)

    teardown(function()
        if s then s:stop() end
    end)

    it("refuses a page on another site", function()
        local status, _, body = handshake(s.port, "/chat", { "Origin: https://evil.example" })
        assert.equal(403, status)
        assert.equal("this chat only accepts connections from its own pages\n", body)
    end)

    it("accepts its own pages (Origin host:port = Host) and clients without Origin", function()
        -- rawws sends "Host: 127.0.0.1": port 80 for an http:// page
        assert.equal(101, (handshake(s.port, "/chat", { "Origin: http://127.0.0.1" })))
        assert.equal(403, (handshake(s.port, "/chat", { "Origin: http://127.0.0.1:8081" })))
        assert.equal(101, (handshake(s.port, "/chat")))
    end)
end)
