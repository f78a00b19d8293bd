-- permessage-deflate (RFC 7692) end to end: negotiation of every parameter
-- with a raw client, the RFC's byte-exact "Hello", sizes, fragments, context
-- takeover, the limits and the protocol errors; then Python websockets, which
-- compresses by default, and compress-once fan-out to mixed subscribers.
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local zlib = require "sbt_deflate"

local PYTHON = "/usr/bin/python3"

local write = server.write_file

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x ", c:byte()) end))
end

-- An app with /echo (answers "ext?" with ws.extensions), /plain (compression
-- off for the route) and /room (every message published to every member).
local function make_app()
    local dir = server.tmpname("-app")
    assert(os.execute("mkdir -p " .. dir))
    write(dir .. "/echo.lua", [[
local echo = {}
function echo.message(ws, msg, binary)
    if msg == "ext?" then ws:send(tostring(ws.extensions)) return end
    ws:send(msg, binary)
end
return echo
]])
    write(dir .. "/plain.lua", [[
return { compression = false, message = function(ws, msg) ws:send(msg) end }
]])
    write(dir .. "/room.lua", [[
local sb = require "switchboard"
return {
    open = function(ws) ws:subscribe("room") end,
    message = function(ws, msg) sb.publish("room", msg) end,
}
]])
    return dir
end

local function ext_request(port, path, offers)
    local extra = {}
    for _, o in ipairs(offers) do extra[#extra + 1] = "Sec-WebSocket-Extensions: " .. o end
    local c = rawws.connect(port)
    c:send(rawws.request(path or "/echo", extra))
    local status, headers, head = c:http_head()
    assert.are.equal(101, status, head)
    c.headers = headers
    return c, headers["sec-websocket-extensions"]
end

describe("permessage-deflate", function()
    local s, app
    setup(function()
        app = make_app()
        s = server.start{ app = app, args = { "--deflate-min-size", "0", "--max-message", "8m",
                                              "--no-watch" } }
    end)
    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf " .. app)
    end)

    describe("negotiation (raw client)", function()
        local cases = {
            { { "permessage-deflate" }, "permessage-deflate" },
            { { "permessage-deflate; client_max_window_bits" }, "permessage-deflate" },
            { { "permessage-deflate; client_max_window_bits=10" },
              "permessage-deflate; client_max_window_bits=10" },
            { { 'permessage-deflate; client_max_window_bits="10"' },
              "permessage-deflate; client_max_window_bits=10" },
            { { "permessage-deflate; server_max_window_bits=10" },
              "permessage-deflate; server_max_window_bits=10" },
            { { "permessage-deflate; server_max_window_bits=8" },
              "permessage-deflate; server_max_window_bits=8" },
            { { "permessage-deflate; server_no_context_takeover" },
              "permessage-deflate; server_no_context_takeover" },
            { { "permessage-deflate; client_no_context_takeover" },
              "permessage-deflate; client_no_context_takeover" },
            { { "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                .. "server_max_window_bits=9; client_max_window_bits=9" },
              "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                .. "server_max_window_bits=9; client_max_window_bits=9" },
            -- several offers: the first acceptable one, across header lines too
            { { "permessage-deflate; foo, permessage-deflate; server_max_window_bits=12" },
              "permessage-deflate; server_max_window_bits=12" },
            { { "x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=16, "
                .. "permessage-deflate; client_no_context_takeover" },
              "permessage-deflate; client_no_context_takeover" },
            -- none acceptable: no extension header at all
            { { "permessage-deflate; server_max_window_bits" }, nil },
            { { "permessage-deflate; server_max_window_bits=16" }, nil },
            { { "permessage-deflate; client_max_window_bits=7" }, nil },
            { { "permessage-deflate; server_no_context_takeover; server_no_context_takeover" }, nil },
            { { "x-webkit-deflate-frame" }, nil },
        }
        for _, case in ipairs(cases) do
            it("answers " .. table.concat(case[1], " | ") .. " with " .. tostring(case[2]), function()
                local c, ext = ext_request(s.port, "/echo", case[1])
                assert.are.equal(case[2], ext)
                -- Lua sees what was agreed (the answer is compressed when it was)
                c:send(wsframe.text("ext?"))
                local f = assert(c:recv_frame())
                assert.are.equal(case[2] and 4 or 0, f.rsv)
                local lua_ext = case[2] and zlib.ref(15):feed(f.payload) or f.payload
                assert.are.equal(tostring(case[2]), lua_ext)
                c:close()
            end)
        end

        it("does not negotiate on a route that returns compression = false", function()
            local c, ext = ext_request(s.port, "/plain", { "permessage-deflate" })
            assert.is_nil(ext)
            c:send(wsframe.text("\242\72\205\201\201\7\0", { rsv1 = true }))
            assert.are.equal(1002, (c:recv_close()))
            c:close()
        end)
    end)

    describe("messages (raw client)", function()
        local function open(offer)
            local c, ext = ext_request(s.port, "/echo", { offer or "permessage-deflate" })
            assert.is_not_nil(ext)
            c.ref = zlib.ref(15)
            return c
        end
        local function recv_msg(c)
            local f = assert(c:recv_frame())
            assert.are.equal(4, f.rsv, "RSV1 on a compressed answer")
            assert.is_true(f.fin)
            return assert(c.ref:feed(f.payload)), f
        end

        it("inflates RFC 7692 §7.2.3.1's \"Hello\" and answers with the same bytes", function()
            local c = open()
            local frame = wsframe.frame(1, "\xf2\x48\xcd\xc9\xc9\x07\x00", { rsv1 = true })
            assert.are.equal("c1 87 ", hex(frame:sub(1, 2)))
            c:send(frame)
            local f = assert(c:recv_frame())
            assert.are.equal("f2 48 cd c9 c9 07 00 ", hex(f.payload))
            assert.are.same({ fin = true, rsv = 4, opcode = 1 }, { fin = f.fin, rsv = f.rsv, opcode = f.opcode })
            assert.are.equal("Hello", c.ref:feed(f.payload))
            c:close()
        end)

        it("echoes compressed messages of 0 B, 1 B, 64 KiB and 4 MiB", function()
            local c = open()
            local big = {}
            for i = 1, 4 * 1024 * 1024 / 16 do big[i] = string.format("%015d\n", i) end
            for _, msg in ipairs({ "", "x", ("0123456789abcdef"):rep(4096), table.concat(big) }) do
                local z = #msg == 0 and "" or zlib.zdeflate(msg, 15)
                c:send(wsframe.binary(z, { rsv1 = true }))
                local got, f = recv_msg(c)
                assert.are.equal(2, f.opcode)
                assert.are.equal(#msg, #got)
                assert.is_true(got == msg)
                if #msg == 0 then assert.are.equal("00 ", hex(f.payload)) end -- §7.2.3.6
            end
            c:close()
        end)

        it("reassembles a fragmented compressed message (RSV1 on the first frame only)", function()
            local c = open()
            local msg = ("fragmented compressed text "):rep(100)
            local z = zlib.zdeflate(msg, 15)
            local a, b = #z // 3, 2 * #z // 3
            c:send(wsframe.text(z:sub(1, a), { rsv1 = true, fin = false })
                .. wsframe.ping("between")
                .. wsframe.cont(z:sub(a + 1, b), { fin = false })
                .. wsframe.cont(z:sub(b + 1)))
            local pong = assert(c:recv_frame())
            assert.are.same({ 10, "between", 0 }, { pong.opcode, pong.payload, pong.rsv })
            assert.are.equal(msg, (recv_msg(c)))
            c:close()
        end)

        it("keeps the compression context across messages unless told not to", function()
            local msg = ("context takeover: the same words again and again. "):rep(8)
            local function two_payloads(offer)
                local c = open(offer)
                local sizes = {}
                for i = 1, 2 do
                    c:send(wsframe.text(zlib.zdeflate(msg, 15), { rsv1 = true }))
                    local got, f = recv_msg(c)
                    assert.are.equal(msg, got)
                    sizes[i] = #f.payload
                end
                c:close()
                return sizes
            end
            local on = two_payloads("permessage-deflate")
            assert.is_true(on[2] < on[1] // 2, "second message refers back to the first")
            local off = two_payloads("permessage-deflate; server_no_context_takeover")
            assert.are.equal(off[1], off[2])
            assert.are.equal(on[1], off[1])
        end)

        local function expect_close(bytes, code, offer)
            local c = open(offer)
            c:send(bytes)
            local got, reason = c:recv_close()
            assert.are.equal(code, got, "close code (reason: " .. tostring(reason) .. ")")
            assert.is_true(c:eof(5))
            c:close()
        end

        it("closes with 1009 on a decompression bomb, before memory grows", function()
            local function rss()
                return tonumber(server.read_file("/proc/" .. s.pid .. "/status"):match("VmRSS:%s*(%d+)"))
            end
            local bomb = zlib.zeros_bomb(256 * 1024 * 1024) -- 256 MiB of zeros in ~256 KiB
            assert.is_true(#bomb < 512 * 1024)
            local before = rss()
            expect_close(wsframe.binary(bomb, { rsv1 = true }), 1009)
            -- bounded by --max-message (8 MiB), not the bomb (the sanitizer build keeps freed blocks)
            assert.is_true(rss() - before < 64 * 1024, "server RSS grew by " .. (rss() - before) .. " KiB")
        end)

        it("closes with 1002 on a compressed control frame", function()
            expect_close(wsframe.ping("x", { rsv1 = true }), 1002)
        end)

        it("closes with 1002 on RSV1 on a continuation frame", function()
            local z = zlib.zdeflate("two parts", 15)
            expect_close(wsframe.text(z:sub(1, 3), { fin = false, rsv1 = true })
                .. wsframe.cont(z:sub(4), { rsv1 = true }), 1002)
        end)

        it("closes with 1007 on data that is not DEFLATE, and on inflated text that is not UTF-8", function()
            expect_close(wsframe.text("\255\255\255\255", { rsv1 = true }), 1007)
            expect_close(wsframe.text(zlib.zdeflate("bad \255 utf-8", 15), { rsv1 = true }), 1007)
        end)

        it("counts the inflated size against --max-message (8 MiB) exactly", function()
            local c = open()
            local ok = ("a"):rep(8 * 1024 * 1024)
            c:send(wsframe.binary(zlib.zdeflate(ok, 15), { rsv1 = true }))
            assert.are.equal(#ok, #recv_msg(c))
            c:close()
            expect_close(wsframe.binary(zlib.zdeflate(ok .. "a", 15), { rsv1 = true }), 1009)
        end)
    end)

    it("publishes one compressed frame per window size and plain to the rest", function()
        local a = ext_request(s.port, "/room", { "permessage-deflate" })
        local b = ext_request(s.port, "/room", { "permessage-deflate; server_max_window_bits=10" })
        local plain = ext_request(s.port, "/room", {})
        local msg = ("fan-out to mixed subscribers "):rep(20)
        for _ = 1, 2 do
            a:send(wsframe.text(msg))
            local fa, fb, fp = assert(a:recv_frame()), assert(b:recv_frame()), assert(plain:recv_frame())
            assert.are.same({ 4, 4, 0 }, { fa.rsv, fb.rsv, fp.rsv })
            -- fresh context each time: decodable by a fresh inflater of its window size
            assert.are.equal(msg, zlib.ref(15):feed(fa.payload))
            assert.are.equal(msg, zlib.ref(10):feed(fb.payload))
            assert.are.equal(msg, fp.payload)
        end
        -- an own message after a shared one still decodes with takeover
        a.ref = zlib.ref(15)
        a:send(wsframe.text(zlib.zdeflate("x", 15), { rsv1 = true }))
        local f = assert(a:recv_frame())
        assert.are.equal("x", a.ref:feed(f.payload))
        a:close()
        b:close()
        plain:close()
    end)

    it("talks to Python websockets with compression on: 0 B .. 4 MiB, context takeover", function()
        local py = server.tmpname(".py")
        write(py, [==[
import asyncio, sys, json, websockets
async def main():
    async with websockets.connect(sys.argv[1], max_size=None) as ws:
        out = {"ext": ws.response_headers.get("Sec-WebSocket-Extensions"), "ok": []}
        line = "".join("%015d\n" % i for i in range(4 * 1024 * 1024 // 16))
        for msg in ["", "x", "0123456789abcdef" * 4096, line, line[:100000], line[:100000]]:
            await ws.send(msg)
            out["ok"].append(await ws.recv() == msg)
        await ws.send(b"\x00\x01" * 5000)
        out["ok"].append(await ws.recv() == b"\x00\x01" * 5000)
        await ws.send("ext?")
        out["lua"] = await ws.recv()
    print(json.dumps(out))
asyncio.run(main())
]==])
        local p = io.popen(("env -u LD_PRELOAD timeout 60 %s %s ws://127.0.0.1:%d/echo 2>&1"):format(
            PYTHON, py, s.port))
        local text = p:read("a")
        p:close()
        os.remove(py)
        local res = require("cjson").decode(text:match("([^\n]*)\n?$"))
        assert.are.equal("permessage-deflate", res.ext)
        assert.are.equal(res.ext, res.lua)
        assert.are.same({ true, true, true, true, true, true, true }, res.ok)
    end)
end)

describe("--no-compression", function()
    it("declines every offer", function()
        local s = server.start{ args = { "--no-compression" } }
        local ok, err = pcall(function()
            local c, ext = ext_request(s.port, "/echo", { "permessage-deflate" })
            assert.is_nil(ext)
            c:close()
        end)
        s:stop()
        assert(ok, err)
    end)
end)
