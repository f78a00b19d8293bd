-- TLS end to end: wss:// and https:// with a certificate made by the test
-- (openssl CLI), Python websockets with an ssl context, what a TLS port does
-- with plain HTTP, garbage and a stalled handshake, protocol versions,
-- certificate reload on SIGHUP with a connection kept open, start-up errors.
local server = require "server"
local rawws = require "rawws"
local proc = require "sbt_proc"


local function sh(cmd)
    local p = io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("a")
    p:close()
    return out, tonumber(out:match("rc=(%d+)%s*$"))
end

local function make_cert(dir, name, cn)
    local _, rc = sh(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        .. "-keyout %s/%s.key -out %s/%s.pem -days 2 -subj /CN=%s "
        .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1"):format(dir, name, dir, name, cn))
    assert.are.equal(0, rc)
    return dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
end

local function tls_port(s)
    return tonumber(s:wait_log("listening on 127%.0%.0%.1:(%d+) %(wss://"))
end

local python = server.python

describe("TLS", function()
    local dir, cert, key, cert2, key2
    local s, port
    setup(function()
        dir = server.tmpname("-tls")
        assert(os.execute("mkdir -p " .. dir))
        cert, key = make_cert(dir, "one", "first.localhost")
        cert2, key2 = make_cert(dir, "two", "second.localhost")
        -- the files the server is started with; the reload spec overwrites them
        assert(os.execute(("cp %s %s/live.pem && cp %s %s/live.key && cat %s %s > %s/both.pem")
            :format(cert, dir, key, dir, cert, cert2, dir)))
        s = server.start{ args = { "--listen-tls", "127.0.0.1:0", "--tls-cert", dir .. "/live.pem",
                                   "--tls-key", dir .. "/live.key", "--handshake-timeout", "1" } }
        port = tls_port(s)
    end)
    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf " .. dir)
    end)

    it("serves wss:// and https:// beside ws:// to Python with an ssl context", function()
        local res = python([==[
import asyncio, json, ssl, sys, urllib.request, websockets
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.set_alpn_protocols(["http/1.1"])
async def main():
    out = {}
    async with websockets.connect("wss://localhost:%s/echo" % sys.argv[2], ssl=ctx, max_size=None) as ws:
        so = ws.transport.get_extra_info("ssl_object")
        out["version"], out["alpn"] = so.version(), so.selected_alpn_protocol()
        out["cipher"] = so.cipher()[0]
        out["ext"] = ws.response_headers.get("Sec-WebSocket-Extensions")
        out["echo"] = []
        for msg in ["", "hello over tls", "x" * 70000, bytes(range(256)) * 4096]:
            await ws.send(msg)
            out["echo"].append(await ws.recv() == msg)
    async with websockets.connect("ws://127.0.0.1:%s/echo" % sys.argv[3]) as ws:
        await ws.send("plain")
        out["plain"] = await ws.recv()
    body = urllib.request.urlopen("https://localhost:%s/" % sys.argv[2], context=ctx).read()
    out["https"] = b"<html" in body.lower() or b"<!doctype" in body.lower()
    print(json.dumps(out))
asyncio.run(main())
]==], dir .. "/both.pem", port, s.port)
        assert.are.same({ true, true, true, true }, res.echo)
        assert.are.equal("permessage-deflate", res.ext)
        assert.are.equal("TLSv1.3", res.version)
        assert.are.equal("http/1.1", res.alpn)
        assert.are.equal("plain", res.plain)
        assert.is_true(res.https)
    end)

    it("closes a client that speaks plain HTTP or garbage to the TLS port, and serves others", function()
        for _, bytes in ipairs({ "GET / HTTP/1.1\r\nHost: x\r\n\r\n", ("\0\255garbage"):rep(100) }) do
            local c = rawws.connect(port)
            c:send(bytes)
            local t0 = proc.now()
            assert.is_true(c:eof(5), "the TLS port should close the connection")
            assert.is_true(proc.now() - t0 < 1, "closed at once, not by the timeout")
            assert.is_nil(c.buf:find("HTTP/", 1, true), "no HTTP answer on the TLS port")
            c:close()
        end
        local c = rawws.open(s.port, "/echo")
        assert.are.equal("still here", (c:echo("still here")))
        c:close()
    end)

    it("closes a stalled TLS handshake after --handshake-timeout", function()
        local idle = rawws.connect(port)
        local partial = rawws.connect(port)
        partial:send("\22\3\1\2\0\1\0\1\252\3\3") -- the start of a ClientHello, then nothing
        local t0 = proc.now()
        assert.is_true(idle:eof(5))
        assert.is_true(partial:eof(5))
        local took = proc.now() - t0
        assert.is_true(took >= 0.5 and took < 3.5, "closed after " .. took .. " s")
        idle:close()
        partial:close()
    end)

    it("speaks TLS 1.2 and 1.3 with forward-secret AEAD ciphers only, and refuses TLS 1.1", function()
        local out, rc = sh(("openssl s_client -connect 127.0.0.1:%d -tls1_1 </dev/null"):format(port))
        assert.is_true(rc ~= 0, out)
        assert.is_truthy(out:find("Cipher is %(NONE%)") or out:find("no protocols available"), out)
        out = sh(("openssl s_client -connect 127.0.0.1:%d -tls1_2 -alpn http/1.1 </dev/null"):format(port))
        assert.matches("Protocol%s*: TLSv1%.2", out)
        assert.matches("Cipher is ECDHE%-[%w%-]+%-GCM%-SHA%d+", out)
        assert.matches("ALPN protocol: http/1%.1", out)
        local weak_ciphers = { "AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA",
                               "AES256-GCM-SHA384", "DHE-RSA-AES128-GCM-SHA256" }
        for _, weak in ipairs(weak_ciphers) do
            out, rc = sh(("openssl s_client -connect 127.0.0.1:%d -tls1_2 -cipher %s </dev/null")
                :format(port, weak))
            assert.is_true(rc ~= 0, weak .. " was accepted:\n" .. out)
        end
    end)

    it("reloads the certificate on SIGHUP for new connections, keeping open ones", function()
        local res = python([==[
import asyncio, json, os, shutil, signal, ssl, sys, websockets
ctx = ssl.create_default_context(cafile=sys.argv[1])
def subject(ws):
    cert = ws.transport.get_extra_info("ssl_object").getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"], cert["serialNumber"]
async def main():
    url = "wss://localhost:%s/echo" % sys.argv[2]
    out = {}
    async with websockets.connect(url, ssl=ctx) as old:
        out["before"] = subject(old)
        shutil.copy(sys.argv[4], sys.argv[6]); shutil.copy(sys.argv[5], sys.argv[7])
        os.kill(int(sys.argv[3]), signal.SIGHUP)
        for _ in range(200):
            async with websockets.connect(url, ssl=ctx) as new:
                out["after"] = subject(new)
                await new.send("new")
                out["new_echo"] = await new.recv()
            if out["after"] != out["before"]:
                break
            await asyncio.sleep(0.025)
        await old.send("still open")
        out["old_echo"] = await old.recv()
        out["old_cert"] = subject(old)
    print(json.dumps(out))
asyncio.run(main())
]==], dir .. "/both.pem", port, s.pid, cert2, key2, dir .. "/live.pem", dir .. "/live.key")
        assert.are.equal("first.localhost", res.before[1])
        assert.are.equal("second.localhost", res.after[1])
        assert.are_not.equal(res.before[2], res.after[2])
        assert.are.equal("new", res.new_echo)
        assert.are.equal("still open", res.old_echo)
        assert.are.same(res.before, res.old_cert)
        assert.matches("TLS: reloaded [^\n]*live%.pem %(subject /CN=second%.localhost", s:log())
    end)
end)

describe("TLS start-up errors", function()
    local dir, cert, key, other_key
    setup(function()
        dir = server.tmpname("-tlsbad")
        assert(os.execute("mkdir -p " .. dir))
        cert, key = make_cert(dir, "a", "a.localhost")
        local _
        _, other_key = make_cert(dir, "b", "b.localhost")
        local f = assert(io.open(dir .. "/junk.pem", "w"))
        f:write("this is not PEM\n")
        f:close()
    end)
    teardown(function() os.execute("rm -rf " .. dir) end)

    local function start_fails(c, k)
        local s = server.start{ expect_exit = true,
            args = { "--listen-tls", "127.0.0.1:0", "--tls-cert", c, "--tls-key", k } }
        local how, code = s:wait_exit(10)
        local log = s:stop()
        assert.are.equal("exited", how)
        assert.are_not.equal(0, code)
        return log
    end

    it("names a missing certificate or key file", function()
        assert.matches("%-%-tls%-cert " .. dir:gsub("%p", "%%%0") .. "/nope%.pem: No such file",
            start_fails(dir .. "/nope.pem", key))
        assert.matches("%-%-tls%-key " .. dir:gsub("%p", "%%%0") .. "/nope%.key: No such file",
            start_fails(cert, dir .. "/nope.key"))
    end)

    it("names a file that is not PEM", function()
        assert.matches("junk%.pem: not a usable PEM certificate", start_fails(dir .. "/junk.pem", key))
        assert.matches("junk%.pem: not a usable PEM private key", start_fails(cert, dir .. "/junk.pem"))
    end)

    it("names both files when the key does not match the certificate", function()
        local log = start_fails(cert, other_key)
        assert.matches("b%.key does not match the certificate in %-%-tls%-cert [^\n]*a%.pem", log)
    end)

    it("creates a self-signed pair on first run with --tls-self-signed and reuses it", function()
        local ssdir = dir .. "/self"
        local s = server.start{ args = { "--tls-self-signed", ssdir, "--listen-tls", "127.0.0.1:0" } }
        local ok, err = pcall(function()
            local p = tls_port(s)
            assert.matches("wrote a self%-signed certificate", s:log())
            local out = sh(("openssl s_client -connect 127.0.0.1:%d </dev/null"):format(p))
            assert.matches("subject=O = switchboard, CN = localhost", out)
            out = sh(("openssl x509 -in %s/cert.pem -noout -ext subjectAltName"):format(ssdir))
            assert.matches("DNS:localhost, IP Address:127%.0%.0%.1", out)
        end)
        s:stop()
        assert(ok, err)
        local before = server.read_file(ssdir .. "/cert.pem")
        s = server.start{ args = { "--tls-self-signed", ssdir, "--listen-tls", "127.0.0.1:0" } }
        tls_port(s)
        s:stop()
        assert.are.equal(before, server.read_file(ssdir .. "/cert.pem"))
    end)
end)


describe("TLS fan-out", function()
    local dir, s, port
    setup(function()
        dir = server.tmpname("-tlsfan")
        assert(os.execute("mkdir -p " .. dir))
        make_cert(dir, "c", "localhost")
        s = server.start{ app = "bench/app", args = { "--listen-tls", "127.0.0.1:0", "--tls-cert",
            dir .. "/c.pem", "--tls-key", dir .. "/c.key" } }
        port = tls_port(s)
    end)
    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf " .. dir)
    end)

    -- Many small published frames queue up for a wss subscriber and leave
    -- together (copied into one TLS record): every one arrives, in order.
    it("delivers a burst of small publishes to wss subscribers intact and in order", function()
        local res = python([==[
import ssl
ctx = ssl.create_default_context(cafile=sys.argv[1])
N = 3000
async def main():
    subs = []
    for compression in (None, "deflate"):
        subs.append(await websockets.connect("wss://localhost:%s/fanout?role=sub" % sys.argv[2],
                                             ssl=ctx, compression=compression, max_queue=None))
    pub = await websockets.connect("ws://127.0.0.1:%s/fanout?role=pub" % sys.argv[3])
    for i in range(N):
        await pub.send("m%05d" % i + ("x" * (i % 200)))
    out = {"ok": []}
    for ws in subs:
        got = [await asyncio.wait_for(ws.recv(), 20) for _ in range(N)]
        out["ok"].append(got == ["m%05d" % i + ("x" * (i % 200)) for i in range(N)])
        await ws.close()
    await pub.close()
    print(json.dumps(out))
asyncio.run(main())
]==], dir .. "/c.pem", port, s.port)
        assert.are.same({ true, true }, res.ok)
    end)
end)
