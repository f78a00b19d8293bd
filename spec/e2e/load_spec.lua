-- Bounded load on the echo route: 1,000 concurrent connections through the
-- project's load generator (sbload verifies every echo byte for byte), and an
-- independent client (Python websockets) with 200 connections x 50 messages.
local server = require "server"
local rawws = require "rawws"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"
local SBLOAD = (os.getenv("SB_BUILD") or (server.root .. "/build")) .. "/sbload"

local CLIENT = [=[
import asyncio, json, sys
import websockets

PORT, CONNS, MSGS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

async def one(i):
    async with websockets.connect("ws://127.0.0.1:%d/echo" % PORT, compression=None) as ws:
        ok = 0
        for k in range(MSGS):
            msg = ("conn %d msg %d " % (i, k)) + "x" * (k * 37 % 300)
            if k % 2:
                msg = msg.encode()
            await ws.send(msg)
            if await ws.recv() == msg:
                ok += 1
        return ok

async def main():
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(CONNS))), 60)
    print(json.dumps({"per_conn": results}))

asyncio.run(main())
]=]

local function admin(s)
    local h = rawws.connect(s.port)
    h:send("GET /admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local status, _, body = h:http()
    h:close()
    assert.are.equal(200, status)
    return cjson.decode(body).stats
end

describe("load on /echo", function()
    local s
    before_each(function() s = server.start{ app = "spec/apps/core" } end)
    after_each(function() if s then s:stop() end end)

    it("echoes 100,000 messages over 1,000 concurrent connections (sbload)", function()
        local p = assert(io.popen(("timeout 60 %s echo --url %s -c 1000 -d 4 -s 64 -n 100000 --timeout 45 --json 2>&1")
            :format(SBLOAD, s:url("/echo"))))
        local out = p:read("a")
        local ok = p:close()
        assert(ok, "sbload failed:\n" .. out)
        local r = cjson.decode(out)
        assert.are.same({ 1000, 100000, 0 }, { r.conns, r.messages, r.errors })
        local st = admin(s)
        assert.are.equal(1000, st.handshakes_ok)
        assert.is_true(st.msgs_in >= 100000 and st.msgs_out >= 100000)
        assert.are.equal(0, st.handler_errors)
    end)

    it("echoes 200 connections x 50 messages to Python websockets, every one intact", function()
        local script = server.tmpname(".py")
        local f = assert(io.open(script, "w"))
        f:write(CLIENT)
        f:close()
        local p = io.popen(("env -u LD_PRELOAD timeout 90 %s %s %d 200 50 2>&1"):format(PYTHON, script, s.port))
        local out = p:read("a")
        p:close()
        os.remove(script)
        local ok, r = pcall(cjson.decode, out)
        assert(ok and type(r) == "table", "client failed:\n" .. out)
        assert.are.equal(200, #r.per_conn)
        for i, n in ipairs(r.per_conn) do assert.are.equal(50, n, "connection " .. i) end
        local st = admin(s)
        assert.are.equal(200, st.handshakes_ok)
        assert.are.same({ 10000, 10000 }, { st.msgs_in, st.msgs_out })
    end)
end)
