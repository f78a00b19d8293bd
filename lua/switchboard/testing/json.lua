-- switchboard.testing.json: the `json` table of the fake switchboard module,
-- in plain Lua, writing the same text as the server's encoder
-- (core/script_json.c): no "\/", json.array marks a list (an empty one is []),
-- integers with every digit, floats with the fewest digits (14 to 17) that
-- read back the same; otherwise lua-cjson 2.1's rules. decode and null are
-- lua-cjson's, as on the server.
local cjson = require "cjson"

local json = {}

local _, argerror_n = require("switchboard.testing.errors").here()

local function argerror(fname, msg) argerror_n(fname, 1, msg) end

local MAX_DEPTH, SPARSE_RATIO, SPARSE_SAFE = 1000, 2, 10

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
    ["\r"] = "\\r", ["\t"] = "\\t" }

local function escape(c)
    return ESCAPES[c] or ("\\u%04x"):format(c:byte())
end

local function number(n)
    if math.type(n) == "integer" then return ("%d"):format(n) end
    if n ~= n or n == math.huge or n == -math.huge then argerror("encode", "cannot encode NaN or infinity") end
    local s
    for prec = 14, 17 do
        s = ("%." .. prec .. "g"):format(n)
        if tonumber(s) == n then break end
    end
    return s
end

-- Returns a new json table: encode, decode, null, array, array_mt.
function json.new()
    local array_mt = { __name = "json.array" }
    local j = { decode = cjson.decode, null = cjson.null, array_mt = array_mt }

    local encode

    local function array_length(t)
        local max, items = 0, 0
        for k in next, t do
            if math.type(k) ~= "integer" or k < 1 then return -1 end
            if k > max then max = k end
            items = items + 1
        end
        if max > SPARSE_SAFE and max > items * SPARSE_RATIO then
            argerror("encode", "excessively sparse array")
        end
        return max
    end

    local function encode_table(t, out, depth)
        if depth > MAX_DEPTH then
            argerror("encode", "nested more than 1000 deep (a table that contains itself?)")
        end
        local marked = getmetatable(t) == array_mt
        local len = marked and rawlen(t) or array_length(t)
        if marked or len > 0 then
            out[#out + 1] = "["
            for i = 1, len do
                if i > 1 then out[#out + 1] = "," end
                encode(rawget(t, i), out, depth + 1)
            end
            out[#out + 1] = "]"
            return
        end
        out[#out + 1] = "{"
        local first = true
        for k, v in next, t do
            if not first then out[#out + 1] = "," end
            first = false
            if type(k) == "string" then
                out[#out + 1] = '"' .. k:gsub('[%z\1-\31"\\]', escape) .. '"'
            elseif type(k) == "number" then
                out[#out + 1] = '"' .. number(k) .. '"'
            else
                argerror("encode", "table keys must be strings or numbers")
            end
            out[#out + 1] = ":"
            encode(v, out, depth + 1)
        end
        out[#out + 1] = "}"
    end

    encode = function(v, out, depth)
        local t = type(v)
        if v == nil or v == cjson.null then
            out[#out + 1] = "null"
        elseif t == "boolean" then
            out[#out + 1] = tostring(v)
        elseif t == "number" then
            out[#out + 1] = number(v)
        elseif t == "string" then
            out[#out + 1] = '"' .. v:gsub('[%z\1-\31"\\]', escape) .. '"'
        elseif t == "table" then
            encode_table(v, out, depth)
        else
            argerror("encode", "cannot encode a " .. t)
        end
    end

    function j.encode(...)
        if select("#", ...) == 0 then argerror("encode", "value expected") end
        local out = {}
        encode((...), out, 0)
        return table.concat(out)
    end

    function j.array(...)
        local t = ...
        if t == nil then return setmetatable({}, array_mt) end
        if type(t) ~= "table" then argerror("array", "table expected, got " .. type(t)) end
        local mt = getmetatable(t)
        if mt ~= nil and mt ~= array_mt then argerror("array", "the table already has a metatable") end
        return setmetatable(t, array_mt)
    end

    return j
end

return json
