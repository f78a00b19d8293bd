---@meta switchboard.testing
-- Editor types (LuaLS) for `require "switchboard.testing"`, the fake server for
-- busted specs of route scripts. Declarations only. See the README's "Writing
-- tests for route scripts".

---@class switchboard.testing
---@field clock switchboard.testing.clock The clock of the app created last.
---@field http switchboard.testing.http Answers for the scripts' `sb.http.request`.
local testing = {}

---A fresh app for the app folder `dir` (default "scripts"): its own topics, `shared`,
---timers and clock; `dir/lib/` is on `require`'s path.
---@param dir? string
---@param opts? { strict?: boolean, max_message?: integer, node?: string } strict: a handler that raises fails the spec at once.
---@return switchboard.testing.app
function testing.app(dir, opts) end

---Loads one script as a route of a new app rooted at the script's folder.
---@param path string "app/chat.lua"
---@param opts? { strict?: boolean, max_message?: integer, node?: string }
---@return switchboard.testing.route
function testing.load(path, opts) end

---@class switchboard.testing.app
---@field dir string
---@field routes table<string, switchboard.testing.route> By name ("chat", "api/feed").
---@field shared table The app's `sb.shared`.
---@field published { topic: string, data: string, binary: boolean, sender?: integer }[] Every publish, in order.
---@field logs { level: string, route: string, message: string }[] What `sb.log` and failing handlers wrote.
---@field clock switchboard.testing.clock
---@field strict boolean
---@field node string The app's `sb.node`.
---@field max_message integer The app's --max-message.
local App = {}

---Loads `dir/<name>.lua` ("chat", "api/feed", "index") as a route; raises if it does not load.
---@param name string
---@return switchboard.testing.route
function App:load(name) end

---Advances the app's clock, firing due timers in time order.
---@param seconds number
---@return integer fired
function App:advance(seconds) end

---How many connections are subscribed to `topic`.
---@param topic string
---@return integer
function App:subscribers(topic) end

---A publication from elsewhere (another process, a backend's `PUBLISH sb:<topic>`): to
---the topic's connections and `sb.subscribe` functions; not in `app.published`.
---@param topic string
---@param msg string
---@param binary? boolean
---@return integer queued How many connections it was queued to.
function App:publish(topic, msg, binary) end

---@class switchboard.testing.route
---@field app switchboard.testing.app
---@field name string "chat"
---@field file string "scripts/chat.lua"
---@field path string "/chat"
---@field errors { handler: string, message: string, traceback: string }[] Handlers that raised.
---@field handlers switchboard.route The table the script returned (the current version's).
local Route = {}

---Runs upgrade(req) then open(ws). Returns the client, or nil, status, body when
---upgrade refused (500 when it raised).
---@param opts? { query?: table|string, headers?: table<string, string>, protocols?: string[], remote?: string, path?: string }
---@return switchboard.testing.client|nil client
---@return integer? status
---@return string? body
function Route:connect(opts) end

---Runs the request handler: 426 without one, 500 when it raised.
---@param opts? { method?: string, path?: string, query?: table|string, headers?: table<string, string>, body?: string }
---@return { status: integer, headers: table<string, string>, body: string }
function Route:request(opts) end

---Re-runs the script as a saved file is hot-reloaded.
---@return true|nil ok
---@return string? err When the new version fails: the old one keeps serving.
function Route:reload() end

---The peer side of a fake connection.
---@class switchboard.testing.client
---@field sent { data: string, binary: boolean }[] What the script sent (publishes included).
---@field pings string[] Pings the script sent.
---@field closed? { code: integer, reason: string } Set when the script (or the server) closed it.
---@field buffered integer What `ws:buffered()` reports (see `pressure`).
---@field protocol? string The chosen subprotocol.
---@field response_headers table<string, string> Headers upgrade added to the 101.
---@field ws switchboard.ws The script's ws.
---@field data table Its ws.data.
---@field id integer Its ws.id.
local Client = {}

---The peer sends a message (invalid UTF-8 text closes with 1007, too long with 1009).
---@param data string
---@param binary? boolean
function Client:message(data, binary) end

---The peer closes (no code: 1005); close(ws, code, reason) runs once.
---@param code? integer
---@param reason? string
function Client:close(code, reason) end

---The peer vanishes: close(ws, 1006, "").
function Client:drop() end

---A slow reader: `ws:buffered()` reports `bytes` and `send` returns false.
---@param bytes integer
function Client:pressure(bytes) end

---The queue drained: buffered() is 0 again and drain(ws) runs.
function Client:drain() end

---The text messages sent so far, decoded as JSON.
---@return any[]
function Client:json() end

---Forgets what was sent so far; returns it.
---@return { data: string, binary: boolean }[]
function Client:clear() end

---@return boolean
function Client:is_open() end

---A fake clock: moves only when told to.
---@class switchboard.testing.clock
---@field now number
local Clock = {}

---Fires every timer due within `seconds`, earliest first; returns how many fired.
---@param seconds number
---@return integer fired
function Clock:advance(seconds) end

---How many timers are pending.
---@return integer
function Clock:pending() end


---`t.http`: the fake's `sb.http.request` never goes to the network; the spec answers.
---@class switchboard.testing.http
local http = {}

---Answers `sb.http.request` calls whose URL matches the Lua `pattern` (tried in the
---order added) with `fn(req)`; `req` has url, method, headers, body, timeout, verify,
---ca, max_body. `fn` returns `{ status?, headers?, body? }` (status 200 and body ""
---by default) or `nil, err`. A request nothing matches raises in the script.
---@param pattern string
---@param fn fun(req: table): (table|nil), string?
function http.on(pattern, fn) end

---Forgets every `t.http.on` answer (answers outlive apps: clear them in `before_each`).
function http.clear() end

return testing
