-- Appends one line per close handler call to the file named by SB_CLOSE_LOG,
-- so a spec can count them: "<route> <ws.id> <code>".
local closelog = {}

function closelog.note(route, ws, code)
    local path = os.getenv("SB_CLOSE_LOG")
    if not path then return end
    local f = assert(io.open(path, "a"))
    f:write(("%s %d %d\n"):format(route, ws.id, code))
    f:close()
end

return closelog
