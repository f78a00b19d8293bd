-- TLS record boundaries against the server's read-ahead (core/tls.c): the
-- client drives OpenSSL through memory BIOs (Python's ssl.SSLObject) so it
-- decides which records leave in one TCP write and where a record is cut:
-- many records in one segment (more than the 64 KiB read-ahead buffer and the
-- loop's read buffer), a record split across writes (header alone, then body
-- in pieces), a whole record with the head of the next one, and close_notify
-- right behind the last data. Every echo must come back byte-exact and in
-- order.
local server = require "server"

local python = server.python

local function sh(cmd)
    local p = io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("a")
    p:close()
    return out, tonumber(out:match("rc=(%d+)%s*$"))
end

-- The client: TLS over a plain socket through memory BIOs; frames are masked
-- client frames built here; answers are parsed from the decrypted stream.
local CLIENT = [==[
import base64, os, socket, ssl, struct, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
PORT = int(sys.argv[2])

class Tls:
    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", PORT))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.plain = b""
        self.eof = False
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.pull()
        self.flush()
    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)
    def pull(self):
        self.sock.settimeout(10)
        data = self.sock.recv(1 << 20)
        if not data:
            self.inc.write_eof()
            self.eof = True
        else:
            self.inc.write(data)
    def records(self, chunks):
        # each chunk becomes its own TLS record(s); returns the encrypted bytes, unsent
        for c in chunks:
            self.obj.write(c)
        return self.out.read()
    def need(self, n):
        while len(self.plain) < n:
            try:
                got = self.obj.read(1 << 20)
                if not got:
                    raise EOFError("TLS closed with %d of %d bytes" % (len(self.plain), n))
                self.plain += got
            except ssl.SSLWantReadError:
                if self.eof:
                    raise EOFError("TCP closed with %d of %d bytes" % (len(self.plain), n))
                self.pull()
        head, self.plain = self.plain[:n], self.plain[n:]
        return head
    def frame(self):
        b0, b1 = self.need(2)
        n = b1 & 0x7f
        if n == 126:
            n = struct.unpack(">H", self.need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.need(8))[0]
        return b0 & 0x0f, self.need(n)
    def upgrade(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.obj.write(("GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
        self.flush()
        while b"\r\n\r\n" not in self.plain:
            try:
                self.plain += self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                self.pull()
        head, self.plain = self.plain.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

def frame(op, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        h = struct.pack("!BB", 0x80 | op, 0x80 | n)
    elif n < 65536:
        h = struct.pack("!BBH", 0x80 | op, 0xfe, n)
    else:
        h = struct.pack("!BBQ", 0x80 | op, 0xff, n)
    return h + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))

def msg(i, size):
    return (("m%05d:" % i) * (size // 7 + 1))[:size].encode()
]==]

describe("TLS records and the server's read-ahead", function()
    local dir, s, port, cert
    setup(function()
        dir = server.tmpname("-tlsrec")
        assert(os.execute("mkdir -p " .. dir))
        local _, rc = sh(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            .. "-keyout %s/c.key -out %s/c.pem -days 2 -subj /CN=localhost "
            .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1"):format(dir, dir))
        assert.are.equal(0, rc)
        cert = dir .. "/c.pem"
        s = server.start{ app = "bench/app", args = { "--listen-tls", "127.0.0.1:0",
            "--tls-cert", cert, "--tls-key", dir .. "/c.key" } }
        port = tonumber(s:wait_log("listening on 127%.0%.0%.1:(%d+) %(wss://"))
    end)
    teardown(function()
        if s then s:stop() end
        os.execute("rm -rf " .. dir)
    end)

    it("echoes 400 records that arrive in one TCP write (more than a read buffer holds)", function()
        local res = python(CLIENT .. [==[
t = Tls()
t.upgrade()
N = 400
sizes = [(i * 37) % 1500 + 1 for i in range(N)]
wire = t.records([frame(1, msg(i, sizes[i])) for i in range(N)])
t.sock.sendall(wire)
ok = all(t.frame() == (1, msg(i, sizes[i])) for i in range(N))
# and 3 small records in one write, the smallest case of the batch
t.sock.sendall(t.records([frame(2, b"a"), frame(2, b"bc"), frame(2, b"def")]))
small = [t.frame() for _ in range(3)]
print(json.dumps({"wire": len(wire), "ok": ok,
                  "small": [[op, p.decode()] for op, p in small]}))
]==], cert, port)
        assert.is_true(res.wire > 256 * 1024)
        assert.is_true(res.ok)
        assert.are.same({ { 2, "a" }, { 2, "bc" }, { 2, "def" } }, res.small)
    end)

    it("waits for a record cut anywhere: header alone, body in pieces, a record and a half", function()
        local res = python(CLIENT .. [==[
t = Tls()
t.upgrade()
out = {}
# one 3000-byte message in one record, sent as 3 bytes (part of the record
# header), then 2 more (the rest of it), then the body in 3 pieces
rec = t.records([frame(1, msg(1, 3000))])
for a, b in ((0, 3), (3, 5), (5, 100), (100, 2000), (2000, len(rec))):
    t.sock.sendall(rec[a:b])
    time.sleep(0.05)
out["split"] = t.frame() == (1, msg(1, 3000))
# a whole record and the first half of the next one in one write: the first
# is echoed at once, the second once its rest arrives
r1 = t.records([frame(1, msg(2, 500))])
r2 = t.records([frame(1, msg(3, 700))])
t.sock.sendall(r1 + r2[:len(r2) // 2])
out["first"] = t.frame() == (1, msg(2, 500))
time.sleep(0.2)
t.sock.sendall(r2[len(r2) // 2:])
out["second"] = t.frame() == (1, msg(3, 700))
print(json.dumps(out))
]==], cert, port)
        assert.are.same({ split = true, first = true, second = true }, res)
    end)

    it("answers data and a close frame that arrive with close_notify in one write", function()
        local res = python(CLIENT .. [==[
t = Tls()
t.upgrade()
t.obj.write(frame(1, b"last words"))
t.obj.write(frame(8, struct.pack("!H", 1000) + b"bye"))
try:
    t.obj.unwrap()
except ssl.SSLWantReadError:
    pass
t.flush()  # two data records and close_notify, one TCP write
op1, p1 = t.frame()
op2, p2 = t.frame()
print(json.dumps({"echo": [op1, p1.decode()], "close": [op2, struct.unpack("!H", p2[:2])[0]]}))
]==], cert, port)
        assert.are.same({ 1, "last words" }, res.echo)
        assert.are.same({ 8, 1000 }, res.close)
    end)
end)
