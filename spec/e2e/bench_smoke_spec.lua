-- A short run of each sbload mode against the real server: each completes,
-- verifies what it checks, and reports sane numbers. No speed thresholds.
local server = require "server"
local redis_srv = require "redis"
local cjson = require "cjson"

local root = os.getenv("SB_ROOT") or "."
local sbload_bin = (os.getenv("SB_BUILD") or (root .. "/build")) .. "/sbload"

-- Runs sbload with --json; returns the decoded report, or nil and the output.
local function sbload(fmt, ...)
    local cmd = ("%s " .. fmt .. " --json 2>&1"):format(sbload_bin, ...)
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    local ok = p:close()
    if not ok then
        return nil, out
    end
    local decoded, report = pcall(cjson.decode, out)
    assert(decoded, "sbload printed no JSON: " .. out)
    return report
end

local function assert_latency(r, prefix)
    local p50, p99, p999 = r[prefix .. "_p50_us"], r[prefix .. "_p99_us"], r[prefix .. "_p999_us"]
    assert.is_true(p50 > 0, "p50 > 0")
    assert.is_true(p50 <= p99 and p99 <= p999, "p50 <= p99 <= p99.9")
end

describe("sbload against switchboard", function()
    local s

    setup(function()
        s = server.start { app = root .. "/bench/app" }
    end)

    teardown(function()
        if s then
            s:stop()
        end
    end)

    it("echo round-trips text messages, verifies them and reports a rate and latency", function()
        local r, err = sbload("echo --url ws://127.0.0.1:%d/echo -c 4 -d 4 -s 32 -t 0.5", s.port)
        assert.is_truthy(r, err)
        assert.is_true(r.messages > 0)
        assert.is_true(r.msgs_per_s > 0)
        assert_latency(r, "rtt")
        assert.is_nil(r.server_cpu_util)
    end)

    it("echo --pid reports the server's CPU time per message over the measured window", function()
        local r, err = sbload("echo --url ws://127.0.0.1:%d/echo -c 20 -d 16 -s 32 -t 1 --pid %d",
            s.port, s.pid)
        assert.is_truthy(r, err)
        assert.is_true(r.server_cpu_util > 0 and r.server_cpu_util <= 1.2, r.server_cpu_util)
        assert.is_true(r.server_cpu_ns_per_msg > 0)
    end)

    it("echo stops after -n binary messages of 64 KiB", function()
        local r, err = sbload("echo --url ws://127.0.0.1:%d/echo -c 2 -d 2 -s 65536 --binary -n 40",
            s.port)
        assert.is_truthy(r, err)
        assert.are.equal(40, r.messages)
    end)

    it("fanout delivers every published message to every subscriber", function()
        local r, err = sbload("fanout --url ws://127.0.0.1:%d/fanout -c 20 -d 4 -n 100", s.port)
        assert.is_truthy(r, err)
        assert.are.equal(100, r.published)
        assert.are.equal(100 * 20, r.deliveries)
        assert_latency(r, "delivery")
    end)

    it("connect holds connections over two processes and reports memory per connection", function()
        local r, err = sbload("connect --url ws://127.0.0.1:%d/echo -c 200 --procs 2 --src 2 "
            .. "--hold 0.2 --pid %d", s.port, s.pid)
        assert.is_truthy(r, err)
        assert.are.equal(200, r.conns)
        assert.is_true(r.handshakes_per_s > 0)
        assert.is_true(r.rss_after_kib >= r.rss_before_kib)
        assert.is_number(r.bytes_per_conn)
    end)

    it("fanout on a topic that keeps history (?history=1) still checks every delivery", function()
        local r, err = sbload("fanout --url ws://127.0.0.1:%d/fanout?history=1 -c 20 -d 4 -n 300", s.port)
        assert.is_truthy(r, err)
        assert.are.equal(300, r.published)
        assert.are.equal(300 * 20, r.deliveries)
    end)

    it("recover: every client of a storm gets exactly the messages it missed, with positions", function()
        local r, err = sbload("recover --url ws://127.0.0.1:%d/recover -c 300 -n 20 --window 50 --pid %d",
            s.port, s.pid)
        assert.is_truthy(r, err)
        assert.are.equal(300, r.clients)
        assert.are.equal(20, r.missed)
        assert.are.equal(40, r.published)
        assert.are.equal(20, r.since) -- a new topic: positions 1..40, the clients saw 1..20
        assert.are.equal(300 * 20, r.deliveries)
        assert.is_true(r.seconds > 0 and r.open_seconds <= r.seconds)
        assert.is_true(r.server_cpu_s >= 0)
        assert_latency(r, "recover")
        -- a second storm on a new topic of the same server starts at position 1 again
        r, err = sbload("recover --url ws://127.0.0.1:%d/recover -c 5 -n 3", s.port)
        assert.is_truthy(r, err)
        assert.are.equal(3, r.since)
    end)

    it("recover fails when what comes back carries no position (an echo)", function()
        local r, out = sbload("recover --url ws://127.0.0.1:%d/echo -c 2 -n 2 --timeout 5", s.port)
        assert.is_nil(r)
        assert.matches("not \"<message> <position> <epoch>\"", out)
    end)

    it("fails with a clear message when the route does not exist", function()
        local r, out = sbload("echo --url ws://127.0.0.1:%d/no-such-route -c 1 -n 1", s.port)
        assert.is_nil(r)
        assert.matches("handshake refused", out)
    end)
end)

describe("sbload over wss://, with permessage-deflate, across processes", function()
    local s, tls_port, dir

    setup(function()
        dir = server.tmpname("-sbtls")
        s = server.start { app = root .. "/bench/app", args = { "--tls-self-signed", dir,
            "--listen-tls", "127.0.0.1:0" } }
        tls_port = tonumber(s:wait_log("listening on 127%.0%.0%.1:(%d+) %(wss://"))
    end)

    teardown(function()
        if s then
            s:stop()
        end
        os.execute("rm -rf " .. dir)
    end)

    it("echo over wss:// (TLS 1.3) verifies small and 64 KiB messages", function()
        local r, err = sbload("echo --url wss://127.0.0.1:%d/echo -c 4 -d 4 -s 32 -n 400", tls_port)
        assert.is_truthy(r, err)
        assert.are.equal(400, r.messages)
        assert.are.equal("TLSv1.3 TLS_AES_128_GCM_SHA256", r.tls)
        r, err = sbload("echo --url wss://127.0.0.1:%d/echo -c 2 -d 2 -s 65536 -n 20", tls_port)
        assert.is_truthy(r, err)
        assert.are.equal(20, r.messages)
    end)

    it("echo of JSON documents counts the bytes on the wire, fewer once compressed", function()
        local plain, err = sbload("echo --url ws://127.0.0.1:%d/echo -c 2 -d 2 -s 256 --payload json -n 200",
            s.port)
        assert.is_truthy(plain, err)
        assert.are.equal(260, plain.wire_bytes_per_msg) -- 2 + 2 header bytes, 256 payload
        local z
        z, err = sbload("echo --url ws://127.0.0.1:%d/echo -c 2 -d 2 -s 256 --payload json --deflate -n 200",
            s.port)
        assert.is_truthy(z, err)
        assert.are.equal(200, z.messages)
        assert.is_true(z.wire_bytes_per_msg > 10 and z.wire_bytes_per_msg < 200, z.wire_bytes_per_msg)
    end)

    it("fanout spreads subscribers over processes and checks every delivery", function()
        local r, err = sbload("fanout --url ws://127.0.0.1:%d/fanout -c 40 -d 4 -n 50 --procs 2 --src 2",
            s.port)
        assert.is_truthy(r, err)
        assert.are.equal(50, r.published)
        assert.are.equal(50 * 40, r.deliveries)
    end)
end)

describe("sbload connect --echo --term against --workers 2", function()
    it("sees every connection echo once, then close with 1001 on SIGTERM", function()
        local s = server.start { app = root .. "/bench/app", args = { "--workers", "2" } }
        local ok, e = pcall(function()
            local r, err = sbload("connect --url ws://127.0.0.1:%d/echo -c 300 --procs 2 --src 2 "
                .. "--hold 0.2 --echo --term --pid %d", s.port, s.pid)
            assert.is_truthy(r, err)
            assert.are.equal(300, r.echoed)
            assert.are.equal(300, r.closed_1001)
            assert.are.equal(3, r.server_processes) -- the supervisor and its two workers
            assert.is_true(r.term_first_close_s >= 0 and r.term_first_close_s <= r.term_last_close_s)
            assert.is_true(r.term_last_close_s <= r.term_all_gone_s)
            local how, code = s:wait_exit(15)
            assert.are.equal("exited", how)
            assert.are.equal(0, code)
        end)
        s:stop()
        assert(ok, e)
    end)
end)

describe("sbload recover against --workers 2 --redis", function()
    it("recovers every client from the history in Redis, on either worker", function()
        local red = redis_srv.start()
        local s = server.start { app = root .. "/bench/app", args = { "--workers", "2", "--redis",
            ("redis://127.0.0.1:%d"):format(red.port) } }
        local ok, e = pcall(function()
            server.wait_for(function() -- both workers (a publish is dropped while Redis is away)
                local _, n = s:log():gsub("redis: connected", "")
                return n >= 2
            end, 10, "both workers connected to Redis")
            local r, err = sbload("recover --url ws://127.0.0.1:%d/recover -c 200 -n 30 --timeout 30 --pid %d",
                s.port, s.pid)
            assert.is_truthy(r, err)
            assert.are.equal(200 * 30, r.deliveries)
            assert.are.equal(12, #r.epoch) -- an epoch made by Redis
            r, err = sbload("fanout --url ws://127.0.0.1:%d/fanout?history=1 -c 20 -d 4 -n 100", s.port)
            assert.is_truthy(r, err)
            assert.are.equal(100 * 20, r.deliveries)
        end)
        s:stop()
        redis_srv.stop(red)
        assert(ok, e)
    end)
end)
