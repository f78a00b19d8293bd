---@meta
-- Editor types (LuaLS) for the `ws` a route's handlers receive. Declarations only.

---One WebSocket connection. Fields are read-only, except `data`.
---Every method raises once the connection has closed ("ws 7 is closed").
---@class switchboard.ws
---@field id integer Unique in the process (with --workers or --redis, pair it with `sb.node`).
---@field data table This connection's own table: made on first use, survives reloads, may be replaced.
---@field path string The percent-decoded path of the upgrade.
---@field query table<string, string|string[]> The decoded query; a repeated key gives a list.
---@field headers table<string, string> The upgrade's headers, lower-case names (without sec-websocket-key and sec-websocket-extensions).
---@field remote string The peer's "addr:port".
---@field protocol? string The chosen subprotocol.
---@field extensions? string The negotiated Sec-WebSocket-Extensions value.
local ws = {}

---Queues a text (default) or binary message. Raises on text that is not UTF-8 or a
---message longer than --max-message.
---@param msg string
---@param binary? boolean
---@return boolean ok `false` when the queue is past --out-high (still queued) or the connection is closing (not sent).
function ws:send(msg, binary) end

---Starts the closing handshake. A second call does nothing.
---@param code? integer 1000 (default) or 3000-4999.
---@param reason? string At most 123 bytes of UTF-8.
function ws:close(code, reason) end

---Sends a ping (pongs are handled by the server).
---@param data? string At most 125 bytes.
---@return boolean ok `false` when closing.
function ws:ping(data) end

---Joins a topic. `opts.presence`: a small table (at most 1024 bytes as JSON) recorded
---for this connection in the topic, listed by `switchboard.presence(topic)`.
---@param topic string
---@param opts? { presence?: table }
---@return boolean ok `false` if already subscribed (or closing).
function ws:subscribe(topic, opts) end

---Leaves a topic (and its presence).
---@param topic string
---@return boolean ok `false` if it was not subscribed.
function ws:unsubscribe(topic) end

---Sends to every subscriber of `topic` except this ws.
---@param topic string
---@param msg string
---@param binary? boolean
---@return integer queued How many connections it was queued to.
function ws:publish(topic, msg, binary) end

---Bytes queued for this connection and not yet written.
---@return integer
function ws:buffered() end
