-- /auth for bench/run's handshake scenario: `upgrade` asks the HTTP service at
-- $SB_BENCH_AUTH_URL (bench/ref/slow_http.py, which answers after 50 ms) before
-- the 101 and accepts on a 200; messages are echoed like /echo. Without the
-- variable every upgrade is refused with 503.
local sb = require "switchboard"

local url = os.getenv("SB_BENCH_AUTH_URL")
local auth = {}

function auth.upgrade()
    if not url then
        return false, 503, "SB_BENCH_AUTH_URL is not set\n"
    end
    local res, err = sb.http.request(url, { timeout = 10 })
    if not res then
        sb.log.warn("auth service: " .. err)
        return false, 503
    end
    return res.status == 200, 403
end

function auth.message(ws, msg, binary)
    ws:send(msg, binary)
end

return auth
