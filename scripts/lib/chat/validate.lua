-- Field rules of the chat protocol. Each checker returns the cleaned value, or
-- nil, code, message: the error the client is answered with.
local validate = {}

validate.NICK_MAX = 24
validate.ROOM_MAX = 32
validate.TEXT_MAX = 500

function validate.nick(v)
    if type(v) ~= "string" then
        return nil, "nick_invalid", "nick must be a string"
    end
    local n = utf8.len(v)
    if not n or n < 1 or n > validate.NICK_MAX then
        return nil, "nick_invalid", ("nick must be 1 to %d characters"):format(validate.NICK_MAX)
    end
    if not v:match("^[%w_%.%-]+$") then
        return nil, "nick_invalid", "nick may only use letters, digits, '_', '-' and '.'"
    end
    return v
end

-- Room names are case-insensitive: "Lobby" is "lobby".
function validate.room(v)
    if type(v) ~= "string" then
        return nil, "room_invalid", "room must be a string"
    end
    if #v < 1 or #v > validate.ROOM_MAX then
        return nil, "room_invalid", ("room must be 1 to %d characters"):format(validate.ROOM_MAX)
    end
    v = v:lower()
    if not v:match("^[a-z0-9_%-]+$") then
        return nil, "room_invalid", "room may only use letters, digits, '_' and '-'"
    end
    return v
end

-- Message text: valid UTF-8, not blank, at most TEXT_MAX characters, no control
-- characters but newline and tab.
function validate.text(v)
    if type(v) ~= "string" then
        return nil, "text_invalid", "text must be a string"
    end
    local n = utf8.len(v)
    if not n then
        return nil, "text_invalid", "text must be valid UTF-8"
    end
    if not v:find("%S") then
        return nil, "text_empty", "text must not be empty"
    end
    if n > validate.TEXT_MAX then
        return nil, "text_too_long", ("text must be at most %d characters"):format(validate.TEXT_MAX)
    end
    if v:find("[%z\1-\8\11-\31\127]") then
        return nil, "text_invalid", "text must not contain control characters"
    end
    return v
end

return validate
