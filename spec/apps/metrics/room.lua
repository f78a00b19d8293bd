-- /room: every message goes to the other subscribers of "room".
local room = {}

function room.open(ws) ws:subscribe("room") end
function room.message(ws, msg) ws:publish("room", msg) end

return room
