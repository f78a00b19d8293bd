-- switchboard.testing.crypto: the `crypto` and `jwt` tables of the fake
-- switchboard module (switchboard.testing), in plain Lua, with the server's
-- answers and errors (core/script_crypto.c). SHA-256, HMAC and base64url are
-- computed here; RS256 and ES256 signatures are checked with the `openssl`
-- command, which a spec that uses them needs on its PATH.
local crypto = {}

local _, argerror = require("switchboard.testing.errors").here()

local function typename(v, given)
    if v == nil and not given then return "no value" end
    return type(v)
end

local function check_string(fname, n, v, given)
    local tv = type(v)
    if tv == "number" then return tostring(v) end
    if tv ~= "string" then argerror(fname, n, "string expected, got " .. typename(v, given)) end
    return v
end

-- ---- SHA-256 and HMAC -----------------------------------------------------------------

local K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local M32 = 0xffffffff

local function rotr(x, n)
    return ((x >> n) | (x << (32 - n))) & M32
end

local function sha256(msg)
    local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
    local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
    local ml = #msg
    msg = msg .. "\128" .. ("\0"):rep((55 - ml) % 64) .. string.pack(">I8", ml * 8)
    local w = {}
    for chunk = 1, #msg, 64 do
        for i = 1, 16 do w[i] = string.unpack(">I4", msg, chunk + (i - 1) * 4) end
        for i = 17, 64 do
            local a, b = w[i - 15], w[i - 2]
            local s0 = rotr(a, 7) ~ rotr(a, 18) ~ (a >> 3)
            local s1 = rotr(b, 17) ~ rotr(b, 19) ~ (b >> 10)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M32
        end
        local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
        for i = 1, 64 do
            local s1 = rotr(e, 6) ~ rotr(e, 11) ~ rotr(e, 25)
            local ch = (e & f) ~ (~e & g)
            local t1 = (h + s1 + ch + K[i] + w[i]) & M32
            local s0 = rotr(a, 2) ~ rotr(a, 13) ~ rotr(a, 22)
            local maj = (a & b) ~ (a & c) ~ (b & c)
            local t2 = (s0 + maj) & M32
            h, g, f, e, d, c, b, a = g, f, e, (d + t1) & M32, c, b, a, (t1 + t2) & M32
        end
        h0, h1, h2, h3 = (h0 + a) & M32, (h1 + b) & M32, (h2 + c) & M32, (h3 + d) & M32
        h4, h5, h6, h7 = (h4 + e) & M32, (h5 + f) & M32, (h6 + g) & M32, (h7 + h) & M32
    end
    return string.pack(">I4I4I4I4I4I4I4I4", h0, h1, h2, h3, h4, h5, h6, h7)
end

local function xor_pad(key, byte)
    return (key:gsub(".", function(c) return string.char(c:byte() ~ byte) end))
end

local function hmac_sha256(key, msg)
    if #key > 64 then key = sha256(key) end
    key = key .. ("\0"):rep(64 - #key)
    return sha256(xor_pad(key, 0x5c) .. sha256(xor_pad(key, 0x36) .. msg))
end

-- ---- base64url ------------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local B64VAL = {}
for i = 1, 64 do B64VAL[B64:byte(i)] = i - 1 end

local function b64url_encode(s)
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local v = a << 16 | (b or 0) << 8 | (c or 0)
        local n = c and 4 or b and 3 or 2
        for j = 1, n do
            local k = (v >> (18 - 6 * (j - 1))) & 63
            out[#out + 1] = B64:sub(k + 1, k + 1)
        end
    end
    return table.concat(out)
end

-- The decoded bytes, or nil when s is not base64url (trailing '=' allowed).
local function b64url_decode(s)
    local body, pad = s:match("^(.-)(=?=?)$")
    if #body % 4 == 1 or (#pad > 0 and (#body + #pad) % 4 ~= 0) then return nil end
    local out, acc, bits = {}, 0, 0
    for i = 1, #body do
        local v = B64VAL[body:byte(i)]
        if not v then return nil end
        acc = (acc << 6 | v) & 0xffffff
        bits = bits + 6
        if bits >= 8 then
            bits = bits - 8
            out[#out + 1] = string.char((acc >> bits) & 0xff)
        end
    end
    return table.concat(out)
end

-- ---- the crypto table -----------------------------------------------------------------

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function random_bytes(n)
    local f = io.open("/dev/urandom", "rb")
    if f then
        local s = f:read(n)
        f:close()
        if s and #s == n then return s end
    end
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    return table.concat(t)
end

-- Returns the fake's `crypto` table.
function crypto.crypto()
    local c = {}
    function c.sha256(...)
        local s = check_string("sha256", 1, (...), select("#", ...) > 0)
        return sha256(s)
    end
    function c.hmac_sha256(...)
        local n = select("#", ...)
        local key, s = ...
        key = check_string("hmac_sha256", 1, key, n >= 1)
        s = check_string("hmac_sha256", 2, s, n >= 2)
        return hmac_sha256(key, s)
    end
    function c.random(...)
        local n = ...
        if type(n) ~= "number" then
            argerror("random", 1, "number expected, got " .. typename(n, select("#", ...) > 0))
        end
        if math.tointeger(n) == nil or n < 1 or n > 65536 then
            argerror("random", 1, "byte count must be an integer from 1 to 65536")
        end
        return random_bytes(math.tointeger(n))
    end
    function c.equal(...)
        local n = select("#", ...)
        local a, b = ...
        a = check_string("equal", 1, a, n >= 1)
        b = check_string("equal", 2, b, n >= 2)
        return a == b
    end
    function c.hex(...)
        return hex(check_string("hex", 1, (...), select("#", ...) > 0))
    end
    function c.base64url_encode(...)
        return b64url_encode(check_string("base64url_encode", 1, (...), select("#", ...) > 0))
    end
    function c.base64url_decode(...)
        local s = b64url_decode(check_string("base64url_decode", 1, (...), select("#", ...) > 0))
        if not s then return nil, "invalid base64url" end
        return s
    end
    return c
end

-- ---- JWT ------------------------------------------------------------------------------

local ALGS = { HS256 = true, RS256 = true, ES256 = true }
local RSA_OID = "\6\9\42\134\72\134\247\13\1\1\1"    -- 1.2.840.113549.1.1.1 rsaEncryption
local EC_OID = "\6\7\42\134\72\206\61\2\1"           -- 1.2.840.10045.2.1 id-ecPublicKey

-- "RSA" or "EC" for a PEM public key, or nil when it is not one.
local function key_type(pem)
    local b64 = pem:match("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-%s*(.-)%s*%-%-%-%-%-END PUBLIC KEY%-%-%-%-%-")
    if not b64 then return nil end
    b64 = b64:gsub("%s", ""):gsub("+", "-"):gsub("/", "_")
    local der = b64url_decode(b64)
    if not der then return nil end
    if der:find(RSA_OID, 1, true) then return "RSA" end
    if der:find(EC_OID, 1, true) then return "EC" end
    return nil
end

-- DER of an ECDSA signature from JWS's r || s (32 bytes each).
local function es256_der(sig)
    local function int(b)
        b = b:gsub("^%z+", "")
        if b == "" or b:byte(1) >= 0x80 then b = "\0" .. b end
        return "\2" .. string.char(#b) .. b
    end
    local body = int(sig:sub(1, 32)) .. int(sig:sub(33, 64))
    return "\48" .. string.char(#body) .. body
end

local function tmpfile(data)
    local name = os.tmpname()
    local f = assert(io.open(name, "wb"))
    f:write(data)
    f:close()
    return name
end

-- Does `sig` sign `data` under the PEM public key (SHA-256)? Asks `openssl`.
local function openssl_verify(pem, sig, data)
    local k, s, d = tmpfile(pem), tmpfile(sig), tmpfile(data)
    local p = io.popen(("openssl dgst -sha256 -verify %s -signature %s %s 2>&1"):format(k, s, d))
    local out = p:read("a")
    p:close()
    os.remove(k)
    os.remove(s)
    os.remove(d)
    if not out:find("Verified OK", 1, true) and not out:find("Verification failure", 1, true) then
        error("switchboard.testing: RS256/ES256 need the openssl command: " .. out, 0)
    end
    return out:find("Verified OK", 1, true) ~= nil
end

local function audience_ok(want, claim)
    local wants = type(want) == "table" and want or { want }
    local claims = type(claim) == "table" and claim or { claim }
    for _, w in ipairs(wants) do
        for _, c in ipairs(claims) do
            if type(w) == "string" and type(c) == "string" and w == c then return true end
        end
    end
    return false
end

-- Returns the fake's `jwt` table; json is the module's JSON table.
function crypto.jwt(json)
    local jwt = {}

    local function decode(s)
        local ok, v = pcall(json.decode, s)
        if ok then return v end
    end

    function jwt.verify(...)
        local n = select("#", ...)
        local token, key, opts = ...
        token = check_string("verify", 1, token, n >= 1)
        key = check_string("verify", 2, key, n >= 2)
        if opts ~= nil and type(opts) ~= "table" then
            argerror("verify", 3, "table expected, got " .. type(opts))
        end
        opts = opts or {}
        local allowed = { HS256 = true }
        if opts.algs ~= nil then
            if type(opts.algs) ~= "table" then argerror("verify", 3, 'algs must be a list like { "HS256" }') end
            allowed = {}
            for i = 1, #opts.algs do
                local a = opts.algs[i]
                if not ALGS[a] then argerror("verify", 3, 'algs may list "HS256", "RS256" and "ES256"') end
                allowed[a] = true
            end
            if not next(allowed) then argerror("verify", 3, "algs must not be empty") end
        end
        local leeway = opts.leeway or 0
        if type(leeway) ~= "number" or leeway ~= leeway or leeway < 0 then
            argerror("verify", 3, "leeway must be a number of seconds >= 0")
        end
        if opts.aud ~= nil and type(opts.aud) ~= "string" and type(opts.aud) ~= "number"
            and type(opts.aud) ~= "table" then
            argerror("verify", 3, "aud must be a string or a list of strings")
        end
        if opts.iss ~= nil and type(opts.iss) ~= "string" then argerror("verify", 3, "iss must be a string") end
        if key == "" then argerror("verify", 2, "key must not be empty") end
        local pem = #key > 10 and key:sub(1, 10) == "-----BEGIN"

        local h64, p64, s64 = token:match("^([^.]*)%.([^.]*)%.([^.]*)$")
        if not h64 then return nil, "malformed" end
        local hj, pj, sig = b64url_decode(h64), b64url_decode(p64), b64url_decode(s64)
        if not hj or not pj or not sig then return nil, "malformed" end
        local header = decode(hj)
        if type(header) ~= "table" or #header > 0 or type(header.alg) ~= "string" then return nil, "malformed" end
        if header.crit ~= nil then return nil, "malformed" end -- extensions we do not know
        local alg = header.alg
        if not ALGS[alg] or not allowed[alg] or (alg == "HS256") == pem then
            return nil, "alg not allowed"
        end
        local signed = h64 .. "." .. p64
        local good
        if alg == "HS256" then
            good = hmac_sha256(key, signed) == sig
        else
            local kt = key_type(key)
            if not kt then argerror("verify", 2, "not a PEM public key") end
            if kt ~= (alg == "RS256" and "RSA" or "EC") then return nil, "alg not allowed" end
            if alg == "ES256" then
                good = #sig == 64 and openssl_verify(key, es256_der(sig), signed)
            else
                good = openssl_verify(key, sig, signed)
            end
        end
        if not good then return nil, "bad signature" end
        local claims = decode(pj)
        if type(claims) ~= "table" or #claims > 0 then return nil, "malformed" end
        local now = os.time()
        if claims.exp ~= nil and type(claims.exp) ~= "number" then return nil, "malformed" end
        if claims.exp and now >= claims.exp + leeway then return nil, "expired" end
        if claims.nbf ~= nil and type(claims.nbf) ~= "number" then return nil, "malformed" end
        if claims.nbf and now + leeway < claims.nbf then return nil, "not yet valid" end
        if opts.aud ~= nil and not audience_ok(opts.aud, claims.aud) then return nil, "wrong audience" end
        if opts.iss ~= nil and claims.iss ~= opts.iss then return nil, "wrong issuer" end
        return claims
    end

    function jwt.sign(...)
        local n = select("#", ...)
        local claims, key = ...
        if type(claims) ~= "table" then
            argerror("sign", 1, "table expected, got " .. typename(claims, n >= 1))
        end
        key = check_string("sign", 2, key, n >= 2)
        if key == "" then argerror("sign", 2, "key must not be empty") end
        if #key > 10 and key:sub(1, 10) == "-----BEGIN" then
            argerror("sign", 2, "HS256 signs with a secret, not a PEM key")
        end
        local signing = b64url_encode('{"alg":"HS256","typ":"JWT"}') .. "." .. b64url_encode(json.encode(claims))
        return signing .. "." .. b64url_encode(hmac_sha256(key, signing))
    end

    return jwt
end

return crypto
