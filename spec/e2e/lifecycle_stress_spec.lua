-- Lifecycle stress (issue 12): many connections whose handlers, at random,
-- send past --out-max, close, publish to closing peers, send to every other
-- peer from close handlers and raise, for a bounded time, with readers and
-- peers that never read. The server must stay up, the sanitizer build clean
-- (s:stop() fails on any report), and new connections must still be answered.
local server = require "server"
local rawws = require "rawws"

local APP = [[
local sb = require "switchboard"
local open = {}
local function others(ws, n)
    local big = string.rep("o", n)
    for id, o in pairs(open) do
        if id ~= ws.id then o:send(big) end
    end
end
return {
    open = function(ws)
        open[ws.id] = ws
        ws:subscribe("all")
    end,
    message = function(ws, m)
        local op = m:sub(1, 1)
        if op == "b" then -- two sends past --out-max
            ws:send(string.rep("b", 70000))
            ws:send(string.rep("b", 70000))
        elseif op == "k" then -- a send, then a close frame that overflows
            ws:send(string.rep("k", 99990))
            ws:close(4000, string.rep("r", 100))
        elseif op == "c" then
            ws:close(1000, "bye")
        elseif op == "p" then
            sb.publish("all", string.rep("p", 30000))
        elseif op == "o" then
            others(ws, 40000)
        elseif op == "x" then
            error("boom")
        else
            ws:send(m)
        end
    end,
    close = function(ws)
        open[ws.id] = nil
        others(ws, 60000)
        others(ws, 60000)
        sb.publish("all", "gone " .. ws.id)
        for _, o in pairs(open) do -- close one other peer from here
            o:close(1001, "cascade")
            break
        end
    end,
}
]]

local DRIVER = [=[
import random, socket, time, base64, os
PORT = int(sys.argv[1])
URL = "ws://127.0.0.1:%d/chaos" % PORT
SECONDS = float(sys.argv[2])
OPS = "bkcpoxe" + "e" * 6
stats = {"sessions": 0, "echoes": 0, "closed": 0, "mute": 0}

async def active(rng, deadline):
    while time.monotonic() < deadline:
        try:
            async with websockets.connect(URL, max_size=None, open_timeout=5,
                                          close_timeout=1) as ws:
                stats["sessions"] += 1
                for _ in range(rng.randint(1, 30)):
                    if time.monotonic() >= deadline:
                        break
                    op = rng.choice(OPS)
                    await ws.send(op + "-" + str(rng.random()))
                    try:
                        while True:
                            m = await asyncio.wait_for(ws.recv(), 0.05)
                            if isinstance(m, str) and m.startswith("e-"):
                                stats["echoes"] += 1
                    except asyncio.TimeoutError:
                        pass
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError,
                websockets.InvalidStatusCode, websockets.InvalidHandshake):
            stats["closed"] += 1
        await asyncio.sleep(0)

def frame(payload):
    key = os.urandom(4)
    data = bytes(b ^ key[i % 4] for i, b in enumerate(payload.encode()))
    return bytes([0x81, 0x80 | len(data)]) + key + data

async def mute(rng, deadline):
    # peers that never read: their queues fill, they get dropped
    while time.monotonic() < deadline:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", PORT)), 5)
            key = base64.b64encode(os.urandom(16)).decode()
            req = ("GET /chaos HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n" % key)
            await loop.sock_sendall(s, req.encode())
            for _ in range(rng.randint(1, 5)):
                await asyncio.wait_for(loop.sock_sendall(s, frame(rng.choice("bkpo") + "-m")), 2)
                await asyncio.sleep(rng.random() * 0.2)
            stats["mute"] += 1
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            s.close()

async def main():
    deadline = time.monotonic() + SECONDS
    rng = random.Random(12)
    tasks = [active(random.Random(rng.random()), deadline) for _ in range(30)]
    tasks += [mute(random.Random(rng.random()), deadline) for _ in range(8)]
    await asyncio.gather(*tasks)
    print(json.dumps(stats))

asyncio.run(main())
]=]

describe("lifecycle stress", function()
    local s, app
    after_each(function()
        if s then s:stop() end
        s = nil
        if app then os.execute("rm -rf " .. app) end
        app = nil
    end)

    it("survives random overflows, closes, publishes to closing peers and errors, then serves", function()
        app = server.tmpname("-app")
        assert(os.execute("mkdir -p " .. app))
        server.write_file(app .. "/chaos.lua", APP)
        server.write_file(app .. "/echo.lua",
            "return { message = function(ws, m) ws:send(m) end }\n")
        s = server.start{ app = app,
            env = { ASAN_OPTIONS = "detect_leaks=1:abort_on_error=1:quarantine_size_mb=16" },
            args = { "--out-high", "50000", "--out-low", "10000", "--out-max", "100000",
                     "--close-timeout", "1" } }
        local res = server.python(DRIVER, s.port, 8)
        assert.is_true(res.sessions > 50, "sessions: " .. tostring(res.sessions))
        assert.is_true(res.echoes > 50, "echoes: " .. tostring(res.echoes))
        assert.is_true(s:running())
        -- afterwards every new connection is answered
        for i = 1, 20 do
            local c = rawws.open(s.port, "/echo")
            c.timeout = 5
            assert.are.equal("after " .. i, c:echo("after " .. i))
            c:close()
        end
        local log = s:log()
        assert.truthy(log:find("past %-%-out%-max"), "no connection went past --out-max")
        assert.truthy(log:find("boom"), "no handler raised")
    end)
end)
