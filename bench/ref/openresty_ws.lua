-- OpenResty's side of bench/run's Redis scenario (content_by_lua_file, see
-- nginx.conf.in): a WebSocket echo (lua-resty-websocket, Debian's
-- nginx.websocket.server); with `set $incr 1` every message first does INCR on
-- the redis-server at $redis_port (lua-resty-redis, Debian's nginx.redis),
-- connecting from the cosocket pool and putting the connection back after it,
-- as /incr does on switchboard.
local server = require "nginx.websocket.server"
local redis = require "nginx.redis"

local wb, err = server:new { timeout = 60000, max_payload_len = 16 * 1024 * 1024 }
if not wb then
    ngx.log(ngx.ERR, "websocket handshake: ", err)
    return ngx.exit(400)
end
local incr = ngx.var.incr == "1"
local redis_port = tonumber(ngx.var.redis_port)

while true do
    local data, typ, code = wb:recv_frame()
    if not data then
        ngx.log(ngx.INFO, "recv_frame: ", code)
        return ngx.exit(444)
    end
    if typ == "close" then
        wb:send_close(1000, "")
        return
    elseif typ == "ping" then
        wb:send_pong(data)
    elseif typ == "text" or typ == "binary" then
        if incr then
            local red = redis:new()
            red:set_timeout(10000)
            local ok, rerr = red:connect("127.0.0.1", redis_port)
            if not ok then
                ngx.log(ngx.ERR, "redis connect: ", rerr)
                return ngx.exit(444)
            end
            local n
            n, rerr = red:incr("sb-bench:hits")
            if not n then
                ngx.log(ngx.ERR, "redis INCR: ", rerr)
                return ngx.exit(444)
            end
            red:set_keepalive(60000, 128)
        end
        local bytes, serr
        if typ == "text" then
            bytes, serr = wb:send_text(data)
        else
            bytes, serr = wb:send_binary(data)
        end
        if not bytes then
            ngx.log(ngx.INFO, "send: ", serr)
            return ngx.exit(444)
        end
    end
end
