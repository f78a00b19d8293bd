-- A raw WebSocket client over a plain TCP socket (luasocket), for specs that
-- send exactly the bytes they mean: bad handshakes, bad frames, partial
-- writes. Independent of the server's own codecs.
--
--   local c = rawws.connect(port)                  -- TCP only
--   local c = rawws.open(port, "/echo")            -- + a valid handshake
--   c:send(bytes); c:recv_frame() -> {fin, opcode, payload, rsv}
--   c:recv_close() -> code, reason; c:http() -> status, headers, body
local socket = require "socket"
local wsframe = require "wsframe"

local rawws = {}
local C = {}
C.__index = C

-- opts.rcvbuf: a small receive buffer (set before connecting, so the window
-- stays small): a client that stops reading then backs up the server quickly.
function rawws.connect(port, host, opts)
    local sock
    if opts and opts.rcvbuf then
        sock = assert(socket.tcp4())
        assert(sock:setoption("recv-buffer-size", opts.rcvbuf))
    else
        sock = assert(socket.tcp())
    end
    sock:settimeout(10)
    assert(sock:connect(host or "127.0.0.1", port))
    sock:setoption("tcp-nodelay", true)
    return setmetatable({ sock = sock, buf = "" }, C)
end

rawws.KEY = "dGhlIHNhbXBsZSBub25jZQ=="
rawws.ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

function rawws.request(path, extra, opts)
    opts = opts or {}
    local lines = {
        (opts.method or "GET") .. " " .. path .. " " .. (opts.version or "HTTP/1.1"),
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " .. rawws.KEY,
        "Sec-WebSocket-Version: 13",
    }
    for _, l in ipairs(extra or {}) do lines[#lines + 1] = l end
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- Connect and complete a handshake; raises unless the answer is 101.
function rawws.open(port, path, extra, opts)
    local c = rawws.connect(port, nil, opts)
    c:send(rawws.request(path or "/echo", extra))
    local status, headers = c:http_head()
    assert(status == 101, "expected 101, got " .. tostring(status))
    assert(headers["sec-websocket-accept"] == rawws.ACCEPT)
    c.headers = headers
    return c
end

function C:send(bytes)
    local i = 1
    while i <= #bytes do
        local n, err, partial = self.sock:send(bytes, i)
        if not n then
            if partial and partial >= i and err == "timeout" then i = partial + 1 else return nil, err end
        else
            i = n + 1
        end
    end
    return true
end

-- Wait (up to self.timeout seconds) for bytes and append what is there to
-- self.buf. Returns true, or nil and "timeout" / "closed".
function C:fill()
    local ready = socket.select({ self.sock }, nil, self.timeout or 10)
    if #ready == 0 then return nil, "timeout" end
    self.sock:settimeout(0)
    local data, err, partial = self.sock:receive(65536)
    self.sock:settimeout(10)
    data = data or partial
    if data and #data > 0 then
        self.buf = self.buf .. data
        return true
    end
    if err == "timeout" then return true end
    return nil, err
end

-- Read exactly n bytes (or nil, err).
function C:read(n)
    while #self.buf < n do
        local ok, err = self:fill()
        if not ok then return nil, err end
    end
    local out = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return out
end

-- Read until "\r\n\r\n": status, headers (lower-case names), raw head.
function C:http_head()
    while not self.buf:find("\r\n\r\n", 1, true) do
        local ok, err = self:fill()
        if not ok then return nil, err end
    end
    local e = self.buf:find("\r\n\r\n", 1, true)
    local head = self.buf:sub(1, e + 3)
    self.buf = self.buf:sub(e + 4)
    local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d) "))
    local headers = {}
    for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
        headers[name:lower()] = value
    end
    return status, headers, head
end

-- A whole HTTP response with a Content-Length body.
function C:http()
    local status, headers, head = self:http_head()
    if not status then return nil, headers end
    local n = tonumber(headers["content-length"] or "0")
    local body = n > 0 and self:read(n) or ""
    return status, headers, body, head
end

function C:recv_frame()
    local h, err = self:read(2)
    if not h then return nil, err end
    local b0, b1 = h:byte(1, 2)
    local len = b1 & 0x7f
    if len == 126 then
        len = string.unpack(">I2", self:read(2))
    elseif len == 127 then
        len = string.unpack(">I8", self:read(8))
    end
    assert(b1 & 0x80 == 0, "server frames must not be masked")
    local payload = len > 0 and self:read(len) or ""
    if not payload then return nil, "closed mid-frame" end
    return { fin = b0 & 0x80 ~= 0, rsv = (b0 >> 4) & 7, opcode = b0 & 0x0f, payload = payload }
end

-- Read frames until a close frame; returns code (nil if empty), reason, the
-- data frames seen before it.
function C:recv_close()
    local seen = {}
    while true do
        local f, err = self:recv_frame()
        if not f then return nil, err, seen end
        if f.opcode == 8 then
            if #f.payload >= 2 then
                return string.unpack(">I2", f.payload), f.payload:sub(3), seen
            end
            return false, "", seen
        end
        seen[#seen + 1] = f
    end
end

-- True when the server closed the TCP connection (EOF) within the timeout.
function C:eof(timeout)
    local saved = self.timeout
    self.timeout = timeout or 5
    local before = #self.buf
    local ok, err = self:fill()
    self.timeout = saved
    if ok and #self.buf > before then return false, "data" end
    return err == "closed", err
end

-- True when no frame arrives within t seconds (nothing buffered, nothing read); a
-- closed connection counts as quiet.
function C:quiet(t)
    self.timeout = t
    local ok = self:fill()
    self.timeout = nil
    return not ok or #self.buf == 0
end

function C:close()
    self.sock:close()
end

-- One plain HTTP exchange on a fresh connection: send `req` as it is and read
-- the answer: status, headers (lower-case names), body, raw head.
function rawws.http(port, req)
    local c = rawws.connect(port)
    c:send(req)
    local status, headers, body, head = c:http()
    c:close()
    return status, headers, body, head
end

-- GET path (Connection: close): status, headers, body.
function rawws.get(port, path)
    local status, headers, body = rawws.http(port,
        "GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return status, headers, body
end

-- Convenience: send a text frame and read the echo's payload.
function C:echo(msg)
    assert(self:send(wsframe.text(msg)))
    local f = assert(self:recv_frame())
    return f.payload, f
end

return rawws
