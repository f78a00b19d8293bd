-- The HTTP/1.1 request parser (core/http.c) through the test-only sbt_http module.
-- Every request is fed whole, one byte at a time (passing last_len as a server
-- does) and split in two at every point; all three must agree.
local http = require "sbt_http"

local function raw_head(lines)
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- A request head from its lines; an HTTP/1.1 request without a Host line gets
-- "Host: x" last, as RFC 9112 requires one (raw_head leaves the lines alone).
local function head(lines)
    local has_host = false
    for i = 2, #lines do has_host = has_host or lines[i]:lower():match("^host:") ~= nil end
    if not has_host and lines[1]:match(" HTTP/1%.[1-9]$") then
        lines = { table.unpack(lines) }
        lines[#lines + 1] = "Host: x"
    end
    return raw_head(lines)
end

-- A request with n headers: "Host: x" and n - 1 "X-Nk: v".
local function with_headers(n)
    local lines = { "GET / HTTP/1.1", "Host: x" }
    for i = 1, n - 1 do
        lines[#lines + 1] = ("X-H%d: v"):format(i)
    end
    return raw_head(lines)
end

-- A request whose head is exactly `size` bytes (size >= 32), padded in one header.
local function head_of_size(size)
    local base = #head({ "GET / HTTP/1.1", "X-Pad: " })
    return head({ "GET / HTTP/1.1", "X-Pad: " .. ("a"):rep(size - base) })
end

local function pack(...)
    return { n = select("#", ...), ... }
end

-- One byte at a time, as a slow client sends it: the first answer that is not
-- need_more, and the number of bytes it took.
local function feed_bytes(raw, limits)
    local last = 0
    for i = 1, #raw do
        local r = pack(http.parse(raw:sub(1, i), last, limits))
        if r[1] ~= "need_more" then
            return r, i
        end
        last = i
    end
    return pack("need_more"), #raw
end

-- Parses raw whole, byte by byte and split at every point, asserts that they
-- agree, and returns the whole answer.
local function parse(raw, limits)
    local whole = pack(http.parse(raw, 0, limits))
    local bytes = feed_bytes(raw, limits)
    assert.same(whole, bytes)
    for cut = 1, #raw - 1 do
        local first = pack(http.parse(raw:sub(1, cut), 0, limits))
        if first[1] == "need_more" then
            assert.same(whole, pack(http.parse(raw, cut, limits)))
        else
            assert.same(whole, first)
        end
    end
    return whole[1], whole[2]
end

-- Asserts that raw is refused with status, however it arrives.
local function refuses(raw, status, limits)
    local r, st = parse(raw, limits)
    assert.equal("error", r)
    assert.equal(status, st)
end

describe("the HTTP request parser", function()
    describe("on a valid request", function()
        local raw = head({ "GET /chat?nick=a%20b HTTP/1.1", "Host: example.com", "Upgrade: websocket" })

        it("returns the head's length and its request line as slices", function()
            local n, req = parse(raw)
            assert.equal(#raw, n)
            assert.equal("GET", req.method)
            assert.equal("/chat?nick=a%20b", req.target)
            assert.equal("/chat", req.path)
            assert.equal("nick=a%20b", req.query)
            assert.equal(1, req.minor_version)
            assert.is_nil(req.content_length)
            assert.is_true(req.keep_alive)
            assert.same({ "Host", "example.com" }, { req.headers[1][1], req.headers[1][2] })
            assert.same({ "Upgrade", "websocket" }, { req.headers[2][1], req.headers[2][2] })
        end)

        it("answers need_more for every prefix of the request", function()
            for _, r in ipairs({ raw, head({ "GET / HTTP/1.1" }), with_headers(5) }) do
                for i = 0, #r - 1 do
                    assert.equal("need_more", (http.parse(r:sub(1, i))))
                end
                local _, took = feed_bytes(r)
                assert.equal(#r, took)
            end
        end)

        it("consumes exactly the head when WebSocket frame bytes follow it", function()
            local frame = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
            local n = parse(raw .. frame)
            assert.equal(#raw, n)
            -- the frame's bytes are never read, not even a stray LF
            assert.equal(#raw, (parse(raw .. "\n\n")))
        end)

        it("parses the smallest request there is", function()
            local n, req = parse("GET / HTTP/1.0\r\n\r\n")
            assert.equal(18, n)
            assert.equal("/", req.path)
            assert.is_nil(req.query)
            assert.same({}, req.headers)
            n = parse("GET / HTTP/1.1\r\nHost:\r\n\r\n")
            assert.equal(25, n)
        end)

        it("keeps the header slices inside the buffer", function()
            local r = raw .. "tail"
            local _, req = parse(r)
            for _, h in ipairs(req.headers) do
                assert.equal(h[2], r:sub(h.value_at, h.value_at + #h[2] - 1))
            end
        end)

        it("gives the same answer when asked twice", function()
            assert.same(pack(http.parse(raw)), pack(http.parse(raw)))
        end)
    end)

    describe("reads the request-target", function()
        local cases = {
            { "/", "/", nil },
            { "/?", "/", "" },
            { "/a/b?x=1&y=2", "/a/b", "x=1&y=2" },
            { "/a%2Fb?q=%3F", "/a%2Fb", "q=%3F" },
            { "//double", "//double", nil },
            { "/a?b?c", "/a", "b?c" },
            { "http://example.com/chat?x=1", "/chat", "x=1" },
            { "HTTPS://example.com:8443/a", "/a", nil },
            { "ws://example.com", "/", nil },
            { "http://example.com?x=1", "/", "x=1" },
        }
        for _, c in ipairs(cases) do
            it(("as path %q and query %s from %q"):format(c[2], tostring(c[3]), c[1]), function()
                local _, req = parse(head({ "GET " .. c[1] .. " HTTP/1.1" }))
                assert.equal(c[1], req.target)
                assert.equal(c[2], req.path)
                assert.equal(c[3], req.query)
            end)
        end

        it("accepts * only for OPTIONS", function()
            local _, req = parse(head({ "OPTIONS * HTTP/1.1" }))
            assert.equal("*", req.path)
            refuses(head({ "GET * HTTP/1.1" }), 400)
            refuses(head({ "options * HTTP/1.1" }), 400)
        end)

        local bad = {
            "chat", "*x", "http:/x", "http://", "http:///x", "1http://h/", "://h/",
            "/a#frag", "http://h#f", "/a\x7fb", "/caf\xc3\xa9", "/a\x01",
        }
        for _, t in ipairs(bad) do
            it(("answers 400 to the target %q"):format(t), function()
                refuses(head({ "GET " .. t .. " HTTP/1.1" }), 400)
            end)
        end
    end)

    describe("answers 400 to a malformed request line", function()
        local cases = {
            { "with two spaces after the method", "GET  / HTTP/1.1" },
            { "with two spaces before the version", "GET /  HTTP/1.1" },
            { "with a trailing space", "GET / HTTP/1.1 " },
            { "with a tab as separator", "GET\t/ HTTP/1.1" },
            { "with no version", "GET /" },
            { "with no target", "GET HTTP/1.1" },
            { "with no method", " / HTTP/1.1" },
            { "with a lower-case protocol name", "GET / http/1.1" },
            { "with a two-digit minor version", "GET / HTTP/1.10" },
            { "with no minor version", "GET / HTTP/1" },
            { "with a letter for a version", "GET / HTTP/x.1" },
            { "with a bad byte in the method", "G(T / HTTP/1.1" },
            { "with a NUL in the method", "G\0T / HTTP/1.1" },
            { "with a CR in the middle", "GET /\r HTTP/1.1" },
            { "after an empty line", "\r\nGET / HTTP/1.1" },
            { "that is empty", "" },
        }
        for _, c in ipairs(cases) do
            it(c[1], function()
                refuses(head({ c[2] }), 400)
            end)
        end
    end)

    describe("on the HTTP version", function()
        it("parses HTTP/1.0 with minor_version 0", function()
            local _, req = parse(head({ "GET / HTTP/1.0" }))
            assert.equal(0, req.minor_version)
        end)

        it("parses a later HTTP/1.x minor version", function()
            local _, req = parse(head({ "GET / HTTP/1.2" }))
            assert.equal(2, req.minor_version)
        end)

        for _, v in ipairs({ "HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.1" }) do
            it("answers 505 to " .. v, function()
                refuses(head({ "GET / " .. v, "Host: a" }), 505)
            end)
        end

        it("answers 505 to the HTTP/2 connection preface", function()
            refuses("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505)
        end)
    end)

    describe("on header fields", function()
        it("keeps names as sent and trims spaces and tabs around values", function()
            local _, req = parse(head({ "GET / HTTP/1.1", "hOsT:example.com", "X-A: \t a  b \t ",
                "X-Empty:", "X-Blank:   " }))
            assert.same({ "hOsT", "example.com" }, { req.headers[1][1], req.headers[1][2] })
            assert.equal("a  b", req.headers[2][2])
            assert.equal("", req.headers[3][2])
            assert.equal("", req.headers[4][2])
        end)

        it("keeps repeated headers as separate entries, in order", function()
            local _, req = parse(head({ "GET / HTTP/1.1", "X-A: 1", "Host: h", "x-a: 2", "X-A: 3" }))
            local values = {}
            for _, h in ipairs(req.headers) do
                if h[1]:lower() == "x-a" then
                    values[#values + 1] = h[2]
                end
            end
            assert.same({ "1", "2", "3" }, values)
        end)

        it("finds headers by name whatever their case", function()
            local raw = head({ "GET / HTTP/1.1", "X-A: 1", "x-a: 2" })
            assert.equal("1", http.find_header(raw, "x-A"))
            assert.is_nil(http.find_header(raw, "X-B"))
        end)

        it("finds a token in any header of that name, whatever its case", function()
            local raw = head({ "GET / HTTP/1.1", "Connection: keep-alive", "connection: foo ,UPGRADE" })
            assert.is_true(http.has_token(raw, "CONNECTION", "upgrade"))
            assert.is_true(http.has_token(raw, "connection", "Keep-Alive"))
            assert.is_false(http.has_token(raw, "connection", "upgrad"))
            assert.is_false(http.has_token(raw, "connection", "foo ,UPGRADE"))
            assert.is_false(http.has_token(raw, "upgrade", "upgrade"))
        end)

        it("accepts bytes above 0x7F in a value", function()
            local _, req = parse(head({ "GET / HTTP/1.1", "X-Name: caf\xc3\xa9" }))
            assert.equal("caf\xc3\xa9", req.headers[1][2])
        end)

        local bad = {
            { "a line without a colon", "X-A" },
            { "a space before the colon", "X-A : 1" },
            { "a tab before the colon", "X-A\t: 1" },
            { "an empty name", ": 1" },
            { "a bad byte in the name", "X(A): 1" },
            { "a NUL in the name", "X\0A: 1" },
            { "a NUL in the value", "X-A: a\0b" },
            { "a control character in the value", "X-A: a\1b" },
            { "a DEL in the value", "X-A: a\127b" },
            { "a CR without LF in the value", "X-A: a\rb" },
            { "a CR at the end of the value", "X-A: a\r" },
            { "a folded line (obs-fold) with a space", "X-A: a\r\n b" },
            { "a folded line (obs-fold) with a tab", "X-A: a\r\n\tb" },
        }
        for _, c in ipairs(bad) do
            it("answers 400 to " .. c[1], function()
                refuses(head({ "GET / HTTP/1.1", "Host: h", c[2] }), 400)
            end)
        end

        it("answers 400 to whitespace before the first header", function()
            refuses(head({ "GET / HTTP/1.1", " Host: h" }), 400)
        end)
    end)

    describe("on line endings", function()
        it("requires CRLF and answers 400 to a bare LF", function()
            refuses("GET / HTTP/1.1\n\n", 400)
            refuses("GET / HTTP/1.1\r\nHost: h\n\r\n", 400)
            refuses("GET / HTTP/1.1\r\n\n", 400)
            refuses("\nGET / HTTP/1.1\r\n\r\n", 400)
        end)

        it("answers 400 to a bare LF as soon as it arrives", function()
            local r, took = feed_bytes("GET / HTTP/1.1\nHost: a very long header that never ends")
            assert.same(pack("error", 400), r)
            assert.equal(15, took)
        end)
    end)

    describe("on the header block size", function()
        it("parses a head of exactly 8 KiB", function()
            local raw = head_of_size(8192)
            assert.equal(8192, #raw)
            assert.equal(8192, (parse(raw)))
        end)

        it("answers 431 when the header block passes 8 KiB", function()
            refuses(head_of_size(8193), 431)
        end)

        it("answers 431 as soon as 8 KiB have arrived without the end of the head", function()
            local raw = "GET / HTTP/1.1\r\nX-Pad: " .. ("a"):rep(20000)
            local r, took = feed_bytes(raw)
            assert.same(pack("error", 431), r)
            assert.equal(8192, took)
            assert.equal("need_more", (http.parse(raw:sub(1, 8191))))
        end)

        it("honours a configured limit at exactly N and N+1 bytes", function()
            local limits = { max_header_bytes = 64 }
            assert.equal(64, (parse(head_of_size(64), limits)))
            refuses(head_of_size(65), 431, limits)
            assert.equal(100, (parse(head_of_size(100), { max_header_bytes = 100 })))
        end)

        it("uses the default limit when the limit is 0", function()
            assert.equal(8192, (http.parse(head_of_size(8192), 0, { max_header_bytes = 0 })))
            assert.same(pack("error", 431), pack(http.parse(head_of_size(8193), 0, { max_header_bytes = 0 })))
        end)
    end)

    describe("on Host (RFC 9112 3.2)", function()
        it("answers 400 to an HTTP/1.1 request without Host", function()
            refuses(raw_head({ "GET / HTTP/1.1" }), 400)
            refuses(raw_head({ "GET /a.txt HTTP/1.1", "X-Host: x", "Hostname: y" }), 400)
            refuses(raw_head({ "POST /u HTTP/1.1", "Content-Length: 0" }), 400)
        end)

        it("answers 400 to two Host fields, in any version and any case", function()
            refuses(raw_head({ "GET / HTTP/1.1", "Host: a", "Host: a" }), 400)
            refuses(raw_head({ "GET / HTTP/1.1", "Host: a", "X-A: 1", "host: b" }), 400)
            refuses(raw_head({ "GET / HTTP/1.0", "HOST: a", "Host: b" }), 400)
        end)

        it("takes one Host (empty too), and none in HTTP/1.0", function()
            for _, r in ipairs({ raw_head({ "GET / HTTP/1.1", "Host: a" }),
                                 raw_head({ "GET / HTTP/1.1", "hOsT: a:80" }),
                                 raw_head({ "GET / HTTP/1.1", "Host:" }),
                                 raw_head({ "GET / HTTP/1.0" }) }) do
                assert.equal(#r, (parse(r)), r)
            end
        end)

        it("leaves a WebSocket upgrade's Host to the handshake, which refuses it with a reason", function()
            for _, r in ipairs({ raw_head({ "GET /chat HTTP/1.1", "Upgrade: websocket" }),
                                 raw_head({ "GET /chat HTTP/1.1", "Sec-WebSocket-Key: x" }),
                                 raw_head({ "GET /chat HTTP/1.1", "Host: a", "Host: b",
                                            "Upgrade: WebSocket" }) }) do
                assert.equal(#r, (parse(r)), r)
                local st, reason = http.validate(r)
                assert.equal(400, st)
                assert.equal("Host header missing or repeated", reason)
            end
            -- an Upgrade to something else is a plain request
            refuses(raw_head({ "GET / HTTP/1.1", "Upgrade: h2c" }), 400)
        end)
    end)

    describe("on the number of headers", function()
        it("parses 100 headers", function()
            local _, req = parse(with_headers(100))
            assert.equal(100, #req.headers)
            assert.equal("X-H99", req.headers[100][1])
        end)

        it("answers 431 to more than 100 headers", function()
            refuses(with_headers(101), 431)
        end)

        it("honours a configured limit at exactly N and N+1 headers", function()
            assert.equal(3, #select(2, parse(with_headers(3), { max_headers = 3 })).headers)
            refuses(with_headers(4), 431, { max_headers = 3 })
        end)

        it("never writes past a header array smaller than the limit", function()
            local limits = { max_headers = 10, headers_cap = 2 }
            assert.equal(2, #select(2, parse(with_headers(2), limits)).headers)
            refuses(with_headers(3), 431, limits)
        end)
    end)

    describe("on Content-Length", function()
        local ok = { { "0", 0 }, { "42", 42 }, { "007", 7 }, { "999999999999999999", 999999999999999999 } }
        for _, c in ipairs(ok) do
            it("reads " .. c[1], function()
                local _, req = parse(head({ "POST /u HTTP/1.1", "Content-Length: " .. c[1] }))
                assert.equal(c[2], req.content_length)
            end)
        end

        it("accepts the same value repeated", function()
            local _, req = parse(head({ "POST /u HTTP/1.1", "Content-Length: 5", "content-length: 5" }))
            assert.equal(5, req.content_length)
        end)

        it("answers 400 to conflicting values", function()
            refuses(head({ "POST /u HTTP/1.1", "Content-Length: 5", "Content-Length: 6" }), 400)
        end)

        for _, v in ipairs({ "", "-1", "+5", "5.0", "0x10", "5, 5", "5 5", "abc", "9999999999999999999" }) do
            it(("answers 400 to the value %q"):format(v), function()
                refuses(head({ "POST /u HTTP/1.1", "Content-Length: " .. v }), 400)
            end)
        end
    end)

    describe("on Transfer-Encoding", function()
        for _, v in ipairs({ "chunked", "gzip, chunked", "identity", "" }) do
            it(("answers 501 to %q"):format(v), function()
                refuses(head({ "POST /u HTTP/1.1", "Host: h", "Transfer-Encoding: " .. v }), 501)
            end)
        end
    end)

    describe("decides whether the connection persists", function()
        local cases = {
            { "1.1", nil, true },
            { "1.1", "close", false },
            { "1.1", "Upgrade, Close", false },
            { "1.1", "keep-alive", true },
            { "1.1", "closed", true },
            { "1.0", nil, false },
            { "1.0", "Keep-Alive", true },
            { "1.0", "keep-alive, close", false },
            { "1.0", "upgrade", false },
        }
        for _, c in ipairs(cases) do
            local what = c[2] and ("Connection: " .. c[2]) or "no Connection header"
            it(("as %s for HTTP/%s with %s"):format(c[3] and "kept" or "closed", c[1], what), function()
                local lines = { "GET / HTTP/" .. c[1] }
                if c[2] then
                    lines[2] = "Connection: " .. c[2]
                end
                local _, req = parse(head(lines))
                assert.equal(c[3], req.keep_alive)
            end)
        end

        it("across several Connection headers", function()
            local _, req = parse(head({ "GET / HTTP/1.1", "Connection: upgrade", "Connection: close" }))
            assert.is_false(req.keep_alive)
        end)
    end)

    it("rescans the whole buffer when last_len is past its end", function()
        local raw = head({ "GET / HTTP/1.1" })
        assert.equal(#raw, (http.parse(raw, #raw + 10)))
    end)
end)

describe("http_percent_decode", function()
    local cases = {
        { "", false, "" },
        { "abc", false, "abc" },
        { "%41%62c", false, "Abc" },
        { "%e2%82%AC", false, "\xe2\x82\xac" },
        { "a+b", false, "a+b" },
        { "a+b", true, "a b" },
        { "%2B", true, "+" },
        { "%00", false, "\0" },
        { "100%25", false, "100%" },
        { "%", false, nil },
        { "%2", false, nil },
        { "a%2", false, nil },
        { "%zz", false, nil },
        { "%g0", false, nil },
        { "%0g", false, nil },
    }
    for _, c in ipairs(cases) do
        it(("decodes %q%s to %q"):format(c[1], c[2] and " (query)" or "", tostring(c[3])), function()
            assert.equal(c[3], http.percent_decode(c[1], c[2]))
        end)
    end
end)

describe("http_query_each", function()
    local cases = {
        { "", {} },
        { "a=1", { { "a", "1" } } },
        { "a=1&b=2", { { "a", "1" }, { "b", "2" } } },
        { "a&b=", { { "a" }, { "b", "" } } },
        { "a=1&&b=2&", { { "a", "1" }, { "b", "2" } } },
        { "=x", { { "", "x" } } },
        { "a=b=c", { { "a", "b=c" } } },
        { "k=1&k=2", { { "k", "1" }, { "k", "2" } } },
        { "a%20b=c+d", { { "a%20b", "c+d" } } },
    }
    for _, c in ipairs(cases) do
        it(("splits %q into raw pairs"):format(c[1]), function()
            assert.same(c[2], http.query(c[1]))
        end)
    end
end)

describe("http_format_head", function()
    local accept = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    local cases = {
        {
            "the 101 answer to an upgrade",
            { 101, "Upgrade: websocket\r\nConnection: Upgrade\r\n" .. accept, -1, true },
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                .. accept .. "\r\n",
        },
        {
            "a 404 that closes",
            { 404, nil, 9, false },
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n",
        },
        { "an empty 200", { 200, nil, 0, true }, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" },
        {
            "a 426 naming the version",
            { 426, "Sec-WebSocket-Version: 13\r\n", 0, false },
            "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n"
                .. "Connection: close\r\n\r\n",
        },
        {
            "a 431",
            { 431, "", -1, false },
            "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n",
        },
        { "an unknown status", { 599, nil, -1, true }, "HTTP/1.1 599 Unknown\r\n\r\n" },
        {
            "a large Content-Length",
            { 200, nil, 9007199254740993, true },
            "HTTP/1.1 200 OK\r\nContent-Length: 9007199254740993\r\n\r\n",
        },
    }
    for _, c in ipairs(cases) do
        it("writes " .. c[1] .. " byte for byte", function()
            local a = c[2]
            assert.equal(c[3], http.format_head(a[1], a[2], a[3], a[4]))
        end)

        it("writes " .. c[1] .. " into exactly its size, and not one byte less", function()
            local a = c[2]
            assert.equal(c[3], http.format_head(a[1], a[2], a[3], a[4], #c[3]))
            assert.is_nil(http.format_head(a[1], a[2], a[3], a[4], #c[3] - 1))
        end)
    end

    it("refuses a status outside 100..999", function()
        assert.is_nil(http.format_head(99, nil, -1, true))
        assert.is_nil(http.format_head(1000, nil, -1, true))
        assert.is_nil(http.format_head(200, nil, -1, true, 0))
    end)

    it("names the statuses the server answers with", function()
        local want = {
            [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found",
            [405] = "Method Not Allowed", [413] = "Content Too Large", [426] = "Upgrade Required",
            [431] = "Request Header Fields Too Large", [501] = "Not Implemented",
            [505] = "HTTP Version Not Supported", [101] = "Switching Protocols", [42] = "Unknown",
        }
        for code, text in pairs(want) do
            assert.equal(text, http.status_text(code))
        end
    end)
end)
