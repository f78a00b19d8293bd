-- ws://host/proto: picks the client's last subprotocol offer and reports every
-- offer, in order, in an X-Offers header and as its first message.
local proto = {}

function proto.upgrade(req)
    local offers = req.protocols
    local answer = { headers = { ["X-Offers"] = table.concat(offers, "|") } }
    if #offers > 0 then answer.protocol = offers[#offers] end
    return true, answer
end

function proto.open(ws)
    ws:send("protocol=" .. tostring(ws.protocol))
end

return proto
