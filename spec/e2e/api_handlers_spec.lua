-- Every handler and every ws field and method of the route contract, on the
-- real server (spec/apps/api), driven by a raw client and by Python websockets.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local cjson = require "cjson"
local proc = require "sbt_proc"


-- Run a Python websockets client; it prints one JSON line.
local python = server.python

local function cmd(c, t)
    assert(c:send(wsframe.text(cjson.encode(t))))
    local f = assert(c:recv_frame())
    assert.equal(1, f.opcode)
    return cjson.decode(f.payload)
end

-- The close frame's code and reason, without the frames seen before it.
local function rc(c)
    local code, reason = c:recv_close()
    return { code, reason }
end

local http = rawws.http

-- Count "closed id=ID code=... reason=..." lines in the server's log.
local function closes(s, id)
    id = math.tointeger(id)
    local n, last = 0, nil
    for code, reason in s:log():gmatch("closed id=" .. id .. " code=(%d+) reason=([^\n]*)") do
        n = n + 1
        last = { tonumber(code), reason }
    end
    return n, last
end

local function wait_close(s, id)
    id = math.tointeger(id)
    s:wait_log("closed id=" .. id .. " ")
    return closes(s, id)
end

describe("handlers", function()
    local s
    setup(function()
        s = server.start{ app = "spec/apps/api", args = { "--out-high", "64k", "--out-low", "16k",
            "--close-timeout", "1" } }
    end)
    teardown(function() if s then s:stop() end end)

    describe("upgrade", function()
        it("accepts and adds the response headers it returns, with the request it saw", function()
            local c = rawws.connect(s.port)
            c:send(rawws.request("/upgrade?x=1&x=2", { "Cookie: a=b", "X-Custom-Thing: Yes" }))
            local st, h, head = c:http_head()
            assert.equal(101, st)
            assert.equal(rawws.ACCEPT, h["sec-websocket-accept"])
            assert.truthy(head:find("\r\nSet-Cookie: session=abc123; HttpOnly\r\n", 1, true))
            assert.falsy(h["sec-websocket-protocol"])
            local req = cjson.decode(h["x-req"])
            assert.equal("GET", req.method)
            assert.equal("/upgrade", req.path)
            assert.same({ x = { "1", "2" } }, req.query)
            assert.equal("a=b", req.headers.cookie)
            assert.equal("Yes", req.headers["x-custom-thing"])
            assert.equal("websocket", req.headers.upgrade)
            local ip, port = c.sock:getsockname()
            assert.equal(ip .. ":" .. port, req.remote)
            assert.same({}, req.protocols)
            assert.equal("protocol=nil", c:recv_frame().payload)
            c:close()
        end)

        it("refuses with the status and body it returns", function()
            local st, h, body = http(s.port, rawws.request("/upgrade?deny=401&body=no+entry"))
            assert.equal(401, st)
            assert.equal("no entry", body)
            assert.equal("text/plain; charset=utf-8", h["content-type"])
            local _
            st, _, body = http(s.port, rawws.request("/upgrade?deny=403"))
            assert.equal(403, st)
            assert.equal("403 Forbidden\n", body)
        end)

        it("chooses a subprotocol among the client's offers (Python websockets subprotocols=)", function()
            local r = python([[
async def main():
    url = "ws://127.0.0.1:%s/upgrade" % sys.argv[1]
    out = {}
    for name, offers in [("both", ["chat.v1", "chat.v2"]), ("v1", ["x", "chat.v1"]), ("none", ["x"])]:
        async with websockets.connect(url, subprotocols=offers) as ws:
            out[name] = [ws.subprotocol, await ws.recv()]
    print(json.dumps(out))
asyncio.run(main())
]], s.port)
            assert.same({ "chat.v2", "protocol=chat.v2" }, r.both)
            assert.same({ "chat.v1", "protocol=chat.v1" }, r.v1)
            assert.same({ cjson.null, "protocol=nil" }, r.none)
        end)

        it("sends the chosen protocol byte-exact, and req.protocols lists the offers in order", function()
            local c = rawws.connect(s.port)
            c:send(rawws.request("/upgrade",
                { "Sec-WebSocket-Protocol: a, chat.v1", "Sec-WebSocket-Protocol: chat.v2" }))
            local st, h, head = c:http_head()
            assert.equal(101, st)
            assert.truthy(head:find("\r\nSec-WebSocket-Protocol: chat.v2\r\n", 1, true))
            assert.same({ "a", "chat.v1", "chat.v2" }, cjson.decode(h["x-req"]).protocols)
            c:close()
        end)

        it("accepts without a subprotocol when the route has no upgrade handler", function()
            local c = rawws.connect(s.port)
            c:send(rawws.request("/probe", { "Sec-WebSocket-Protocol: chat.v1" }))
            local st, h = c:http_head()
            assert.equal(101, st)
            assert.falsy(h["sec-websocket-protocol"])
            local f = cmd(c, { op = "fields" })
            assert.equal(cjson.null, f.protocol)
            c:close()
        end)
    end)

    describe("open, message, ws fields", function()
        it("exposes id, path, query, lower-case headers, remote and protocol", function()
            local a = rawws.open(s.port, "/probe?k=v", { "X-Mixed-Case: Hi" })
            local b = rawws.open(s.port, "/probe")
            local fa, fb = cmd(a, { op = "fields" }), cmd(b, { op = "fields" })
            assert.is_number(fa.id)
            assert.are_not.equal(fa.id, fb.id)
            assert.equal("/probe", fa.path)
            assert.same({ k = "v" }, fa.query)
            assert.equal("Hi", fa.headers["x-mixed-case"])
            assert.falsy(fa.headers["X-Mixed-Case"])
            assert.equal("13", fa.headers["sec-websocket-version"])
            -- not kept past the handshake (documented): the key is of no use to a script
            assert.is_nil(fa.headers["sec-websocket-key"])
            -- the usual handshake fields are kept as bits and shown as sent
            assert.equal("websocket", fa.headers.upgrade)
            assert.equal("Upgrade", fa.headers.connection)
            -- unusual ones are kept as they came
            local odd = rawws.open(s.port, "/probe", { "Connection: keep-alive" })
            local fo = cmd(odd, { op = "fields" })
            assert.equal("Upgrade, keep-alive", fo.headers.connection)
            assert.equal("websocket", fo.headers.upgrade)
            odd:close()
            local ip, port = a.sock:getsockname()
            assert.equal(ip .. ":" .. port, fa.remote)
            a:close()
            b:close()
        end)

        it("passes text and binary with the binary flag", function()
            local c = rawws.open(s.port, "/probe")
            assert.equal("text:héllo", c:echo("héllo"))
            c:send(wsframe.binary("\0\1\2\255"))
            local f = c:recv_frame()
            assert.equal(2, f.opcode)
            assert.equal("\0\1\2\255", f.payload)
            c:close()
        end)

        it("keeps ws.data across events and per connection", function()
            local a = rawws.open(s.port, "/probe")
            local b = rawws.open(s.port, "/probe")
            cmd(a, { op = "set", k = "nick", v = "ann" })
            assert.equal("ann", cmd(a, { op = "get", k = "nick" }).ret)
            assert.equal(cjson.null, cmd(b, { op = "get", k = "nick" }).ret)
            a:close()
            b:close()
        end)
    end)

    describe("ws methods", function()
        it("send: text, binary, and invalid UTF-8 text raises naming the function", function()
            local c = rawws.open(s.port, "/probe")
            c:send(wsframe.text('{"op":"send","msg":"plain"}'))
            assert.equal("plain", c:recv_frame().payload)
            assert.is_true(cjson.decode(c:recv_frame().payload).ret)
            c:send(wsframe.text('{"op":"send","msg":"bin","binary":true}'))
            local f = c:recv_frame()
            assert.equal(2, f.opcode)
            assert.equal("bin", f.payload)
            assert.is_true(cjson.decode(c:recv_frame().payload).ret)
            local r = cmd(c, { op = "badsend" })
            assert.is_false(r.ok)
            assert.matches("^bad argument #1 to 'send' %(text is not valid UTF%-8", r.err)
            c:close()
        end)

        it("close: sends the code and reason, rejects bad codes and long reasons", function()
            local c = rawws.open(s.port, "/probe")
            for _, bad in ipairs({ 1005, 1006, 999, 1011, 2999, 5000 }) do
                local r = cmd(c, { op = "close", code = bad })
                assert.is_false(r.ok)
                assert.matches("bad argument #1 to 'close' %(close code must be 1000 or 3000%-4999%)", r.err)
            end
            local r = cmd(c, { op = "close", code = 4000, reason = string.rep("r", 124) })
            assert.matches("bad argument #2 to 'close' %(reason longer than 123 bytes%)", r.err)
            local id = cmd(c, { op = "fields" }).id
            c:send(wsframe.text(cjson.encode({ op = "close", code = 4321, reason = "done" })))
            local f = c:recv_frame()
            assert.equal(8, f.opcode)
            assert.equal("\x10\xe1done", f.payload)
            c:send(wsframe.close(4321, "done"))
            assert.is_true(c:eof(5))
            c:close()
            assert.same({ 1, { 4321, "done" } }, { wait_close(s, id) })
        end)

        it("ping sends a ping frame with the data", function()
            local c = rawws.open(s.port, "/probe")
            c:send(wsframe.text('{"op":"ping","data":"are you there"}'))
            local f = c:recv_frame()
            assert.equal(9, f.opcode)
            assert.equal("are you there", f.payload)
            assert.is_true(cjson.decode(c:recv_frame().payload).ret)
            c:close()
        end)

        it("buffered reports queued bytes; send returns false past --out-high; drain fires below --out-low", function()
            local c = rawws.open(s.port, "/probe")
            assert.equal(0, cmd(c, { op = "buffered" }).ret)
            c:send(wsframe.text('{"op":"flood","size":4096,"max":1000}'))
            -- all of it is queued in the one handler call: 16 frames of 4100 bytes pass 64 KiB
            local got, drained, res = 0, nil, nil
            while not (drained and res) do
                local f = assert(c:recv_frame())
                if f.payload:match("^x") then
                    got = got + 1
                elseif f.payload:match("^drained") then
                    drained = f.payload
                else
                    res = cjson.decode(f.payload)
                end
            end
            assert.equal(16, res.ret) -- the 16th send returned false (queued anyway)
            assert.is_true(res.buffered > 64 * 1024)
            assert.equal(16, got)
            assert.matches("^drained %d+$", drained)
            assert.is_true(tonumber(drained:match("%d+")) < 16 * 1024)
            c:close()
        end)
    end)

    describe("request", function()
        it("answers plain HTTP with the status, headers and body it returns", function()
            local st, h, body = http(s.port, "GET /http?status=201&a=1 HTTP/1.1\r\nHost: x\r\nX-Test: T\r\n\r\n")
            assert.equal(201, st)
            assert.equal("GET", h["x-method"])
            assert.equal("a=b; Path=/", h["set-cookie"])
            local r = cjson.decode(body)
            assert.equal("GET", r.method)
            assert.equal("/http", r.path)
            assert.equal("T", r.headers["x-test"])
            assert.equal("", r.body) -- no body: an empty string
        end)

        it("gets the method and the body of a POST", function()
            local st, _, body = http(s.port, "POST /http HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world")
            assert.equal(200, st)
            local r = cjson.decode(body)
            assert.equal("POST", r.method)
            assert.equal("hello=world", r.body)
            st, _, body = http(s.port, "DELETE /http HTTP/1.1\r\nHost: x\r\n\r\n")
            assert.equal(200, st)
            assert.equal("DELETE", cjson.decode(body).method)
        end)
    end)

    describe("close", function()
        local function open_id()
            local c = rawws.open(s.port, "/probe")
            return c, cmd(c, { op = "fields" }).id
        end

        it("runs once with the peer's code and reason on a clean close", function()
            local c, id = open_id()
            c:send(wsframe.close(1000, "see you"))
            assert.same({ 1000, "" }, rc(c))
            c:close()
            assert.same({ 1, { 1000, "see you" } }, { wait_close(s, id) })
        end)

        it("runs once with 1005 when the close frame has no code", function()
            local c, id = open_id()
            c:send(wsframe.close())
            c:recv_close()
            c:close()
            assert.same({ 1, { 1005, "" } }, { wait_close(s, id) })
        end)

        it("runs once with 1002 after a protocol error", function()
            local c, id = open_id()
            c:send(wsframe.text("unmasked", { unmasked = true }))
            assert.equal(1002, (c:recv_close()))
            c:close()
            local n, last = wait_close(s, id)
            assert.equal(1, n)
            assert.equal(1002, last[1])
        end)

        it("runs once with 1007 after invalid UTF-8 from the peer", function()
            local c, id = open_id()
            c:send(wsframe.text("\xff"))
            assert.equal(1007, (c:recv_close()))
            c:close()
            local n, last = wait_close(s, id)
            assert.equal(1, n)
            assert.equal(1007, last[1])
        end)

        it("runs once with 1006 when the peer vanishes or resets", function()
            local c, id = open_id()
            c:close() -- FIN without a close frame
            assert.same({ 1, { 1006, "" } }, { wait_close(s, id) })
            local d, id2 = open_id()
            d.sock:setoption("linger", { on = true, timeout = 0 })
            d:close() -- RST
            assert.same({ 1, { 1006, "" } }, { wait_close(s, id2) })
        end)

        it("runs once when the script closes, after the peer answers or not", function()
            local c, id = open_id()
            c:send(wsframe.text('{"op":"close","code":3000,"reason":"kick"}'))
            assert.same({ 3000, "kick" }, rc(c))
            c:close() -- no close frame back: the close-timeout ends it
            local n, last = wait_close(s, id)
            assert.equal(1, n)
            assert.equal(3000, last[1])
        end)

        it("makes a ws used after its close a clear Lua error naming the function", function()
            local c, id = open_id()
            c:send(wsframe.text('{"op":"stale"}'))
            assert.same({ 4001, "bye" }, rc(c))
            c:send(wsframe.close(4001))
            c:close()
            wait_close(s, id)
            s:wait_log("stale ws: [^\n]*bad argument #1 to 'send' %(ws " .. math.tointeger(id) .. " is closed%)")
            -- the stats route sees every close counted exactly once
            local _, _, body = http(s.port, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            for k, v in pairs(cjson.decode(body).closes) do
                assert.equal(1, v, "close count of ws " .. k)
            end
        end)
    end)
end)

describe("close at server shutdown", function()
    it("runs once with 1001 for every open connection on SIGTERM", function()
        local s = server.start{ app = "spec/apps/api", args = { "--close-timeout", "1", "--drain-timeout", "1" } }
        local ok, err = pcall(function()
            local a = rawws.open(s.port, "/probe")
            local b = rawws.open(s.port, "/probe")
            local ida = cmd(a, { op = "fields" }).id
            local idb = cmd(b, { op = "fields" }).id
            s:signal(proc.SIGTERM)
            assert.same({ 1001, "server shutting down" }, rc(a))
            a:send(wsframe.close(1001))
            -- b never answers: dropped when the close-timeout passes
            assert.same({ 1001, "server shutting down" }, rc(b))
            assert.equal("exited", (s:wait_exit(10)))
            assert.equal(0, s.exit_code)
            for _, id in ipairs({ ida, idb }) do
                local n, last = closes(s, id)
                assert.equal(1, n)
                assert.equal(1001, last[1])
            end
            a:close()
            b:close()
        end)
        s:stop()
        assert(ok, err)
    end)
end)

