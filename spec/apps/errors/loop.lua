-- /loop: a message handler that never ends.
return {
    message = function(ws, msg)
        if msg == "spin" then
            while true do end
        end
        ws:send("loop:" .. msg)
    end,
    close = function(ws, code)
        require("switchboard").log.info("loop closed " .. ws.id .. " " .. code)
    end,
}
