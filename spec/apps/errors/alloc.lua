-- /alloc: a message handler that allocates without bound.
local keep = {}
return {
    message = function(ws, msg)
        if msg == "grow" then
            local t = {}
            keep[#keep + 1] = t
            for i = 1, math.huge do
                t[i] = string.rep("x", 64) .. i
            end
        end
        ws:send("alloc:" .. msg)
    end,
    close = function(ws, code)
        require("switchboard").log.info("alloc closed " .. ws.id .. " " .. code)
    end,
}
