-- /burst: "burst N SIZE" sends N numbered messages of SIZE bytes at once;
-- "report" logs how many bytes are still queued for this connection.
local sb = require "switchboard"
local closelog = require "closelog"
local burst = {}

function burst.message(ws, msg)
    local n, size = msg:match("^burst (%d+) (%d+)$")
    if n then
        for i = 1, tonumber(n) do
            local head = ("%06d:"):format(i)
            ws:send(head .. ("x"):rep(tonumber(size) - #head))
        end
    elseif msg == "report" then
        sb.log.info(("burst: %d bytes queued"):format(ws:buffered()))
    end
end

function burst.close(ws, code) closelog.note("/burst", ws, code) end

return burst
