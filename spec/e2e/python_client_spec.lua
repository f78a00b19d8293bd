-- The echo route against an independent client: Python websockets (Debian
-- python3-websockets under /usr/bin/python3). Every payload is compared byte
-- for byte; the client prints one JSON object with what it saw.
local server = require "server"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"

local CLIENT = [=[
import asyncio, hashlib, json, sys
import websockets

PORT = int(sys.argv[1])
URL = "ws://127.0.0.1:%d/echo" % PORT
out = {}

def pattern(n, binary):
    if binary:
        return bytes((i * 7 + 3) & 0xff for i in range(n))
    return "".join(chr(0x61 + (i % 26)) for i in range(n))

def digest(m):
    return hashlib.sha256(m.encode() if isinstance(m, str) else m).hexdigest()

async def echo_case(ws, name, msg, expect=None):
    await ws.send(msg)
    got = await asyncio.wait_for(ws.recv(), 10)
    want = msg if expect is None else expect
    out[name] = {
        "same": got == want,
        "type": "binary" if isinstance(got, bytes) else "text",
        "len": len(got),
        "sha": digest(got),
    }

async def main():
    async with websockets.connect(URL, max_size=None, compression=None) as ws:
        await echo_case(ws, "text", "héllo wörld ✓")
        await echo_case(ws, "binary", b"\x00\x01\xfe\xff" * 3)
        await echo_case(ws, "empty_text", "")
        await echo_case(ws, "empty_binary", b"")
        for n in (125, 126, 65535, 65536, 1 << 20):
            await echo_case(ws, "text_%d" % n, pattern(n, False))
            await echo_case(ws, "binary_%d" % n, pattern(n, True))
        # fragmented: an iterable is sent as one message in several frames
        await echo_case(ws, "fragmented_text", ["frag", "ment", "ed ✓"], "fragmented ✓")
        parts = [pattern(70000, True), b"", pattern(3, True)]
        await echo_case(ws, "fragmented_binary", parts, b"".join(parts))
        waiter = await ws.ping(b"are you there")
        await asyncio.wait_for(waiter, 10)
        out["pong"] = True
        await ws.close(code=4000, reason="client bye")
        out["client_close"] = {"code": ws.close_code, "reason": ws.close_reason}
    async with websockets.connect(URL, compression=None) as ws:
        await ws.send("close 4001 server bye")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            out["server_close"] = "no close"
        except websockets.ConnectionClosed as e:
            await asyncio.wait_for(ws.wait_closed(), 10)
            out["server_close"] = {"code": e.rcvd.code, "reason": e.rcvd.reason,
                                   "clean": e.rcvd_then_sent}
    print(json.dumps(out))

asyncio.run(main())
]=]

describe("echo with Python websockets", function()
    local s, script, errf
    before_each(function()
        script = server.tmpname(".py")
        errf = server.tmpname(".err")
        local f = assert(io.open(script, "w"))
        f:write(CLIENT)
        f:close()
        s = server.start{ app = "spec/apps/core" }
    end)
    after_each(function()
        if s then s:stop() end
        os.remove(script)
        os.remove(errf)
    end)

    it("echoes every size, fragments, pings and closes cleanly both ways, byte-exact", function()
        -- The sanitizer build preloads libasan into the spec runner: not into the client.
        local p = io.popen(("env -u LD_PRELOAD timeout 60 %s %s %d 2>%s"):format(
            PYTHON, script, s.port, errf))
        local text = p:read("a")
        p:close()
        local ok, r = pcall(cjson.decode, text)
        assert(ok and type(r) == "table", "client failed:\n" .. text .. server.read_file(errf))

        local function check(name, typ, len)
            local c = r[name]
            assert.is_table(c, name)
            assert.is_true(c.same, name .. " came back different")
            assert.are.equal(typ, c.type, name)
            assert.are.equal(len, c.len, name)
        end
        check("text", "text", #"héllo wörld ✓" - 4) -- characters, not bytes
        check("binary", "binary", 12)
        check("empty_text", "text", 0)
        check("empty_binary", "binary", 0)
        for _, n in ipairs({ 125, 126, 65535, 65536, 1 << 20 }) do
            check("text_" .. n, "text", n)
            check("binary_" .. n, "binary", n)
        end
        -- an independent digest of one payload, so "same" is not trusted alone
        local sha = io.popen("printf '\\000\\001\\376\\377\\000\\001\\376\\377\\000\\001\\376\\377'"
            .. " | sha256sum"):read("l"):match("^(%x+)")
        assert.are.equal(sha, r.binary.sha)
        check("fragmented_text", "text", #"fragmented ✓" - 2)
        check("fragmented_binary", "binary", 70003)
        assert.is_true(r.pong)
        assert.are.same({ code = 4000, reason = "" }, r.client_close)
        assert.are.same({ code = 4001, reason = "server bye", clean = true }, r.server_close)
    end)
end)
