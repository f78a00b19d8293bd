-- The loopback services the outbound specs talk to (spec/support/upstream.py:
-- HTTP or HTTPS with delays, chunked and unframed bodies, plus a TCP echo),
-- and a throwaway CA with a certificate for localhost and 127.0.0.1.
--
--   local upstream = require "upstream"
--   local up = upstream.start()                  -- or start{ tls = upstream.make_ca() }
--   up.port, up.echo_port, up.url("/delay?s=0.1"), up:stop()
local proc = require "sbt_proc"
local server = require "server"

local upstream = {}

local function sh(cmd)
    local ok = os.execute("env -u LD_PRELOAD " .. cmd .. " >/dev/null 2>&1")
    assert(ok, "failed: " .. cmd)
end

-- A CA and a server certificate it signed (localhost, 127.0.0.1), in a fresh
-- folder: { dir, ca, cert, key }.
function upstream.make_ca()
    local dir = server.tmpname("-ca")
    sh("mkdir -p " .. dir)
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    sh(("openssl req -x509 %s -keyout %s/ca.key -out %s/ca.pem -days 2 -subj '/CN=sb spec CA'")
        :format(ec, dir, dir))
    sh(("openssl req %s -keyout %s/srv.key -out %s/srv.csr -subj '/CN=localhost'")
        :format(ec, dir, dir))
    server.write_file(dir .. "/ext.cnf", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh(("openssl x509 -req -in %s/srv.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial"
        .. " -out %s/srv.pem -days 2 -extfile %s/ext.cnf"):format(dir, dir, dir, dir, dir))
    return { dir = dir, ca = dir .. "/ca.pem", cert = dir .. "/srv.pem", key = dir .. "/srv.key" }
end

function upstream.remove_ca(ca)
    if ca then os.execute("rm -rf '" .. ca.dir .. "'") end
end

local U = {}
U.__index = U

function upstream.start(opts)
    opts = opts or {}
    local out = server.tmpname(".upstream")
    local argv = { "/usr/bin/env", "-u", "LD_PRELOAD", server.PYTHON,
                   server.root .. "/spec/support/upstream.py" }
    if opts.tls then
        for _, a in ipairs{ "--tls", opts.tls.cert, opts.tls.key } do argv[#argv + 1] = a end
    end
    local pid = assert(proc.spawn(argv, { stdout = out, stderr = out .. ".err" }))
    local u = setmetatable({ pid = pid, out = out, scheme = opts.tls and "https" or "http" }, U)
    local ok, err = pcall(server.wait_for, function()
        local a, b = server.read_file(out):match("ports (%d+) (%d+)")
        if a then u.port, u.echo_port = tonumber(a), tonumber(b) return true end
        if proc.wait(pid, true) then
            error("upstream.py exited:\n" .. server.read_file(out .. ".err"))
        end
    end, 15, "upstream.py to listen")
    if not ok then u:stop() error(err, 2) end
    return u
end

-- A nameserver on loopback (spec/support/slow_dns.py) for --resolver: slow.sb.test
-- answers 127.0.0.1 after opts.delay seconds (1.5), fast.sb.test at once, any other
-- name NXDOMAIN. { port, addr = "127.0.0.1:PORT", stop }
function upstream.dns(opts)
    opts = opts or {}
    local out = server.tmpname(".dns")
    local argv = { "/usr/bin/env", "-u", "LD_PRELOAD", server.PYTHON,
                   server.root .. "/spec/support/slow_dns.py", "--delay", tostring(opts.delay or 1.5) }
    local pid = assert(proc.spawn(argv, { stdout = out, stderr = out .. ".err" }))
    local u = setmetatable({ pid = pid, out = out }, U)
    local ok, err = pcall(server.wait_for, function()
        local p = server.read_file(out):match("port (%d+)")
        if p then u.port = tonumber(p) u.addr = "127.0.0.1:" .. p return true end
        if proc.wait(pid, true) then
            error("slow_dns.py exited:\n" .. server.read_file(out .. ".err"))
        end
    end, 15, "slow_dns.py to listen")
    if not ok then u:stop() error(err, 2) end
    return u
end

-- scheme://127.0.0.1:PORT/path (host: another name for the same service)
function U:url(path, host)
    return ("%s://%s:%d%s"):format(self.scheme, host or "127.0.0.1", self.port, path or "/")
end

function U:stop()
    if self.pid then
        proc.kill(self.pid, proc.SIGKILL)
        proc.wait(self.pid)
        self.pid = nil
    end
    os.remove(self.out)
    os.remove(self.out .. ".err")
end

return upstream
