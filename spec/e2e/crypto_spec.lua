-- switchboard.crypto and switchboard.jwt, run twice: on the real server
-- (OpenSSL, core/script_crypto.c) and on switchboard.testing's fake (plain
-- Lua), with published test vectors and with tokens signed here by the
-- `openssl` command, so that neither side checks itself.
local server = require "server"
local rawws = require "rawws"
local testing = require "switchboard.testing"
local cjson = require "cjson"

-- The route: POST a JSON call { fn = "crypto.sha256" | "jwt.verify" | ..., args = {...} }
-- (strings "x:HEX" are bytes, "s:TEXT" text, null is nil); the answer is
-- { ok = true, r = { results } } with strings as "x:HEX", or { ok = false, err = message }.
local SCRIPT = [[
local sb = require "switchboard"
local json = sb.json

local function arg(v)
    if v == json.null then return nil end
    if type(v) == "string" then
        local kind, rest = v:sub(1, 2), v:sub(3)
        if kind == "x:" then return (rest:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)) end
        return rest
    end
    return v
end

local function result(v)
    if type(v) == "string" then return "x:" .. sb.crypto.hex(v) end
    if v == nil then return "nil" end
    return v
end

return {
    request = function(req)
        local call = json.decode(req.body)
        local lib, name = call.fn:match("^(%w+)%.([%w_]+)$")
        local args, n = {}, 0
        for i, v in ipairs(call.args) do args[i], n = arg(v), i end
        local res = table.pack(pcall(sb[lib][name], table.unpack(args, 1, n)))
        local out
        if res[1] then
            local r = {}
            for i = 2, res.n do r[i - 1] = result(res[i]) end
            out = { ok = true, r = r }
        else
            out = { ok = false, err = (tostring(res[2]):gsub("^[^\n]-:%d+: ", "")) }
        end
        return { body = json.encode(out) }
    end,
}
]]

local function tohex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function x(s) return "x:" .. tohex(s) end
local function s(t) return "s:" .. t end

local function b64url(bytes)
    local B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    local out = {}
    for i = 1, #bytes, 3 do
        local a, b, c = bytes:byte(i, i + 2)
        local v = a << 16 | (b or 0) << 8 | (c or 0)
        for j = 1, (c and 4 or b and 3 or 2) do
            local k = (v >> (18 - 6 * (j - 1))) & 63
            out[#out + 1] = B:sub(k + 1, k + 1)
        end
    end
    return table.concat(out)
end

local function sh(cmd)
    local p = io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert(ok, cmd .. ":\n" .. out)
    return out
end

local function readf(path)
    local f = assert(io.open(path, "rb"))
    local d = f:read("a")
    f:close()
    return d
end

-- r || s of a DER ECDSA signature (as `openssl dgst -sign` writes it), for JWS.
local function der_to_raw(der)
    local pos = 3
    if der:byte(2) & 0x80 ~= 0 then pos = pos + (der:byte(2) & 0x7f) end
    local parts = {}
    for i = 1, 2 do
        assert(der:byte(pos) == 2)
        local len = der:byte(pos + 1)
        local v = der:sub(pos + 2, pos + 1 + len):gsub("^%z+", "")
        parts[i] = ("\0"):rep(32 - #v) .. v
        pos = pos + 2 + len
    end
    return parts[1] .. parts[2]
end

local dir -- keys and temporary files

-- A token signed by the openssl command. header: a JSON text (or a table);
-- alg: "HS256" (key: the secret), "RS256" or "ES256" (key: a private key file).
local function token(alg, claims, key, header)
    header = header or cjson.encode({ alg = alg, typ = "JWT" })
    local signing = b64url(header) .. "." .. b64url(type(claims) == "string" and claims or cjson.encode(claims))
    local data = dir .. "/data"
    server.write_file(data, signing)
    local sig
    if alg == "HS256" then
        sh(("openssl dgst -sha256 -mac HMAC -macopt hexkey:%s -binary %s > %s/sig"):format(tohex(key), data, dir))
        sig = readf(dir .. "/sig")
    else
        sh(("openssl dgst -sha256 -sign %s -binary %s > %s/sig"):format(key, data, dir))
        sig = readf(dir .. "/sig")
        if alg == "ES256" then sig = der_to_raw(sig) end
    end
    return signing .. "." .. b64url(sig)
end

local function fake_side(appdir)
    local route = testing.app(appdir):load("crypto")
    return {
        call = function(body)
            return route:request{ method = "POST", body = body }.body
        end,
        stop = function() end,
    }
end

local function real_side(appdir)
    local srv = server.start{ app = appdir, args = { "--no-watch" } }
    return {
        call = function(body)
            local _, _, res = rawws.http(srv.port, ("POST /crypto HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(#body, body))
            return res
        end,
        stop = function() srv:stop() end,
    }
end

for _, which in ipairs({ "the server", "switchboard.testing" }) do
    describe("switchboard.crypto and jwt on " .. which, function()
        local side, rsa_pub, ec_pub, rsa_key, ec_key
        local now = os.time()

        -- call("crypto.sha256", x("abc")) -> the results, or raises the error text
        local function call(fn, ...)
            local args = table.pack(...)
            for i = 1, args.n do if args[i] == nil then args[i] = cjson.null end end
            args.n = nil
            local out = cjson.decode(side.call(cjson.encode({ fn = fn, args = args })))
            if not out.ok then error(out.err, 0) end
            return table.unpack(out.r)
        end

        local function raises(msg, fn, ...)
            local ok, err = pcall(call, fn, ...)
            assert.is_false(ok)
            assert.equal(msg, err)
        end

        setup(function()
            dir = server.tmpname("-crypto")
            assert(os.execute("mkdir -p '" .. dir .. "'"))
            server.write_file(dir .. "/crypto.lua", SCRIPT)
            rsa_key, ec_key = dir .. "/rsa.pem", dir .. "/ec.pem"
            sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s"):format(rsa_key))
            sh(("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s"):format(ec_key))
            rsa_pub = sh(("openssl pkey -in %s -pubout"):format(rsa_key))
            ec_pub = sh(("openssl pkey -in %s -pubout"):format(ec_key))
            side = (which == "the server" and real_side or fake_side)(dir)
        end)

        teardown(function()
            if side then side.stop() end
            os.execute("rm -rf '" .. dir .. "'")
        end)

        it("hashes with SHA-256 (FIPS 180-2 vectors)", function()
            assert.equal(x(string.char(0xe3, 0xb0, 0xc4, 0x42)), call("crypto.sha256", s("")):sub(1, 10))
            assert.equal("x:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                call("crypto.sha256", s("abc")))
            assert.equal("x:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                call("crypto.sha256", s("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
            assert.equal("x:" .. tohex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
                call("crypto.hex", call("crypto.sha256", s("abc"))))
        end)

        it("computes HMAC-SHA256 (RFC 4231 test cases 1-4, 6, 7)", function()
            local cases = {
                { ("\11"):rep(20), "Hi There",
                  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
                { "Jefe", "what do ya want for nothing?",
                  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
                { ("\170"):rep(20), ("\221"):rep(50),
                  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
                { string.char(table.unpack((function() local t = {} for i = 1, 25 do t[i] = i end return t end)())),
                  ("\205"):rep(50), "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
                { ("\170"):rep(131), "Test Using Larger Than Block-Size Key - Hash Key First",
                  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
                { ("\170"):rep(131), "This is a test using a larger than block-size key and a larger than "
                  .. "block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
            }
            for i, c in ipairs(cases) do
                assert.equal("x:" .. c[3], call("crypto.hmac_sha256", x(c[1]), x(c[2])), "case " .. i)
            end
        end)

        it("encodes and decodes base64url without padding (RFC 4648 vectors)", function()
            local vectors = { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg",
                fooba = "Zm9vYmE", foobar = "Zm9vYmFy", ["\251\255\191"] = "-_-_" }
            for plain, enc in pairs(vectors) do
                assert.equal(x(enc), call("crypto.base64url_encode", x(plain)))
                assert.equal(x(plain), call("crypto.base64url_decode", s(enc)))
            end
            assert.equal(x("f"), call("crypto.base64url_decode", s("Zg==")))
            for _, bad in ipairs({ "Z", "Zm9v!", "Zm+v", "Zm9/", "Zg=", "=", "Zm9vY" }) do
                assert.same({ "nil", "x:" .. tohex("invalid base64url") },
                    { call("crypto.base64url_decode", s(bad)) }, bad)
            end
        end)

        it("gives random bytes, and refuses counts outside 1..65536", function()
            local a, b = call("crypto.random", 32), call("crypto.random", 32)
            assert.equal(2 + 64, #a)
            assert.not_equal(a, b)
            assert.equal(2 + 2 * 65536, #call("crypto.random", 65536))
            local msg = "bad argument #1 to 'random' (byte count must be an integer from 1 to 65536)"
            raises(msg, "crypto.random", 0)
            raises(msg, "crypto.random", 65537)
            raises(msg, "crypto.random", 1.5)
            raises("bad argument #1 to 'random' (number expected, got string)", "crypto.random", s("8"))
        end)

        it("compares strings in constant time", function()
            assert.is_true(call("crypto.equal", s("secret"), s("secret")))
            assert.is_false(call("crypto.equal", s("secret"), s("secreT")))
            assert.is_false(call("crypto.equal", s("secret"), s("secret!")))
            assert.is_true(call("crypto.equal", s(""), s("")))
            raises("bad argument #2 to 'equal' (string expected, got nil)", "crypto.equal", s("a"), nil)
            raises("bad argument #1 to 'sha256' (string expected, got table)", "crypto.sha256", {})
            raises("bad argument #2 to 'hmac_sha256' (string expected, got nil)", "crypto.hmac_sha256", s("k"), nil)
        end)

        local function claims_of(r)
            assert.is_table(r)
            return r
        end

        it("verifies HS256 tokens (the jwt.io example, and openssl-signed ones)", function()
            local example = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
                .. "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
            assert.same({ sub = "1234567890", name = "John Doe", iat = 1516239022 },
                claims_of(call("jwt.verify", s(example), s("your-256-bit-secret"))))
            local t = token("HS256", { sub = "ann", exp = now + 60 }, "s3cret")
            assert.same({ sub = "ann", exp = now + 60 },
                claims_of(call("jwt.verify", s(t), s("s3cret"), { algs = { "HS256" } })))
            assert.same({ "nil", x("bad signature") }, { call("jwt.verify", s(t), s("other")) })
        end)

        it("verifies RS256 and ES256 tokens against PEM public keys", function()
            local rs = token("RS256", { sub = "rsa", aud = "chat" }, rsa_key)
            local es = token("ES256", { sub = "ec", iss = "auth" }, ec_key)
            local opts = { algs = { "RS256", "ES256" } }
            assert.same({ sub = "rsa", aud = "chat" }, claims_of(call("jwt.verify", s(rs), s(rsa_pub), opts)))
            assert.same({ sub = "ec", iss = "auth" }, claims_of(call("jwt.verify", s(es), s(ec_pub), opts)))
            -- the other key, or a key of the other type
            local other = sh(("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | "
                .. "openssl pkey -pubout"))
            assert.same({ "nil", x("bad signature") }, { call("jwt.verify", s(es), s(other), opts) })
            assert.same({ "nil", x("alg not allowed") }, { call("jwt.verify", s(rs), s(ec_pub), opts) })
            raises("bad argument #2 to 'verify' (not a PEM public key)", "jwt.verify", s(rs),
                s("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"), opts)
        end)

        it("refuses tampered tokens", function()
            local t = token("HS256", { sub = "ann", admin = false }, "k")
            local h, p, sig = t:match("^(.-)%.(.-)%.(.*)$")
            local forged = h .. "." .. b64url(cjson.encode({ sub = "ann", admin = true })) .. "." .. sig
            assert.same({ "nil", x("bad signature") }, { call("jwt.verify", s(forged), s("k")) })
            local flipped = h .. "." .. p .. "." .. (sig:sub(1, 1) == "A" and "B" or "A") .. sig:sub(2)
            assert.same({ "nil", x("bad signature") }, { call("jwt.verify", s(flipped), s("k")) })
            assert.same({ "nil", x("bad signature") }, { call("jwt.verify", s(h .. "." .. p .. "."), s("k")) })
            local es = token("ES256", { sub = "ec" }, ec_key)
            local eh, ep = es:match("^(.-)%.(.-)%.")
            assert.same({ "nil", x("bad signature") },
                { call("jwt.verify", s(eh .. "." .. ep .. "." .. b64url(("\1"):rep(64))), s(ec_pub),
                    { algs = { "ES256" } }) })
        end)

        it("refuses alg none, algs not asked for, and an HMAC made with the public key", function()
            local none = b64url('{"alg":"none","typ":"JWT"}') .. "." .. b64url('{"sub":"ann"}') .. "."
            assert.same({ "nil", x("alg not allowed") }, { call("jwt.verify", s(none), s("k")) })
            local rs = token("RS256", { sub = "rsa" }, rsa_key)
            assert.same({ "nil", x("alg not allowed") }, { call("jwt.verify", s(rs), s(rsa_pub)) }) -- HS256 only
            -- an attacker HMACs with the public key's text, hoping it is taken as a secret
            local confused = token("HS256", { sub = "admin" }, rsa_pub)
            local hs = token("HS256", { sub = "admin" }, "k")
            assert.same({ "nil", x("alg not allowed") },
                { call("jwt.verify", s(confused), s(rsa_pub), { algs = { "HS256", "RS256" } }) })
            assert.same({ "nil", x("alg not allowed") },
                { call("jwt.verify", s(hs), s(rsa_pub), { algs = { "HS256", "RS256" } }) })
        end)

        it("checks exp, nbf (with leeway), aud and iss", function()
            local function v(claims, opts)
                return { call("jwt.verify", s(token("HS256", claims, "k")), s("k"), opts) }
            end
            assert.same({ "nil", x("expired") }, v({ exp = now - 10 }))
            assert.same({ "nil", x("expired") }, v({ exp = now - 100 }, { leeway = 30 }))
            assert.same({ { exp = now - 10 } }, v({ exp = now - 10 }, { leeway = 30 }))
            assert.same({ "nil", x("not yet valid") }, v({ nbf = now + 100 }))
            assert.same({ { nbf = now + 10 } }, v({ nbf = now + 10 }, { leeway = 30 }))
            assert.same({ "nil", x("malformed") }, v({ exp = "tomorrow" }))
            assert.same({ "nil", x("wrong audience") }, v({ aud = "other" }, { aud = "chat" }))
            assert.same({ "nil", x("wrong audience") }, v({}, { aud = "chat" }))
            assert.same({ { aud = { "a", "chat" } } }, v({ aud = { "a", "chat" } }, { aud = "chat" }))
            assert.same({ { aud = "chat" } }, v({ aud = "chat" }, { aud = { "x", "chat" } }))
            assert.same({ "nil", x("wrong issuer") }, v({ iss = "evil" }, { iss = "auth" }))
            assert.same({ { iss = "auth" } }, v({ iss = "auth" }, { iss = "auth" }))
            assert.same({ { sub = "ann" } }, v({ sub = "ann" }, { aud = nil }))
        end)

        it("calls a token that is not header.payload.signature of base64url JSON malformed", function()
            local good = token("HS256", { sub = "ann" }, "k")
            local bad = { "", "abc", "a.b", good .. ".x", "!!." .. good:match("%.(.*)$"),
                b64url("not json") .. "." .. b64url("{}") .. ".x",
                b64url('{"typ":"JWT"}') .. "." .. b64url("{}") .. ".x",
                b64url('{"alg":5}') .. "." .. b64url("{}") .. ".x",
                token("HS256", { sub = "ann" }, "k", '{"alg":"HS256","crit":["exp"],"exp":1}') }
            for _, t in ipairs(bad) do
                assert.same({ "nil", x("malformed") }, { call("jwt.verify", s(t), s("k")) }, t)
            end
            assert.same({ "nil", x("malformed") }, { call("jwt.verify", s(token("HS256", "[1,2]", "k")), s("k")) })
        end)

        it("signs HS256 tokens that it and openssl agree on", function()
            local t = call("jwt.sign", { sub = "ann", n = 1 }, s("k"))
            local tok = t:sub(3):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
            assert.same({ sub = "ann", n = 1 }, claims_of(call("jwt.verify", s(tok), s("k"))))
            local signing, sig = tok:match("^(.*)%.(.-)$")
            assert.equal(b64url(sh(("printf %%s '%s' | openssl dgst -sha256 -mac HMAC -macopt key:k -binary")
                :format(signing))), sig)
            assert.equal(b64url('{"alg":"HS256","typ":"JWT"}'), signing:match("^[^.]*"))
        end)

        it("raises on misuse, naming the argument", function()
            raises("bad argument #1 to 'verify' (string expected, got nil)", "jwt.verify", nil, s("k"))
            raises("bad argument #2 to 'verify' (string expected, got nil)", "jwt.verify", s("a.b.c"), nil)
            raises("bad argument #2 to 'verify' (key must not be empty)", "jwt.verify", s("a.b.c"), s(""))
            raises("bad argument #3 to 'verify' (table expected, got string)", "jwt.verify", s("a.b.c"), s("k"), s("x"))
            raises('bad argument #3 to \'verify\' (algs may list "HS256", "RS256" and "ES256")', "jwt.verify",
                s("a.b.c"), s("k"), { algs = { "none" } })
            raises("bad argument #3 to 'verify' (leeway must be a number of seconds >= 0)", "jwt.verify",
                s("a.b.c"), s("k"), { leeway = -1 })
            raises("bad argument #1 to 'sign' (table expected, got string)", "jwt.sign", s("x"), s("k"))
            raises("bad argument #2 to 'sign' (key must not be empty)", "jwt.sign", {}, s(""))
            raises("bad argument #2 to 'sign' (HS256 signs with a secret, not a PEM key)", "jwt.sign", {}, s(rsa_pub))
        end)
    end)
end
