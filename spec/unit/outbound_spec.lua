-- The outbound layer under sb.http and sb.tcp (core/outbound.c, core/httpc.c),
-- on a private event loop through the test-only sbt_outbound module, against
-- the loopback services of spec/support/upstream.py: DNS (/etc/hosts and a name
-- that does not exist), refused ports, timeouts, TLS with a CA of the spec's own,
-- the HTTP framings and the body bound, the socket reads, concurrency.
local ob = require "sbt_outbound"
local upstream = require "upstream"

describe("outbound connections (C layer)", function()
    local up, ups, ca

    setup(function()
        ca = upstream.make_ca()
        up = upstream.start()
        ups = upstream.start{ tls = ca }
    end)

    teardown(function()
        if up then up:stop() end
        if ups then ups:stop() end
        upstream.remove_ca(ca)
    end)

    describe("HTTP", function()
        it("answers a GET with status, lower-case headers and the body", function()
            local status, headers, body = ob.http(up:url("/delay?s=0.01"))
            assert.are.equal(200, status)
            assert.are.equal("slept", body)
            assert.are.equal("text/plain", headers["content-type"])
        end)

        it("sends the method, headers and body, with Host and Content-Length", function()
            local status, _, body = ob.http(up:url("/echo?a=1"), {
                method = "POST", body = "hello", headers = { ["X-Token"] = "t1" } })
            assert.are.equal(200, status)
            local cjson = require "cjson"
            local got = cjson.decode(body)
            assert.are.equal("POST", got.method)
            assert.are.equal("hello", got.body)
            assert.are.equal("t1", got.headers["x-token"])
            assert.are.equal("5", got.headers["content-length"])
            assert.are.equal("127.0.0.1:" .. up.port, got.headers.host)
            assert.are.equal("1", got.query.a)
        end)

        it("reads chunked bodies, and bodies ended by the end of the connection", function()
            local status, headers, body = ob.http(up:url("/chunked?n=4"))
            assert.are.equal(200, status)
            assert.are.equal("chunked", headers["x-kind"])
            assert.are.equal("chunk0\nchunk1\nchunk2\nchunk3\n", body)
            local _, _, big = ob.http(up:url("/big_chunked?n=300000"))
            assert.are.equal(300000, #big)
            local _, _, y = ob.http(up:url("/close?n=7"))
            assert.are.equal("yyyyyyy", y)
        end)

        it("parses a response that arrives a byte at a time, in both framings", function()
            local status, headers, body = ob.http(up:url("/trickle"))
            assert.are.equal(201, status) -- after the 100 Continue
            assert.are.equal("spaced", headers["x-a"])
            assert.are.equal("abcdefghijk", body)
            status, headers, body = ob.http(up:url("/trickle?kind=chunked"))
            assert.are.equal(200, status)
            assert.are.equal("1", headers["x-a"])
            assert.are.equal("abcdefghijk", body)
        end)

        it("says http: when the answer is not HTTP", function()
            local res, err = ob.http("http://127.0.0.1:" .. up.echo_port .. "/")
            assert.is_nil(res)
            assert.are.equal("http: not an HTTP/1.x response", err)
        end)

        it("returns other statuses as answers, not errors", function()
            local status, _, body = ob.http(up:url("/status?code=503"))
            assert.are.equal(503, status)
            assert.are.equal("status 503", body)
        end)

        it("refuses a body past max_body, at exactly N+1 bytes, in each framing", function()
            local s, _, b = ob.http(up:url("/big?n=1000"), { max_body = 1000 })
            assert.are.equal(200, s)
            assert.are.equal(1000, #b)
            for _, path in ipairs{ "/big?n=1001", "/big_chunked?n=1001", "/close?n=1001" } do
                local res, err = ob.http(up:url(path), { max_body = 1000 })
                assert.is_nil(res, path)
                assert.are.equal("body too large", err, path)
            end
        end)

        it("resolves names from /etc/hosts and says dns: for a name that does not exist", function()
            local status = ob.http(up:url("/delay?s=0", "localhost"))
            assert.are.equal(200, status)
            local res, err = ob.http("http://no-such-host.invalid:" .. up.port .. "/", { timeout = 5 })
            assert.is_nil(res)
            assert.matches("^dns: ", err)
        end)

        it("says connection refused for a port nobody listens on", function()
            local res, err = ob.http("http://127.0.0.1:1/")
            assert.is_nil(res)
            assert.are.equal("connection refused", err)
        end)

        it("gives up with timeout when the answer does not come in time", function()
            local t0 = require("sbt_proc").now()
            local res, err = ob.http(up:url("/hang"), { timeout = 0.3 })
            local took = require("sbt_proc").now() - t0
            assert.is_nil(res)
            assert.are.equal("timeout", err)
            assert.is_true(took >= 0.29 and took < 2, tostring(took))
        end)

        it("runs 1,000 requests at once in about one service latency", function()
            local ok, secs, err = ob.http_many(up:url("/delay?s=0.2"), 1000)
            assert.is_nil(err)
            assert.are.equal(1000, ok)
            assert.is_true(secs < 2, tostring(secs)) -- serially: 200 s
        end)

        it("leaves no connection open after the requests", function()
            assert.are.equal(0, ob.open_count())
        end)
    end)

    describe("HTTPS", function()
        it("trusts a CA passed as ca, checking the name", function()
            local status, _, body = ob.http(ups:url("/delay?s=0", "localhost"), { ca = ca.ca })
            assert.are.equal(200, status)
            assert.are.equal("slept", body)
            assert.are.equal(200, (ob.http(ups:url("/chunked"), { ca = ca.ca })))
        end)

        it("refuses the certificate without the CA, and takes it with verify = false", function()
            local res, err = ob.http(ups:url("/delay?s=0", "localhost"))
            assert.is_nil(res)
            assert.matches("^tls: certificate verify failed", err)
            assert.are.equal(200, (ob.http(ups:url("/delay?s=0", "localhost"), { verify = false })))
        end)

        it("says tls: for a ca file it cannot read", function()
            local res, err = ob.http(ups:url("/"), { ca = "/nonexistent/ca.pem" })
            assert.is_nil(res)
            assert.matches("^tls: cannot load ca", err)
        end)
    end)

    describe("TCP", function()
        it("sends, and receives a line, n bytes and everything up to the end", function()
            local s = assert(ob.connect("127.0.0.1", up.echo_port))
            assert.are.equal(9, s:send("one\r\ntwo\n"))
            assert.are.equal("one", s:receive("*l"))
            assert.are.equal("tw", s:receive(2))
            assert.are.equal("o", s:receive("*l"))
            assert.are.equal(11, s:send("rest\nclose\n"))
            assert.are.equal("rest\nclosing\n", s:receive("*a"))
            local data, err, partial = s:receive("*l")
            assert.is_nil(data)
            assert.are.equal("closed", err)
            assert.are.equal("", partial)
            s:close()
        end)

        it("returns what came as the partial when the peer ends mid-read", function()
            local s = assert(ob.connect("localhost", up.echo_port))
            s:send("abc\nclose\n")
            local data, err, partial = s:receive(100)
            assert.is_nil(data)
            assert.are.equal("closed", err)
            assert.are.equal("abc\nclosing\n", partial)
            s:close()
        end)

        it("times out a read that gets nothing", function()
            local s = assert(ob.connect("127.0.0.1", up.echo_port))
            local data, err = s:receive(1, 0.1)
            assert.is_nil(data)
            assert.are.equal("timeout", err)
            s:close()
        end)

        it("bounds a line and *a by max", function()
            local s = assert(ob.connect("127.0.0.1", up.echo_port))
            s:send(("z"):rep(5000))
            local data, err = s:receive("*l", 2, 1000)
            assert.is_nil(data)
            assert.are.equal("too large", err)
            s:close()
        end)

        it("talks TLS with the spec's CA and checks server_name", function()
            local s = assert(ob.connect("localhost", ups.echo_port, { tls = true, ca = ca.ca }))
            s:send("hi\n")
            assert.are.equal("hi", s:receive("*l"))
            s:close()
            local none, err = ob.connect("127.0.0.1", ups.echo_port,
                { tls = true, ca = ca.ca, server_name = "other.example" })
            assert.is_nil(none)
            assert.matches("^tls: certificate verify failed: hostname mismatch", err)
        end)

        it("says connection refused", function()
            local s, err = ob.connect("127.0.0.1", 1)
            assert.is_nil(s)
            assert.are.equal("connection refused", err)
        end)
    end)
end)
