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

---Options of `ws:subscribe` that recover what the client missed.
---@class switchboard.subscribe_opts
---@field since? integer The last position the client saw.
---@field epoch? string The epoch it saw it in.
---@field presence? table This connection's info in the topic (at most 1024 bytes as JSON),
---listed by `switchboard.presence(topic)`.

---Joins a topic. With `opts.since`/`opts.epoch` on a topic with history
---(`sb.history.keep`): first sends this ws, in order, every kept publication after
---`since`, then the live ones, with no gap and no duplicate; returns whether that was
---complete (`false` when `since` is older than the history, the epoch differs, or they
---are malformed: then the whole kept history is sent) and the topic's epoch. A replay
---past --out-high is sent as the client reads (drain). With --redis it waits.
---@param topic string
---@param opts? switchboard.subscribe_opts
---@return boolean ok Without opts: `false` if already subscribed (or closing). With
---since/epoch: recovered.
---@return string|nil epoch With since/epoch on a history topic: the topic's epoch.
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
