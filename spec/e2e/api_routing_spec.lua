-- Routing, static files and query strings on the real server (spec/apps/api).
local server = require "server"
local rawws = require "rawws"
local cjson = require "cjson"

local function get(port, path, extra, method)
    local c = rawws.connect(port)
    local lines = { (method or "GET") .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
    for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
    c:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
    local status, headers, body, head
    if method == "HEAD" then
        status, headers, head = c:http_head()
        body = c.buf
        local eof = c:eof(5)
        body = body .. c.buf
        assert.is_true(eof, "HEAD: connection not closed after the head")
    else
        status, headers, body, head = c:http()
    end
    c:close()
    return status, headers, body, head
end

-- Open a WebSocket on path and return the first text message the route sends.
local function first_message(port, path)
    local c = rawws.open(port, path)
    local f = assert(c:recv_frame())
    c:close()
    return f.payload
end

describe("routing", function()
    local s
    setup(function() s = server.start{ app = "spec/apps/api" } end)
    teardown(function() if s then s:stop() end end)

    it("maps x.lua to /x, nested/index.lua to /nested and nested/deep/leaf.lua to its path", function()
        assert.equal("hello nested index /nested", first_message(s.port, "/nested"))
        assert.equal("leaf /nested/deep/leaf", first_message(s.port, "/nested/deep/leaf"))
        local c = rawws.open(s.port, "/probe?hello=you")
        assert.equal("hello you", c:recv_frame().payload)
        c:close()
    end)

    it("answers 404 to an upgrade on lib/, on a script path with .lua and on an unknown path", function()
        for _, p in ipairs({ "/lib/helper", "/helper", "/probe.lua", "/nested/index", "/nope" }) do
            local c = rawws.connect(s.port)
            c:send(rawws.request(p))
            assert.equal(404, (c:http()), p)
            c:close()
        end
    end)

    it("puts lib/ on package.path (require 'helper' works in a route)", function()
        -- nested/index.lua greets through lib/helper.lua
        assert.matches("^hello ", first_message(s.port, "/nested"))
    end)

    it("answers a plain GET on a WebSocket-only route with 426", function()
        local st, h = get(s.port, "/probe")
        assert.equal(426, st)
        assert.equal("websocket", h["upgrade"])
    end)
end)

describe("static files", function()
    local s
    setup(function() s = server.start{ app = "spec/apps/api" } end)
    teardown(function() if s then s:stop() end end)

    it("serves / as public/index.html with type, length and Last-Modified", function()
        local st, h, body = get(s.port, "/")
        assert.equal(200, st)
        assert.equal(server.read_file("spec/apps/api/public/index.html"), body)
        assert.equal("text/html; charset=utf-8", h["content-type"])
        assert.equal(tostring(#body), h["content-length"])
        assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", h["last-modified"])
    end)

    it("gives common types their Content-Type", function()
        local want = {
            ["/style.css"] = "text/css; charset=utf-8",
            ["/app.js"] = "text/javascript; charset=utf-8",
            ["/data.json"] = "application/json",
            ["/notes.txt"] = "text/plain; charset=utf-8",
            ["/pic.svg"] = "image/svg+xml",
            ["/pic.png"] = "image/png",
            ["/blob.bin"] = "application/octet-stream",
            ["/docs/index.html"] = "text/html; charset=utf-8",
        }
        for path, ctype in pairs(want) do
            local st, h, body = get(s.port, path)
            assert.equal(200, st, path)
            assert.equal(ctype, h["content-type"], path)
            assert.equal(server.read_file("spec/apps/api/public" .. path), body, path)
        end
    end)

    it("answers If-Modified-Since with 304 when the file is not newer, 200 when it is", function()
        local _, h = get(s.port, "/style.css")
        local lm = h["last-modified"]
        local st, h2, body, head = get(s.port, "/style.css", { "If-Modified-Since: " .. lm })
        assert.equal(304, st)
        assert.equal("", body)
        assert.equal(lm, h2["last-modified"])
        assert.falsy(head:lower():find("content-length: [1-9]"))
        assert.equal(200, (get(s.port, "/style.css", { "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT" })))
        assert.equal(200, (get(s.port, "/style.css", { "If-Modified-Since: garbage" })))
    end)

    it("answers HEAD with the headers of GET and no body", function()
        local st, h, body = get(s.port, "/data.json", nil, "HEAD")
        assert.equal(200, st)
        assert.equal("application/json", h["content-type"])
        assert.equal(tostring(#server.read_file("spec/apps/api/public/data.json")), h["content-length"])
        assert.equal("", body)
    end)

    it("serves a folder's index.html but never lists a folder", function()
        local st, _, body = get(s.port, "/docs/")
        assert.equal(200, st)
        assert.equal("<p>docs</p>\n", body)
        assert.equal(200, (get(s.port, "/docs")))
        assert.equal(404, (get(s.port, "/nolist/")))
        assert.equal(404, (get(s.port, "/nolist")))
        assert.equal(200, (get(s.port, "/nolist/a.txt")))
    end)

    it("answers 404 to every path that tries to leave public/ or reach a hidden file", function()
        local attempts = {
            "/../probe.lua", "/..%2fprobe.lua", "/%2e%2e/probe.lua", "/%2E%2E/lib/secret.txt",
            "/docs/../../probe.lua", "/docs/%2e%2e/%2e%2e/probe.lua", "/%2e%2e%2fprobe.lua",
            "/docs%2f..%2f..%2fprobe.lua", "/index.html%00.txt", "/%00", "/.hidden", "/%2ehidden",
            "/outside.txt", "/uplib/secret.txt", "/uplib/helper.lua",
            "/docs/./index.html", "//etc/passwd", "/%2fetc/passwd",
        }
        for _, p in ipairs(attempts) do
            local st, _, body = get(s.port, p)
            assert.is_true(st == 404 or st == 400, p .. " gave " .. tostring(st))
            assert.falsy(body:find("not for the public", 1, true), p)
            assert.falsy(body:find("probe", 1, true), p)
        end
        -- the target of the symlink exists and the link itself is in public/
        assert.equal("not for the public\n", server.read_file("spec/apps/api/public/outside.txt"))
    end)

    it("answers 404 for a missing file and 405 for other methods", function()
        assert.equal(404, (get(s.port, "/missing.css")))
        assert.equal(405, (get(s.port, "/style.css", { "Content-Length: 0" }, "POST")))
    end)
end)

describe("query strings", function()
    local s
    setup(function() s = server.start{ app = "spec/apps/api" } end)
    teardown(function() if s then s:stop() end end)

    it("percent-decodes, turns '+' into a space and makes a list of a repeated key", function()
        local c = rawws.open(s.port, "/probe?a=1&b=hello+world&c=%41%2B%26%3d&a=2&a=3&flag&e=&%C3%A9=%E2%9C%93")
        c:send(require("wsframe").text('{"op":"fields"}'))
        local f = cjson.decode(c:recv_frame().payload)
        c:close()
        assert.same({
            a = { "1", "2", "3" }, b = "hello world", c = "A+&=", flag = "", e = "", ["é"] = "✓",
        }, f.query)
    end)

    it("gives the same table to request handlers", function()
        local st, _, body = get(s.port, "/http?x=%20y&x=z&q=a+b")
        assert.equal(200, st)
        assert.same({ x = { " y", "z" }, q = "a b" }, cjson.decode(body).query)
    end)
end)
