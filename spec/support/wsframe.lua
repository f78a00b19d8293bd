-- Builds WebSocket frames as a client sends them (masked), for specs that
-- feed codecs and servers. Pure Lua, independent of the C encoder.
--
--   wsframe.frame(opcode, payload, opts)
--     opts.fin (default true), opts.rsv1, opts.rsv2, opts.rsv3,
--     opts.key (4 bytes, default wsframe.KEY), opts.unmasked,
--     opts.len (declared length, default #payload),
--     opts.form ("7", "16" or "64": force a length encoding, minimal or not)
--   wsframe.text / binary / cont / ping / pong (payload, opts)
--   wsframe.close(code, reason, opts)  -- code nil: empty payload
local wsframe = {}

wsframe.KEY = "\x37\xfa\x21\x3d"

wsframe.CONT, wsframe.TEXT, wsframe.BINARY = 0, 1, 2
wsframe.CLOSE, wsframe.PING, wsframe.PONG = 8, 9, 10

function wsframe.mask(payload, key, off)
    local k = { key:byte(1, 4) }
    off = off or 0
    local out = {}
    for i = 1, #payload do
        out[i] = string.char(payload:byte(i) ~ k[(i - 1 + off) % 4 + 1])
    end
    return table.concat(out)
end

local function be(n, bytes)
    local t = {}
    for i = bytes, 1, -1 do
        t[i] = string.char(n & 0xff)
        n = n >> 8
    end
    return table.concat(t)
end
wsframe.be = be

function wsframe.frame(opcode, payload, opts)
    opts = opts or {}
    payload = payload or ""
    local fin = opts.fin == nil or opts.fin
    local b0 = opcode | (fin and 0x80 or 0) | (opts.rsv1 and 0x40 or 0)
        | (opts.rsv2 and 0x20 or 0) | (opts.rsv3 and 0x10 or 0)
    local len = opts.len or #payload
    local form = opts.form or (len < 126 and "7" or len < 65536 and "16" or "64")
    local mbit = opts.unmasked and 0 or 0x80
    local hdr
    if form == "7" then
        hdr = string.char(b0, mbit | len)
    elseif form == "16" then
        hdr = string.char(b0, mbit | 126) .. be(len, 2)
    else
        hdr = string.char(b0, mbit | 127) .. be(len, 8)
    end
    if opts.unmasked then
        return hdr .. payload
    end
    local key = opts.key or wsframe.KEY
    return hdr .. key .. wsframe.mask(payload, key)
end

function wsframe.text(p, o) return wsframe.frame(1, p, o) end
function wsframe.binary(p, o) return wsframe.frame(2, p, o) end
function wsframe.cont(p, o) return wsframe.frame(0, p, o) end
function wsframe.ping(p, o) return wsframe.frame(9, p, o) end
function wsframe.pong(p, o) return wsframe.frame(10, p, o) end

function wsframe.close(code, reason, opts)
    local p = code and (be(code, 2) .. (reason or "")) or ""
    return wsframe.frame(8, p, opts)
end

return wsframe
