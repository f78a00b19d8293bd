-- RFC 6455 / RFC 7692 conformance battery against the real /echo route, modelled on
-- the Autobahn|Testsuite fuzzingclient cases (sections 1-7, 9, 10, 12, 13). One
-- fresh raw connection per case; every case is one line in a table below:
--
--   { id, description, send, expect, close }
--     send:   bytes, or a list of bytes / P(s) (pause) / Q(s) (nothing may arrive
--             for s seconds) sent in order
--     expect: the exact frames the server must send before its close frame
--     close:  nil   -> the case leaves the connection open; the runner sends
--                      close 1000 and the server must echo exactly 03 e8
--             code  -> the server's close frame carries this code (the case sent
--                      the close, or the server fails the connection)
--             false -> the server's close frame is empty
--   After the server's close frame nothing else may arrive, and TCP must close.
-- luacheck: no max line length (one case per line, by design)
local server = require "server"
local rawws = require "rawws"
local wsframe = require "wsframe"
local proc = require "sbt_proc"
local zlib = require "sbt_deflate"

local T, B, C = wsframe.text, wsframe.binary, wsframe.cont
local PING, PONG, CLOSE, FR = wsframe.ping, wsframe.pong, wsframe.close, wsframe.frame
local NF = { fin = false }

local function P(s) return { pause = s } end
local function Q(s) return { quiet = s } end
local function E(op, payload) return { fin = true, rsv = 0, opcode = op, payload = payload } end
local function ET(p) return E(1, p) end
local function EB(p) return E(2, p) end
local function EP(p) return E(10, p) end

-- bytes cut into n-byte writes with a pause between them
local function chop(bytes, n, pause)
    local out = {}
    for i = 1, #bytes, n do
        out[#out + 1] = bytes:sub(i, i + n - 1)
        if pause then out[#out + 1] = P(pause) end
    end
    return out
end
-- every frame its own write, with a pause between them
local function framewise(pause, ...)
    local out = {}
    for _, f in ipairs({ ... }) do
        out[#out + 1] = f
        out[#out + 1] = P(pause)
    end
    return out
end
local function cat(...) return table.concat({ ... }) end
-- a frame's header + mask key + the first n payload bytes (the rest never sent)
local function head_of(frame, payload_len, n)
    local hdr = #frame - payload_len
    return frame:sub(1, hdr + n), frame:sub(hdr + n + 1)
end

-- Large frames with an all-zero mask key: masked on the wire, and cheap to
-- build in Lua (XOR with zero is the identity).
local ZKEY = "\0\0\0\0"
local function zframe(op, payload, fin)
    local b0 = op | ((fin == false) and 0 or 0x80)
    local n = #payload
    local hdr
    if n < 126 then
        hdr = string.char(b0, 0x80 | n)
    elseif n < 65536 then
        hdr = string.char(b0, 0x80 | 126) .. string.pack(">I2", n)
    else
        hdr = string.char(b0, 0x80 | 127) .. string.pack(">I8", n)
    end
    return hdr .. ZKEY .. payload
end
-- a message in frames of `size` bytes
local function zfrags(op, payload, size)
    local out = {}
    for i = 1, #payload, size do
        out[#out + 1] = zframe(i == 1 and op or 0, payload:sub(i, i + size - 1), i + size > #payload)
    end
    return table.concat(out)
end

local function text_of(n)
    local unit = "BAsd7&jh23"
    return (unit:rep(n // #unit + 1)):sub(1, n)
end
local function bin_of(n) return ("\xfe"):rep(n) end

local KOSME = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
local BAD_KOSME = KOSME .. "\xed\xa0\x80edited"
local HELLO_UTF8 = "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!"
local R123 = ("*"):rep(123)

-- ---- sections 1-5, 7, 10: framing, pings, reserved bits and opcodes, fragments, close
local CASES = {
    { "1.1.1", "text, 0 bytes", T(""), { ET("") } },
    { "1.1.2", "text, 125 bytes", T(text_of(125)), { ET(text_of(125)) } },
    { "1.1.3", "text, 126 bytes", T(text_of(126)), { ET(text_of(126)) } },
    { "1.1.4", "text, 127 bytes", T(text_of(127)), { ET(text_of(127)) } },
    { "1.1.5", "text, 128 bytes", T(text_of(128)), { ET(text_of(128)) } },
    { "1.1.6", "text, 65535 bytes", T(text_of(65535)), { ET(text_of(65535)) } },
    { "1.1.7", "text, 65536 bytes", T(text_of(65536)), { ET(text_of(65536)) } },
    { "1.1.8", "text, 65536 bytes in 997-byte writes", chop(T(text_of(65536)), 997), { ET(text_of(65536)) } },
    { "1.1.9", "65536-byte text, its 14-byte header in 1-byte writes", nil, { ET(text_of(65536)) } },
    { "1.2.1", "binary, 0 bytes", B(""), { EB("") } },
    { "1.2.2", "binary, 125 bytes", B(bin_of(125)), { EB(bin_of(125)) } },
    { "1.2.3", "binary, 126 bytes", B(bin_of(126)), { EB(bin_of(126)) } },
    { "1.2.4", "binary, 127 bytes", B(bin_of(127)), { EB(bin_of(127)) } },
    { "1.2.5", "binary, 128 bytes", B(bin_of(128)), { EB(bin_of(128)) } },
    { "1.2.6", "binary, 65535 bytes", B(bin_of(65535)), { EB(bin_of(65535)) } },
    { "1.2.7", "binary, 65536 bytes", B(bin_of(65536)), { EB(bin_of(65536)) } },
    { "1.2.8", "binary, 65536 bytes in 997-byte writes", chop(B(bin_of(65536)), 997), { EB(bin_of(65536)) } },

    { "2.1", "ping without payload", PING(""), { EP("") } },
    { "2.2", "ping with a text payload", PING("Hello, world!"), { EP("Hello, world!") } },
    { "2.3", "ping with a binary payload", PING("\0\xff\xfe\xfd\xfc\xfb\0\xff"), { EP("\0\xff\xfe\xfd\xfc\xfb\0\xff") } },
    { "2.4", "ping with 125 bytes", PING(bin_of(125)), { EP(bin_of(125)) } },
    { "2.5", "ping with 126 bytes", PING(bin_of(126)), {}, 1002 },
    { "2.6", "ping with 125 bytes, 1-byte writes", chop(PING(bin_of(125)), 1, 0.0005), { EP(bin_of(125)) } },
    { "2.7", "unsolicited pong without payload", PONG(""), {} },
    { "2.8", "unsolicited pong with payload", PONG("unsolicited pong payload"), {} },
    { "2.9", "unsolicited pong, then ping", cat(PONG("unsolicited pong payload"), PING("ping payload")), { EP("ping payload") } },
    { "2.10", "10 pings", cat(PING("payload-0"), PING("payload-1"), PING("payload-2"), PING("payload-3"), PING("payload-4"), PING("payload-5"), PING("payload-6"), PING("payload-7"), PING("payload-8"), PING("payload-9")), { EP("payload-0"), EP("payload-1"), EP("payload-2"), EP("payload-3"), EP("payload-4"), EP("payload-5"), EP("payload-6"), EP("payload-7"), EP("payload-8"), EP("payload-9") } },
    { "2.11", "10 pings, 1-byte writes", chop(cat(PING("payload-0"), PING("payload-1"), PING("payload-2"), PING("payload-3"), PING("payload-4"), PING("payload-5"), PING("payload-6"), PING("payload-7"), PING("payload-8"), PING("payload-9")), 1, 0.0002), { EP("payload-0"), EP("payload-1"), EP("payload-2"), EP("payload-3"), EP("payload-4"), EP("payload-5"), EP("payload-6"), EP("payload-7"), EP("payload-8"), EP("payload-9") } },
    { "2.12", "ping behind a 4 MiB echo still being written: pong after it, never inside", cat(zframe(2, bin_of(4 * 1024 * 1024)), PING("after")), { EB(bin_of(4 * 1024 * 1024)), EP("after") } },

    { "3.1", "text with RSV1 (no extension)", T("Hello", { rsv1 = true }), {}, 1002 },
    { "3.2", "text, text with RSV2, ping: echo, then fail, no pong", cat(T("Hello"), T("Hello", { rsv2 = true }), PING("")), { ET("Hello") }, 1002 },
    { "3.3", "as 3.2 with RSV3, frame by frame", framewise(0.01, T("Hello"), T("Hello", { rsv3 = true }), PING("")), { ET("Hello") }, 1002 },
    { "3.4", "as 3.2 with RSV1+RSV2, 1-byte writes", chop(cat(T("Hello"), T("Hello", { rsv1 = true, rsv2 = true }), PING("")), 1, 0.0005), { ET("Hello") }, 1002 },
    { "3.5", "binary with RSV1+RSV3", B(bin_of(8), { rsv1 = true, rsv3 = true }), {}, 1002 },
    { "3.6", "ping with RSV2+RSV3", PING("Hello", { rsv2 = true, rsv3 = true }), {}, 1002 },
    { "3.7", "close with RSV1+RSV2+RSV3", CLOSE(1000, "", { rsv1 = true, rsv2 = true, rsv3 = true }), {}, 1002 },
    { "3.8", "continuation with RSV1 (no extension)", cat(T("a", NF), C("b", { rsv1 = true })), {}, 1002 },

    { "4.1.1", "reserved opcode 3", FR(3, ""), {}, 1002 },
    { "4.1.2", "reserved opcode 4 with payload", FR(4, "reserved opcode payload"), {}, 1002 },
    { "4.1.3", "text, opcode 5, ping: echo then fail", cat(T("Hello"), FR(5, ""), PING("")), { ET("Hello") }, 1002 },
    { "4.1.4", "text, opcode 6 with payload, ping", cat(T("Hello"), FR(6, "reserved opcode payload"), PING("")), { ET("Hello") }, 1002 },
    { "4.1.5", "text, opcode 7, ping, 1-byte writes", chop(cat(T("Hello"), FR(7, "reserved opcode payload"), PING("")), 1, 0.0005), { ET("Hello") }, 1002 },
    { "4.1.6", "reserved opcode, then a ping later: no pong, input discarded", { FR(3, ""), P(0.05), PING("late"), T("late") }, {}, 1002 },
    { "4.2.1", "reserved opcode 11", FR(11, ""), {}, 1002 },
    { "4.2.2", "reserved opcode 12 with payload", FR(12, "reserved opcode payload"), {}, 1002 },
    { "4.2.3", "text, opcode 13, ping", cat(T("Hello"), FR(13, ""), PING("")), { ET("Hello") }, 1002 },
    { "4.2.4", "text, opcode 14 with payload, ping", cat(T("Hello"), FR(14, "reserved opcode payload"), PING("")), { ET("Hello") }, 1002 },
    { "4.2.5", "text, opcode 15, ping, 1-byte writes", chop(cat(T("Hello"), FR(15, "reserved opcode payload"), PING("")), 1, 0.0005), { ET("Hello") }, 1002 },

    { "5.1", "ping in 2 fragments", cat(PING("fragment1", NF), C("fragment2")), {}, 1002 },
    { "5.2", "pong in 2 fragments", cat(PONG("fragment1", NF), C("fragment2")), {}, 1002 },
    { "5.3", "text in 2 fragments", cat(T("fragment1", NF), C("fragment2")), { ET("fragment1fragment2") } },
    { "5.4", "text in 2 fragments, frame by frame", framewise(0.01, T("fragment1", NF), C("fragment2")), { ET("fragment1fragment2") } },
    { "5.5", "text in 2 fragments, 1-byte writes", chop(cat(T("fragment1", NF), C("fragment2")), 1, 0.0005), { ET("fragment1fragment2") } },
    { "5.6", "text in 2 fragments, ping between", cat(T("fragment1", NF), PING("pongme!"), C("fragment2")), { EP("pongme!"), ET("fragment1fragment2") } },
    { "5.7", "as 5.6, frame by frame", framewise(0.01, T("fragment1", NF), PING("pongme!"), C("fragment2")), { EP("pongme!"), ET("fragment1fragment2") } },
    { "5.8", "as 5.6, 1-byte writes", chop(cat(T("fragment1", NF), PING("pongme!"), C("fragment2")), 1, 0.0005), { EP("pongme!"), ET("fragment1fragment2") } },
    { "5.9", "final continuation with nothing to continue, then text", cat(C("non-continuation payload"), T("Hello, world!")), {}, 1002 },
    { "5.10", "as 5.9, frame by frame", framewise(0.01, C("non-continuation payload"), T("Hello, world!")), {}, 1002 },
    { "5.11", "as 5.9, 1-byte writes", chop(cat(C("non-continuation payload"), T("Hello, world!")), 1, 0.0005), {}, 1002 },
    { "5.12", "non-final continuation with nothing to continue, then text", cat(C("non-continuation payload", NF), T("Hello, world!")), {}, 1002 },
    { "5.13", "as 5.12, frame by frame", framewise(0.01, C("non-continuation payload", NF), T("Hello, world!")), {}, 1002 },
    { "5.14", "as 5.12, 1-byte writes", chop(cat(C("non-continuation payload", NF), T("Hello, world!")), 1, 0.0005), {}, 1002 },
    { "5.15", "complete message, then a stray continuation and a text", cat(T("fragment1", NF), C("fragment2"), C("fragment3", NF), T("fragment4")), { ET("fragment1fragment2") }, 1002 },
    { "5.16", "continuation, text, continuation (x2)", cat(C("fragment1", NF), T("fragment2", NF), C("fragment3"), C("fragment1", NF), T("fragment2", NF), C("fragment3")), {}, 1002 },
    { "5.17", "final continuation, text, continuation (x2)", cat(C("fragment1"), T("fragment2", NF), C("fragment3"), C("fragment1"), T("fragment2", NF), C("fragment3")), {}, 1002 },
    { "5.18", "text inside a fragmented text", cat(T("fragment1", NF), T("fragment2")), {}, 1002 },
    { "5.19", "5 fragments with 2 pings between, paused", { T("fragment1", NF), C("fragment2", NF), PING("pongme 1!"), P(0.05), C("fragment3", NF), P(0.05), C("fragment4", NF), PING("pongme 2!"), P(0.05), C("fragment5") }, { EP("pongme 1!"), EP("pongme 2!"), ET("fragment1fragment2fragment3fragment4fragment5") } },
    { "5.20", "as 5.19, frame by frame", framewise(0.01, T("fragment1", NF), C("fragment2", NF), PING("pongme 1!"), C("fragment3", NF), C("fragment4", NF), PING("pongme 2!"), C("fragment5")), { EP("pongme 1!"), EP("pongme 2!"), ET("fragment1fragment2fragment3fragment4fragment5") } },
    { "5.22", "20 one-byte fragments, a ping after each", nil, nil },
    { "5.21", "binary in 3 fragments, 1-byte writes", chop(cat(B("\0\1", NF), C("\2", NF), C("\255")), 1, 0.0005), { EB("\0\1\2\255") } },

    { "6.1.1", "empty text", T(""), { ET("") } },
    { "6.1.2", "text in 3 empty fragments", cat(T("", NF), C("", NF), C("")), { ET("") } },
    { "6.1.3", "text: empty, non-empty, empty fragments", cat(T("", NF), C("middle frame payload", NF), C("")), { ET("middle frame payload") } },
    { "6.2.1", "valid UTF-8 in one frame", T(HELLO_UTF8), { ET(HELLO_UTF8) } },
    { "6.2.2", "valid UTF-8 fragmented at code points", cat(T("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6", NF), C("\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!")), { ET(HELLO_UTF8) } },
    { "6.2.3", "valid UTF-8 in 1-byte fragments", nil, { ET(HELLO_UTF8) } },
    { "6.2.4", "kosme in 1-byte fragments", nil, { ET(KOSME) } },
    { "6.3.1", "invalid UTF-8 in one frame", T(BAD_KOSME), {}, 1007 },
    { "6.3.2", "invalid UTF-8 in 1-byte fragments", nil, {}, 1007 },
    { "6.4.1", "fail fast: bad fragment 2 of 3, fragment 3 never sent", { T(KOSME, NF), Q(0.05), C("\xf4\x90\x80\x80", NF) }, {}, 1007 },
    { "6.4.2", "fail fast: bad 2nd byte of a sequence split over fragments", { T(KOSME .. "\xf4", NF), Q(0.05), C("\x90", NF) }, {}, 1007 },
    { "6.4.3", "fail fast: bad bytes mid-frame, rest of the frame never sent", nil, {}, 1007 },
    { "6.4.4", "fail fast: one bad byte mid-frame, rest never sent", nil, {}, 1007 },
    { "6.4.5", "fail fast: bad bytes in a 64 KiB frame's first chunk", nil, {}, 1007 },
    { "6.4.6", "fail fast: 100 KiB valid, pause, bad bytes, the frame never finished", nil, {}, 1007 },
    { "6.4.7", "fail fast: bad bytes in the 2nd fragment of a large message", nil, {}, 1007 },

    { "7.1.1", "text, then close 1000", cat(T("Hello World!"), CLOSE(1000)), { ET("Hello World!") }, 1000 },
    { "7.1.2", "close twice", cat(CLOSE(1000), CLOSE(1000)), {}, 1000 },
    { "7.1.3", "ping after close: no pong", cat(CLOSE(1000), PING("Hello World!")), {}, 1000 },
    { "7.1.3b", "ping 50 ms after the close: no pong", { CLOSE(1000), P(0.05), PING("Hello World!") }, {}, 1000 },
    { "7.1.4", "text after close: no echo", cat(CLOSE(1000), T("Hello World!")), {}, 1000 },
    { "7.1.5", "close between fragments: no echo", cat(T("fragment1", NF), CLOSE(1000), C("fragment2")), {}, 1000 },
    { "7.1.6", "256 KiB text, close, ping: echo then close, no pong", cat(zframe(1, text_of(262144)), CLOSE(1000), PING("Hello World!")), { ET(text_of(262144)) }, 1000 },
    { "7.1.7", "close split over writes", chop(CLOSE(1000, "bye"), 1, 0.001), {}, 1000 },
    { "7.1.8", "close, then a bad frame: still the echo", cat(CLOSE(1001), FR(3, "")), {}, 1001 },
    { "7.1.9", "4 MiB echo still queued when the close arrives: echo, then close", cat(zframe(2, bin_of(4 * 1024 * 1024)), CLOSE(1000)), { EB(bin_of(4 * 1024 * 1024)) }, 1000 },
    { "7.3.1", "close, empty payload", CLOSE(), {}, false },
    { "7.3.2", "close, 1-byte payload", FR(8, "\3"), {}, 1002 },
    { "7.3.3", "close 1000, no reason", CLOSE(1000), {}, 1000 },
    { "7.3.4", "close 1000 with a reason", CLOSE(1000, "Hello World!"), {}, 1000 },
    { "7.3.5", "close 1000 with a 123-byte reason", CLOSE(1000, R123), {}, 1000 },
    { "7.3.6", "close 1000 with a 124-byte reason (payload 126)", CLOSE(1000, R123 .. "*"), {}, 1002 },
    { "7.3.7", "close in 2 fragments", cat(FR(8, "\3", NF), C("\232")), {}, 1002 },
    { "7.5.1", "close with an invalid UTF-8 reason", CLOSE(1000, BAD_KOSME), {}, 1007 },
    { "7.5.2", "close with a truncated UTF-8 reason", CLOSE(1000, "ok\xce"), {}, 1007 },

    { "10.1.1", "65536-byte text in one frame", T(text_of(65536)), { ET(text_of(65536)) } },
    { "10.1.2", "65536-byte text in 1300-byte fragments", zfrags(1, text_of(65536), 1300), { ET(text_of(65536)) } },
}

-- 6.2.3/6.2.4/6.3.2: every byte its own fragment
local function octet_frags(op, s)
    local out = {}
    for i = 1, #s do
        out[i] = FR(i == 1 and op or 0, s:sub(i, i), { fin = i == #s })
    end
    return table.concat(out)
end
local FILL = {
    ["1.1.9"] = function()
        local f = T(text_of(65536))
        local parts = chop(f:sub(1, 14), 1, 0.001)
        parts[#parts + 1] = f:sub(15)
        return parts
    end,
    ["5.22"] = function(case)
        local parts, pongs = {}, {}
        for i = 1, 20 do
            parts[#parts + 1] = FR(i == 1 and 1 or 0, string.char(64 + i), { fin = i == 20 })
            if i < 20 then
                parts[#parts + 1] = PING("p" .. i)
                pongs[#pongs + 1] = EP("p" .. i)
            end
        end
        pongs[#pongs + 1] = ET("ABCDEFGHIJKLMNOPQRST")
        case[4] = pongs
        return chop(table.concat(parts), 3, 0.0005)
    end,
    ["6.2.3"] = function() return octet_frags(1, HELLO_UTF8) end,
    ["6.2.4"] = function() return octet_frags(1, KOSME) end,
    ["6.3.2"] = function() return octet_frags(1, BAD_KOSME) end,
    ["6.4.3"] = function()
        local msg = KOSME .. "\xf4\x90\x80\x80edited"
        local f = T(msg)
        local a = head_of(f, #msg, #KOSME)
        local b = f:sub(#a + 1, #a + 4)
        return { a, Q(0.05), b }
    end,
    ["6.4.4"] = function()
        local msg = KOSME .. "\xf4\x90\x80\x80edited"
        local f = T(msg)
        local a = head_of(f, #msg, #KOSME + 1)
        return { a, Q(0.05), f:sub(#a + 1, #a + 1) }
    end,
    ["6.4.6"] = function()
        local msg = text_of(102400) .. "\xed\xa0\x80" .. text_of(102400)
        local f = zframe(1, msg)
        local a = head_of(f, #msg, 102400)
        return { a, Q(0.05), f:sub(#a + 1, #a + 3) }
    end,
    ["6.4.7"] = function()
        return { zframe(1, text_of(70000), false), Q(0.05), zframe(0, "ok" .. "\xf8" .. text_of(10), false) }
    end,
    ["6.4.5"] = function()
        local msg = text_of(100) .. "\xc0\xaf" .. text_of(65536)
        return { (head_of(zframe(1, msg), #msg, 200)) }
    end,
}
for _, c in ipairs(CASES) do
    if FILL[c[1]] then c[3] = FILL[c[1]](c) end
end

-- ---- 7.7 / 7.9 / 7.13: close codes
for i, code in ipairs({ 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999 }) do
    CASES[#CASES + 1] = { "7.7." .. i, "valid close code " .. code, CLOSE(code), {}, code }
end
for i, code in ipairs({ 0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535 }) do
    CASES[#CASES + 1] = { "7.9." .. i, "invalid close code " .. code, CLOSE(code), {}, 1002 }
end

-- ---- 6.5+: Markus Kuhn's UTF-8 stress test, as Autobahn uses it: { valid?, bytes }
local function range(a, b, sep)
    local t = {}
    for i = a, b - 1 do t[#t + 1] = string.char(i) .. (sep or "") end
    return table.concat(t)
end
local INCOMPLETE = { "\xc0", "\xe0\x80", "\xf0\x80\x80", "\xf8\x80\x80\x80", "\xfc\x80\x80\x80\x80",
    "\xdf", "\xef\xbf", "\xf7\xbf\xbf", "\xfb\xbf\xbf\xbf", "\xfd\xbf\xbf\xbf\xbf" }
local UTF8 = {
    { "6.5", "valid sequences", { { true, "hello$world" }, { true, "hello\xc2\xa2world" }, { true, "hello\xe2\x82\xacworld" }, { true, "hello\xf0\xa4\xad\xa2world" }, { true, KOSME } } },
    { "6.7", "first sequence of each length", { { true, "\0" }, { true, "\xc2\x80" }, { true, "\xe0\xa0\x80" }, { true, "\xf0\x90\x80\x80" } } },
    { "6.8", "first 5/6-byte sequences", { { false, "\xf8\x88\x80\x80\x80" }, { false, "\xfc\x84\x80\x80\x80\x80" } } },
    { "6.9", "last sequence of each length", { { true, "\x7f" }, { true, "\xdf\xbf" }, { true, "\xef\xbf\xbf" }, { true, "\xf4\x8f\xbf\xbf" } } },
    { "6.10", "last 4/5/6-byte sequences", { { false, "\xf7\xbf\xbf\xbf" }, { false, "\xfb\xbf\xbf\xbf\xbf" }, { false, "\xfd\xbf\xbf\xbf\xbf\xbf" } } },
    { "6.11", "other boundaries", { { true, "\xed\x9f\xbf" }, { true, "\xee\x80\x80" }, { true, "\xef\xbf\xbd" }, { true, "\xf4\x8f\xbf\xbf" }, { false, "\xf4\x90\x80\x80" } } },
    { "6.12", "unexpected continuation bytes", { { false, "\x80" }, { false, "\xbf" }, { false, "\x80\xbf" }, { false, "\x80\xbf\x80" }, { false, "\x80\xbf\x80\xbf" }, { false, "\x80\xbf\x80\xbf\x80" }, { false, "\x80\xbf\x80\xbf\x80\xbf" }, { false, range(0x80, 0xbf) } } },
    { "6.13", "lonely start bytes", { { false, range(0xc0, 0xdf, " ") }, { false, range(0xe0, 0xef, " ") }, { false, range(0xf0, 0xf7, " ") }, { false, range(0xf8, 0xfb, " ") }, { false, range(0xfc, 0xfd, " ") } } },
    { "6.14", "last continuation byte missing", { { false, INCOMPLETE[1] }, { false, INCOMPLETE[2] }, { false, INCOMPLETE[3] }, { false, INCOMPLETE[4] }, { false, INCOMPLETE[5] }, { false, INCOMPLETE[6] }, { false, INCOMPLETE[7] }, { false, INCOMPLETE[8] }, { false, INCOMPLETE[9] }, { false, INCOMPLETE[10] } } },
    { "6.15", "concatenated incomplete sequences", { { false, table.concat(INCOMPLETE) } } },
    { "6.16", "impossible bytes", { { false, "\xfe" }, { false, "\xff" }, { false, "\xfe\xfe\xff\xff" } } },
    { "6.17", "overlong ASCII", { { false, "\xc0\xaf" }, { false, "\xe0\x80\xaf" }, { false, "\xf0\x80\x80\xaf" }, { false, "\xf8\x80\x80\x80\xaf" }, { false, "\xfc\x80\x80\x80\x80\xaf" } } },
    { "6.18", "maximum overlongs", { { false, "\xc1\xbf" }, { false, "\xe0\x9f\xbf" }, { false, "\xf0\x8f\xbf\xbf" }, { false, "\xf8\x87\xbf\xbf\xbf" }, { false, "\xfc\x83\xbf\xbf\xbf\xbf" } } },
    { "6.19", "overlong NUL", { { false, "\xc0\x80" }, { false, "\xe0\x80\x80" }, { false, "\xf0\x80\x80\x80" }, { false, "\xf8\x80\x80\x80\x80" }, { false, "\xfc\x80\x80\x80\x80\x80" } } },
    { "6.20", "single UTF-16 surrogates", { { false, "\xed\xa0\x80" }, { false, "\xed\xad\xbf" }, { false, "\xed\xae\x80" }, { false, "\xed\xaf\xbf" }, { false, "\xed\xb0\x80" }, { false, "\xed\xbe\x80" }, { false, "\xed\xbf\xbf" } } },
    { "6.21", "paired UTF-16 surrogates", { { false, "\xed\xa0\x80\xed\xb0\x80" }, { false, "\xed\xa0\x80\xed\xbf\xbf" }, { false, "\xed\xad\xbf\xed\xb0\x80" }, { false, "\xed\xad\xbf\xed\xbf\xbf" }, { false, "\xed\xae\x80\xed\xb0\x80" }, { false, "\xed\xae\x80\xed\xbf\xbf" }, { false, "\xed\xaf\xbf\xed\xb0\x80" }, { false, "\xed\xaf\xbf\xed\xbf\xbf" } } },
    { "6.23", "specials", { { true, "\xef\xbf\xb9" }, { true, "\xef\xbf\xba" }, { true, "\xef\xbf\xbb" }, { true, "\xef\xbf\xbc" }, { true, "\xef\xbf\xbd" }, { true, "\xef\xbf\xbe" }, { true, "\xef\xbf\xbf" } } },
}
-- 6.6: every prefix of kosme (valid only at a code point boundary)
local prefixes = {}
for i = 1, #KOSME do
    prefixes[i] = { i == 2 or i == 5 or i == 7 or i == 9 or i == 11, KOSME:sub(1, i) }
end
table.insert(UTF8, 2, { "6.6", "prefixes of kosme", prefixes })
-- 6.22: non-characters are valid UTF-8
local nonchars = { { true, "\xef\xbf\xbe" }, { true, "\xef\xbf\xbf" } }
for _, z1 in ipairs({ "\xf0", "\xf1", "\xf2", "\xf3", "\xf4" }) do
    for _, z2 in ipairs({ "\x8f", "\x9f", "\xaf", "\xbf" }) do
        if z1 ~= "\xf4" or z2 == "\x8f" then
            for _, z3 in ipairs({ "\xbe", "\xbf" }) do
                local zz = z1 .. z2 .. "\xbf" .. z3
                if z1 ~= "\xf0" or z2 ~= "\x8f" then nonchars[#nonchars + 1] = { true, zz } end
            end
        end
    end
end
table.insert(UTF8, #UTF8, { "6.22", "non-characters", nonchars })
for _, group in ipairs(UTF8) do
    for j, v in ipairs(group[3]) do
        local id = group[1] .. "." .. j
        if v[1] then
            CASES[#CASES + 1] = { id, group[2] .. " (valid)", T(v[2]), { ET(v[2]) } }
        else
            CASES[#CASES + 1] = { id, group[2] .. " (invalid)", T(v[2]), {}, 1007 }
            -- the same bytes mid-message (then a space, so an incomplete sequence
            -- is invalid too): failed there, the message never finished
            CASES[#CASES + 1] = { id .. "f", group[2] .. " (invalid, mid-message)", { T("ok", NF), C(v[2], NF), C(" ", NF) }, {}, 1007 }
        end
    end
end

-- ---- permessage-deflate framing: the same runner on a connection that
-- negotiated it (replies under --deflate-min-size, 64 bytes, go uncompressed)
local PMD = "permessage-deflate"
local function Z(msg) return zlib.zdeflate(msg, 15) end
local R1 = { rsv1 = true }
for _, c in ipairs({
    { "12.0.1", "compressed text", FR(1, Z("Hello"), R1), { ET("Hello") } },
    { "12.0.2", "compressed binary, 1-byte writes", chop(FR(2, Z("\0\1\2"), R1), 1, 0.0005), { EB("\0\1\2") } },
    { "12.0.3", "uncompressed text on a deflate connection", T("plain"), { ET("plain") } },
    { "12.0.4", "compressed empty message (a single 00 byte)", FR(1, "\0", R1), { ET("") } },
    { "12.0.5", "compressed empty message (zlib's flush)", FR(1, Z(""), R1), { ET("") } },
    { "12.0.13", "compressed message with an empty payload", FR(2, "", R1), { EB("") } },
    { "12.0.6", "compressed message in 3 fragments, a ping between", cat(FR(1, Z("fragmented"):sub(1, 3), { fin = false, rsv1 = true }), PING("x"), C(Z("fragmented"):sub(4, 5), NF), C(Z("fragmented"):sub(6))), { EP("x"), ET("fragmented") } },
    { "12.0.7", "RSV1 on a continuation frame", cat(FR(1, Z("ab"):sub(1, 2), { fin = false, rsv1 = true }), C(Z("ab"):sub(3), R1)), {}, 1002 },
    { "12.0.8", "RSV1 on a ping", PING("x", R1), {}, 1002 },
    { "12.0.9", "RSV1 on a close", CLOSE(1000, "", R1), {}, 1002 },
    { "12.0.10", "RSV2 on a compressed frame", FR(1, Z("x"), { rsv1 = true, rsv2 = true }), {}, 1002 },
    { "12.0.11", "compressed text that inflates to invalid UTF-8", FR(1, Z(BAD_KOSME), R1), {}, 1007 },
    { "12.0.12", "compressed data that is not DEFLATE", FR(2, "\xff\xff\xff\xff", R1), {}, 1007 },
}) do
    c.ext = PMD
    CASES[#CASES + 1] = c
end

-- ---- 9.x: large messages (default --max-message is 16 MiB), bounded: a few only
local MiB = 1024 * 1024
local BIG = {
    { "9.1.1", "64 KiB text, one frame", 1, 65536, 65536 },
    { "9.1.3", "1 MiB text, one frame", 1, MiB, MiB },
    { "9.1.6", "16 MiB text, one frame (exactly --max-message)", 1, 16 * MiB, 16 * MiB },
    { "9.2.4", "4 MiB binary, one frame", 2, 4 * MiB, 4 * MiB },
    { "9.3.1", "1 MiB text in 64-byte frames", 1, MiB, 64 },
    { "9.3.5", "4 MiB text in 16 KiB frames", 1, 4 * MiB, 16384 },
    { "9.4.3", "4 MiB binary in 1 KiB frames", 2, 4 * MiB, 1024 },
    { "9.4.9", "16 MiB binary in 4 MiB frames", 2, 16 * MiB, 4 * MiB },
}

-- ---- 12/13: permessage-deflate: { id, offer, size, count, binary, fragment size (0: whole) }
local DEFLATE = {
    { "12.1.1", "permessage-deflate; client_max_window_bits", 16, 30, false, 0 },
    { "12.1.2", "permessage-deflate; client_max_window_bits", 64, 30, false, 0 },
    { "12.1.3", "permessage-deflate; client_max_window_bits", 256, 30, false, 0 },
    { "12.1.4", "permessage-deflate; client_max_window_bits", 1024, 30, true, 0 },
    { "12.1.5", "permessage-deflate; client_max_window_bits", 4096, 30, true, 0 },
    { "12.1.11", "permessage-deflate; client_max_window_bits", 8192, 10, true, 256 },
    { "12.1.16", "permessage-deflate; client_max_window_bits", 131072, 4, false, 1024 },
    { "13.1.1", "permessage-deflate; client_max_window_bits", 16, 30, false, 0 },
    { "13.1.5", "permessage-deflate; client_max_window_bits", 4096, 30, false, 0 },
    { "13.2.1", "permessage-deflate; client_max_window_bits; server_no_context_takeover", 16, 30, false, 0 },
    { "13.2.5", "permessage-deflate; client_max_window_bits; server_no_context_takeover", 4096, 30, false, 0 },
    { "13.3.1", "permessage-deflate; client_max_window_bits; server_max_window_bits=8", 16, 30, false, 0 },
    { "13.3.5", "permessage-deflate; client_max_window_bits; server_max_window_bits=8", 4096, 30, false, 0 },
    { "13.4.1", "permessage-deflate; client_max_window_bits; server_max_window_bits=15", 16, 30, false, 0 },
    { "13.4.5", "permessage-deflate; client_max_window_bits; server_max_window_bits=15", 4096, 30, false, 0 },
    { "13.5.1", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8", 16, 30, false, 0 },
    { "13.5.5", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8", 4096, 30, false, 0 },
    { "13.6.1", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=15", 16, 30, false, 0 },
    { "13.6.5", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=15", 4096, 30, false, 0 },
    { "13.7.1", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8, permessage-deflate; client_max_window_bits; server_no_context_takeover, permessage-deflate; client_max_window_bits", 16, 30, false, 0 },
    { "13.7.5", "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8, permessage-deflate; client_max_window_bits; server_no_context_takeover, permessage-deflate; client_max_window_bits", 4096, 30, false, 0 },
    { "13.8.1", "permessage-deflate; client_max_window_bits=8", 1024, 30, false, 0 },
    { "13.8.2", "permessage-deflate; client_max_window_bits=9; client_no_context_takeover", 1024, 30, false, 0 },
    { "13.8.3", "permessage-deflate; client_no_context_takeover", 4096, 30, true, 0 },
    { "13.8.4", "permessage-deflate", 4096, 30, false, 300 },
}

-- ---- the runner ------------------------------------------------------------
-- Read exactly n bytes, straight from the socket once the client's buffer is
-- used up (rawws's read appends chunk by chunk, too slow for 16 MiB).
local function read_exact(c, n)
    if #c.buf >= n then
        local out = c.buf:sub(1, n)
        c.buf = c.buf:sub(n + 1)
        return out
    end
    local have = c.buf
    c.buf = ""
    c.sock:settimeout(10)
    local rest, err = c.sock:receive(n - #have)
    if not rest then return nil, err end
    return have .. rest
end

local function recv_frame(c)
    local h, err = read_exact(c, 2)
    if not h then return nil, err end
    local b0, b1 = h:byte(1, 2)
    assert(b1 & 0x80 == 0, "server frames must not be masked")
    local len = b1 & 0x7f
    if len == 126 then
        len = string.unpack(">I2", read_exact(c, 2))
        assert(len >= 126, "non-minimal 16-bit length")
    elseif len == 127 then
        len = string.unpack(">I8", read_exact(c, 8))
        assert(len >= 65536, "non-minimal 64-bit length")
    end
    local payload = ""
    if len > 0 then
        payload, err = read_exact(c, len)
        if not payload then return nil, "closed mid-frame: " .. tostring(err) end
    end
    return { fin = b0 & 0x80 ~= 0, rsv = (b0 >> 4) & 7, opcode = b0 & 0x0f, payload = payload }
end

local function valid_utf8(s) return utf8.len(s) ~= nil end

-- After the server's close frame: nothing more, then TCP EOF.
local function expect_eof(c)
    local eof, why = c:eof(5)
    assert.is_true(eof, "server should close TCP right after its close frame (got " .. tostring(why) .. ")")
end

local function brief(frames)
    local out = {}
    for _, f in ipairs(frames) do
        out[#out + 1] = string.format("op=%d fin=%s rsv=%d len=%d %q", f.opcode, f.fin, f.rsv, #f.payload,
            f.payload:sub(1, 40))
    end
    return "{" .. table.concat(out, ", ") .. "}"
end

local function run_case(port, case)
    local send, expect, close = case[3], case[4] or {}, case[5]
    if type(send) == "string" then send = { send } end
    local c = rawws.open(port, "/echo", case.ext and { "Sec-WebSocket-Extensions: " .. case.ext })
    if case.ext then
        assert(c.headers["sec-websocket-extensions"], "permessage-deflate not negotiated")
    end
    for _, part in ipairs(send) do
        if type(part) == "string" then
            c:send(part) -- may fail once the server has failed the connection
        elseif part.pause then
            proc.sleep(part.pause)
        elseif part.quiet then
            local saved = c.timeout
            c.timeout = part.quiet
            local ok = c:fill()
            c.timeout = saved
            assert.is_nil(ok, "the server answered too early (before the rest was sent): "
                .. ("%q"):format(c.buf:sub(1, 40)))
        end
    end
    if close == nil then assert(c:send(CLOSE(1000))) end
    local got, cf = {}
    while true do
        local f, err = recv_frame(c)
        assert(f, "connection ended without a close frame (" .. tostring(err) .. "), after "
            .. brief(got))
        if f.opcode == 8 then cf = f break end
        got[#got + 1] = f
    end
    if #got ~= #expect then
        error(string.format("expected %d frames before the close, got %s", #expect, brief(got)))
    end
    for i = 1, #expect do
        assert.are.same(expect[i], got[i], "frame " .. i)
    end
    assert.is_true(cf.fin, "close frame FIN")
    assert.are.equal(0, cf.rsv, "close frame RSV")
    local want = close == nil and 1000 or close
    if want == false then
        assert.are.equal("", cf.payload, "an empty close answers an empty close")
    else
        assert.is_true(#cf.payload >= 2, "close frame without a code")
        local code = string.unpack(">I2", cf.payload)
        assert.are.equal(want, code, "close code (reason: " .. cf.payload:sub(3) .. ")")
        assert.is_true(valid_utf8(cf.payload:sub(3)), "close reason must be UTF-8")
        if close == nil or case.echo then
            assert.are.equal(string.pack(">I2", want), cf.payload)
        end
    end
    expect_eof(c)
    c:close()
end

local function run_big(port, id, op, size, fragsize)
    local payload = op == 1 and text_of(size) or bin_of(size)
    local c = rawws.open(port, "/echo")
    c.timeout = 20
    c:send(fragsize >= size and zframe(op, payload) or zfrags(op, payload, fragsize))
    local f = assert(recv_frame(c))
    assert.are.equal(op, f.opcode, id)
    assert.is_true(f.fin, id .. ": one unfragmented echo")
    assert.are.equal(0, f.rsv)
    assert.are.equal(#payload, #f.payload, id)
    assert.is_true(payload == f.payload, id .. ": echo differs")
    c:send(CLOSE(1000))
    local cf = assert(recv_frame(c))
    assert.are.same({ fin = true, rsv = 0, opcode = 8, payload = "\3\232" }, cf)
    expect_eof(c)
    c:close()
end

-- Autobahn sends slices of a JSON file; a generated JSON-ish text stands in.
local CORPUS
do
    local t = {}
    for i = 1, 3000 do
        t[i] = string.format('{"id":%d,"name":"user%d","tags":["a%d","b%d"],"score":%d.%02d,"ok":%s}',
            i, (i * 7919) % 1000, i % 13, i % 29, (i * 31) % 997, i % 100, i % 3 == 0 and "true" or "false")
    end
    CORPUS = table.concat(t, ",\n")
end

local function params_of(ext)
    local p = {}
    p.smwb = tonumber(ext:match("server_max_window_bits=(%d+)")) or 15
    p.snct = ext:find("server_no_context_takeover", 1, true) ~= nil
    p.cmwb = tonumber(ext:match("client_max_window_bits=(%d+)")) or 15
    p.cnct = ext:find("client_no_context_takeover", 1, true) ~= nil
    return p
end

local function run_deflate(port, row)
    local id, offer, size, count, binary, fragsize = table.unpack(row)
    local c = rawws.open(port, "/echo", { "Sec-WebSocket-Extensions: " .. offer })
    local ext = c.headers["sec-websocket-extensions"]
    assert(ext and ext:match("^permessage%-deflate"), id .. ": no permessage-deflate in the 101")
    assert.is_nil(ext:find(",", 1, true), "one extension accepted: " .. ext)
    local p = params_of(ext)
    local offered_smwb = tonumber(offer:match("^[^,]*server_max_window_bits=(%d+)"))
    if offered_smwb then assert.is_true(p.smwb <= offered_smwb, ext) end
    if offer:match("^[^,]*server_no_context_takeover") then assert.is_true(p.snct, ext) end
    if not offer:match("^[^,]*client_max_window_bits") then
        assert.is_nil(ext:find("client_max_window_bits", 1, true), "not offered, must not be sent: " .. ext)
    end
    -- the client compresses within what was agreed; the reference inflater uses
    -- exactly the server's declared window, so a longer reference fails
    local deflater = zlib.zstream(p.cmwb)
    local inflater = zlib.ref(p.smwb)
    local pos = 1
    for n = 1, count do
        if pos + size > #CORPUS then pos = 1 end
        local msg = CORPUS:sub(pos, pos + size - 1)
        pos = pos + size
        local z
        if p.cnct then z = zlib.zdeflate(msg, math.max(p.cmwb, 9)) else z = deflater:push(msg) end
        local op = binary and 2 or 1
        if fragsize > 0 then
            local parts = {}
            for i = 1, #z, fragsize do
                parts[#parts + 1] = FR(i == 1 and op or 0, z:sub(i, i + fragsize - 1),
                    { fin = i + fragsize > #z, rsv1 = i == 1 })
            end
            c:send(table.concat(parts))
        else
            c:send(FR(op, z, { rsv1 = true }))
        end
        local f = assert(recv_frame(c))
        assert.are.equal(op, f.opcode, id .. " #" .. n)
        assert.is_true(f.fin, id .. ": the echo is one frame")
        assert.is_true(f.rsv == 0 or f.rsv == 4, id .. ": only RSV1 may be set")
        local got = f.payload
        if f.rsv == 4 then
            if p.snct then inflater = zlib.ref(p.smwb) end -- no context: a fresh inflater must do
            local err
            got, err = inflater:feed(f.payload)
            assert(got, id .. " #" .. n .. ": the server's frame does not inflate: " .. tostring(err))
        end
        assert.is_true(got == msg, id .. " #" .. n .. ": the inflated echo differs")
    end
    c:send(CLOSE(1000))
    local cf = assert(recv_frame(c))
    assert.are.same({ fin = true, rsv = 0, opcode = 8, payload = "\3\232" }, cf)
    expect_eof(c)
    c:close()
end

describe("RFC 6455 conformance (Autobahn-style cases against /echo)", function()
    local s, bystander
    setup(function()
        s = server.start{ args = { "--close-timeout", "2" } }
        bystander = rawws.open(s.port, "/echo")
    end)
    teardown(function()
        if bystander then bystander:close() end
        if s then s:stop() end
    end)

    for _, case in ipairs(CASES) do
        it(case[1] .. " " .. case[2], function() run_case(s.port, case) end)
    end

    for _, b in ipairs(BIG) do
        it(b[1] .. " " .. b[2], function() run_big(s.port, b[1], b[3], b[4], b[5]) end)
    end

    it("9.1.7 closes with 1009 on a text frame of 16 MiB + 1 (header only sent)", function()
        local c = rawws.open(s.port, "/echo")
        c:send(string.char(0x81, 0xff) .. string.pack(">I8", 16 * MiB + 1) .. ZKEY .. "abc")
        local f = assert(recv_frame(c))
        assert.are.equal(8, f.opcode)
        assert.are.equal(1009, string.unpack(">I2", f.payload))
        expect_eof(c)
        c:close()
    end)

    it("9.7 round-trips 100 small text messages of each size in order, pipelined", function()
        for _, size in ipairs({ 0, 16, 64, 256, 1024, 4096 }) do
            local c = rawws.open(s.port, "/echo")
            local msgs = {}
            for i = 1, 100 do msgs[i] = T(text_of(size)) end
            c:send(table.concat(msgs))
            for _ = 1, 100 do
                assert.are.same(ET(text_of(size)), assert(recv_frame(c)))
            end
            c:send(CLOSE(1000))
            assert.are.same({ fin = true, rsv = 0, opcode = 8, payload = "\3\232" }, assert(recv_frame(c)))
            expect_eof(c)
            c:close()
        end
    end)

    for _, row in ipairs(DEFLATE) do
        it(row[1] .. " permessage-deflate: " .. row[4] .. " x " .. row[3] .. " bytes, offer '"
            .. row[2]:sub(1, 60) .. "'", function() run_deflate(s.port, row) end)
    end

    it("keeps a bystander connection working through every case", function()
        bystander:send(T("still here") .. PING("b"))
        local got = {}
        while #got < 2 do
            local f = assert(recv_frame(bystander))
            if f.opcode == 9 then -- the server's keep-alive ping: answer it
                bystander:send(PONG(f.payload))
            else
                got[#got + 1] = f
            end
        end
        assert.are.same({ ET("still here"), EP("b") }, got)
        -- every failure above was the peer's, answered on the wire: nothing for the log's
        -- warn/error levels (a crash, a leak, a handler error would show there)
        for line in s:log():gmatch("[^\n]+") do
            assert.is_nil(line:match("Z (%a+) ") ~= "info" and line or nil, "unexpected log line")
        end
    end)
end)
