---@meta switchboard
-- Editor types (LuaLS) for `require "switchboard"`, the module the server gives
-- route scripts. Declarations only: this file is never run. The README is the
-- reference; spec/e2e/api_types_spec.lua keeps these names equal to the server's.

---The server's module: `local sb = require "switchboard"`.
---@class switchboard
---@field shared table One table shared by every script of the process; survives reloads.
---@field log switchboard.log Write to the server log, with the script's file and line.
---@field json switchboard.json JSON as browsers expect it (no `\/`; lists marked with `array`).
---@field crypto switchboard.crypto Hashes, MACs, random bytes and base64url (OpenSSL).
---@field jwt switchboard.jwt JSON Web Tokens: verify (HS256, RS256, ES256) and sign (HS256).
---@field http switchboard.http Outbound HTTP/1.1 and HTTPS requests that the handler waits on.
---@field tcp switchboard.tcp Outbound TCP (and TLS) sockets that the handler waits on.
---@field redis switchboard.redis A pooled Redis client that handlers wait on.
---@field history switchboard.history Topic history: positions, replay, recovery.
---@field node string This process's id: 16 random hex digits, new at every start.
---@field version string The server's version.
local sb = {}

---Sends `msg` to every subscriber of `topic` (framed once, shared by every queue).
---Raises on an empty topic, text that is not UTF-8 (send it as binary) or a message
---longer than --max-message.
---@param topic string
---@param msg string
---@param binary? boolean `true`: a binary message; default text.
---@return integer queued How many connections it was queued to.
function sb.publish(topic, msg, binary) end

---How many connections are subscribed to `topic`.
---@param topic string
---@return integer
function sb.subscribers(topic) end

---The topics that have subscribers, sorted.
---@return string[]
function sb.topics() end

---The script's own subscriber: `fn(msg, binary)` runs for every publication on `topic`,
---from this process, another process (`--redis`) or a backend's `PUBLISH sb:<topic>`.
---It runs on the loop after the publish returns, may wait, one message at a time per
---subscription. Owned by the script version that made it (a reload replaces it).
---@param topic string
---@param fn fun(msg: string, binary: boolean)
---@return boolean ok `false` if `fn` already is subscribed to `topic`.
function sb.subscribe(topic, fn) end

---Ends `fn`'s subscription to `topic`; without `fn`, every script subscription to it.
---@param topic string
---@param fn? fun(msg: string, binary: boolean)
---@return boolean ok `true` if one ended.
function sb.unsubscribe(topic, fn) end

---The `info` of every connection present in `topic` (`ws:subscribe(topic, { presence =
---info })`), in every process with `--redis` (then it waits: only in a handler or timer).
---@param topic string
---@return table[]|nil members Decoded copies, in no particular order.
---@return string? err When Redis is away.
function sb.presence(topic) end

---Runs `fn(timer)` once, `seconds` from now (0 <= seconds <= 1e9), on the server's loop.
---The timer belongs to the script version (or lib/ module) that made it.
---@param seconds number
---@param fn fun(timer: switchboard.timer)
---@return switchboard.timer
function sb.after(seconds, fn) end

---Runs `fn(timer)` every `seconds` (>= 0.001) until cancelled.
---@param seconds number
---@param fn fun(timer: switchboard.timer)
---@return switchboard.timer
function sb.every(seconds, fn) end

---Waits `seconds` (0 <= seconds <= 1e9; 0: until the loop's next turn) without blocking
---the server: the handler's coroutine yields. Only a handler, a timer function or a light
---thread may wait (a script's top level raises, and so does a coroutine of the script's own).
---While a connection's handler waits, its next events wait too.
---@param seconds number
function sb.sleep(seconds) end

---Runs `fn(...)` as a light thread of the running handler call: concurrently, in its own
---coroutine, starting on the loop's next turn. The handler call ends when its function and
---every light thread it spawned have returned.
---@param fn fun(...): ...
---@param ... any
---@return switchboard.thread
function sb.spawn(fn, ...) end

---Waits for a light thread of this handler call: `true` and its results, or `false` and its
---error.
---@param thread switchboard.thread
---@return boolean ok
---@return any ...
function sb.wait(thread) end

---@class switchboard.thread

---Monotonic time in seconds, a float with sub-millisecond resolution (durations, not dates).
---@return number
function sb.now() end

---The server's counters.
---@return switchboard.stats
function sb.stats() end

---@class switchboard.log
local log = {}

---Logs the arguments (tostring'ed, joined by spaces) at level info.
---@param ... any
function log.info(...) end

---Logs the arguments at level warn.
---@param ... any
function log.warn(...) end

---Logs the arguments at level error.
---@param ... any
function log.error(...) end

---JSON for the web (`sb.json`): lua-cjson's decode, the server's own encoder.
---@class switchboard.json
---@field null lightuserdata Decodes JSON `null`; encodes as `null`.
---@field array_mt table The metatable that marks a table as a JSON list.
local json = {}

---Marks `t` (or a new empty table) as a list, so that an empty one is sent as `[]`.
---@param t? table
---@return table
function json.array(t) end

---Encodes a Lua value as JSON. Raises on what JSON cannot hold (a function, a sparse array).
---@param value any
---@return string
function json.encode(value) end

---Decodes a JSON text. Raises on invalid JSON.
---@param text string
---@return any
function json.decode(text) end

---`sb.crypto`: OpenSSL's hashes and generator, and constant-time compares.
---@class switchboard.crypto
local crypto = {}

---The SHA-256 of `s`: 32 raw bytes.
---@param s string
---@return string
function crypto.sha256(s) end

---HMAC-SHA256 of `s` under `key`: 32 raw bytes.
---@param key string
---@param s string
---@return string
function crypto.hmac_sha256(key, s) end

---Lower-case hex of raw bytes.
---@param bytes string
---@return string
function crypto.hex(bytes) end

---`n` bytes (1..65536) from the system's secure generator.
---@param n integer
---@return string
function crypto.random(n) end

---`a == b` in a time that does not depend on where they differ.
---@param a string
---@param b string
---@return boolean
function crypto.equal(a, b) end

---RFC 4648 section 5 base64url, without padding.
---@param s string
---@return string
function crypto.base64url_encode(s) end

---Decodes base64url (padding allowed); `nil, "invalid base64url"` otherwise.
---@param s string
---@return string|nil, string?
function crypto.base64url_decode(s) end

---`sb.jwt`: JSON Web Tokens.
---@class switchboard.jwt
local jwt = {}

---Options of `sb.jwt.verify`.
---@class switchboard.jwt_opts
---@field algs? string[] From "HS256", "RS256", "ES256"; default { "HS256" }.
---@field leeway? number Seconds of slack for `exp` and `nbf`.
---@field aud? string|string[] The audience the token must name.
---@field iss? string The issuer the token must have.

---The token's claims, or `nil, err` ("malformed", "alg not allowed", "bad signature",
---"expired", "not yet valid", "wrong audience", "wrong issuer").
---@param token string
---@param key string The HS256 secret, or a PEM public key for RS256/ES256.
---@param opts? switchboard.jwt_opts
---@return table|nil claims, string? err
function jwt.verify(token, key, opts) end

---An HS256 token for the claims.
---@param claims table
---@param secret string
---@return string
function jwt.sign(claims, secret) end

---`sb.http`: requests a handler waits on without blocking the server.
---@class switchboard.http
local http = {}

---Options of `sb.http.request`.
---@class switchboard.http_opts
---@field method? string Default "GET".
---@field headers? table<string, string|number> Request header fields; Host, User-Agent, Connection: close and Content-Length are added unless given.
---@field body? string Default "" (a Content-Length is sent for it, and for any method but GET and HEAD).
---@field timeout? number Seconds for the whole exchange (DNS, connect, TLS, request, response); default 10.
---@field verify? boolean https: check the certificate chain (system CAs + `ca`) and the host name; default true.
---@field ca? string https: a PEM file of CA certificates trusted besides the system's.
---@field max_body? integer Largest response body in bytes; default and upper bound --max-response-body (16 MiB).

---A response of `sb.http.request`.
---@class switchboard.http_response
---@field status integer
---@field headers table<string, string> Lower-case names; a repeated field's values joined with ", ".
---@field body string

---Sends one HTTP/1.1 request (http:// or https://) and waits for the whole response,
---inside a handler or timer (elsewhere it raises). Any status is a response; failures
---return `nil, err`: "timeout", "connection refused", "connection reset", "closed",
---"dns: ...", "tls: ...", "body too large", "http: ...", "too many outbound connections".
---A bad URL or option raises.
---@param url string
---@param opts? switchboard.http_opts
---@return switchboard.http_response|nil res, string? err
function http.request(url, opts) end

---`sb.tcp`: sockets a handler waits on without blocking the server.
---@class switchboard.tcp
local tcp = {}

---Options of `sb.tcp.connect`.
---@class switchboard.tcp_opts
---@field tls? boolean Speak TLS (client side); default false.
---@field timeout? number Seconds for DNS + connect + TLS handshake, then for each send and receive; default 10.
---@field server_name? string TLS: the name sent as SNI and checked in the certificate; default `host`.
---@field verify? boolean TLS: check the certificate chain and name; default true.
---@field ca? string TLS: a PEM file of CA certificates trusted besides the system's.

---Opens a connection to `host` (a name, resolved without blocking, or an address) and
---`port`, and waits until it is up. `nil, err` as `sb.http.request` says.
---@param host string
---@param port integer
---@param opts? switchboard.tcp_opts
---@return switchboard.tcp_socket|nil sock, string? err
function tcp.connect(host, port, opts) end

---A socket of `sb.tcp.connect`. Closed when collected or when its waiting handler is stopped.
---@class switchboard.tcp_socket
local sock = {}

---Sends `data` and waits until the kernel has taken all of it.
---@param data string
---@return integer|nil bytes, string? err
function sock:send(data) end

---Waits for `n` bytes, a line ("*l", the default; without its "\n" or "\r\n") or
---everything until the peer closes ("*a"). On failure `nil, err, partial` with what
---had arrived ("closed", "timeout", "too large" past --max-response-body, ...).
---@param pattern? integer|"*l"|"*a"
---@return string|nil data, string? err, string? partial
function sock:receive(pattern) end

---Seconds each later send and receive may wait (> 0).
---@param seconds number
function sock:settimeout(seconds) end

---Closes the socket: `true`, or `nil, "closed"` when it was, `nil, "socket busy"` while
---another light thread waits on it.
---@return true|nil ok, string? err
function sock:close() end
---`sb.redis`: a Redis client on the server's loop. A handler (or timer) that calls it
---waits without blocking the server; connections are pooled per URL.
---@class switchboard.redis
---@field url? string The server's --redis URL (nil without --redis): connect's default.
local redis = {}

---Options of `sb.redis.connect`.
---@class switchboard.redis_opts
---@field timeout? number Seconds for the connect and for each call (default 10).

---A connection from the URL's pool, or a new one. Waits (in a handler or timer).
---Raises on a bad URL, or when no URL is given and the server has no --redis.
---@param url? string redis://host[:port][/db]; default the --redis URL.
---@param opts? switchboard.redis_opts
---@return switchboard.redis.connection|nil red
---@return string|nil err "timeout", "connection refused", "closed", "too many calls"
function redis.connect(url, opts) end

---A connection `sb.redis.connect` returned; `close` puts it back in the pool.
---@class switchboard.redis.connection
local connection = {}

---Sends one command and waits for its reply. Replies map to Lua values: a status or
---bulk string -> string, an integer -> integer, an array -> table (a nil inside it ->
---`sb.json.null`), a nil reply -> nil. An error reply returns nil, "redis: ERR ...";
---other failures nil, "timeout" | "closed" | "too many calls".
---@param cmd string
---@param ... string|number
---@return any value
---@return string|nil err
function connection:call(cmd, ...) end

---Puts the connection back in its URL's pool (or closes it when the pool is full or
---the connection is dead). Using it afterwards returns nil, "closed".
---@return boolean
function connection:close() end

---The timeout of each following call, in seconds (> 0).
---@param seconds number
function connection:settimeout(seconds) end

---`sb.history`: topics that keep their last publications, each with a position (an
---integer increasing by one per publication in the topic, the same in every process)
---and an epoch (a string that changes when the topic's history was lost). In process
---without --redis; in Redis with it.
---@class switchboard.history
local history = {}

---Options of `sb.history.keep`.
---@class switchboard.history_opts
---@field size? integer Publications kept per topic (1..1e6, default 100).
---@field ttl? number Seconds each is kept (default 3600); a topic unused this long vanishes.
---@field format? fun(msg: string, pos: integer, epoch: string, binary: boolean): string?, boolean?
---What subscribers are sent for a publication (and for its replays): run once per
---publication per process; its result is framed once. A second result says binary
---(default: as published). One that raises or returns no string is logged and the
---message goes out as it was published.

---Topics starting with `prefix` keep their history (the longest prefix wins). Call it at
---a route's top level; a reload runs it again (the new format replaces the old).
---@param prefix string
---@param opts? switchboard.history_opts
function history.keep(prefix, opts) end

---Options of `sb.history.read`.
---@class switchboard.history_read_opts
---@field since? integer Only publications after this position.
---@field limit? integer At most this many: the first after `since`, else the latest.

---One kept publication, as published (before the format).
---@class switchboard.history_item
---@field pos integer
---@field msg string
---@field binary boolean

---The kept publications of `topic`, oldest first, and the topic's epoch (nil when no
---rule covers the topic, or in process when it was never published nor subscribed to). With --redis it waits (a handler or timer only) and returns
---nil, err when Redis cannot answer.
---@param topic string
---@param opts? switchboard.history_read_opts
---@return switchboard.history_item[]|nil items
---@return string|nil epoch
function history.read(topic, opts) end

---What `sb.stats()` returns: counters since start, and labelled counts.
---@class switchboard.stats
---@field accepted integer TCP connections accepted.
---@field open integer Connections open now (HTTP and WebSocket).
---@field ws_open integer WebSocket connections open now.
---@field handshakes_ok integer Upgrades answered 101.
---@field handshakes_refused integer Upgrades refused.
---@field msgs_in integer Messages received.
---@field msgs_out integer Messages queued to connections.
---@field bytes_in integer
---@field bytes_out integer
---@field publishes integer
---@field deliveries integer Publishes queued to subscribers.
---@field dropped_deliveries integer Publishes dropped for a slow subscriber.
---@field backpressure_events integer Times a queue went past --out-high.
---@field slow_closed integer Connections closed by --slow-policy close or --out-max.
---@field handler_errors integer Handlers and timers that raised or ran past a limit.
---@field budget_stops integer Of those, stopped by --lua-budget.
---@field reloads_ok integer
---@field reloads_failed integer
---@field timeouts integer
---@field handlers_waiting integer Handler and timer calls waiting now (sb.sleep, I/O).
---@field handler_waits integer Handler and timer calls that waited.
---@field handler_timeouts integer Handler calls ended by --handler-timeout.
---@field lua_memory integer Bytes the Lua state uses.
---@field outbound_open integer Outbound connections open now (sb.http, sb.tcp).
---@field outbound table<string, table<string, integer>> Outbound calls by kind ("http", "tcp") and outcome ("ok", "timeout", "refused", "dns", "tls", "closed", "cancelled", "error"); non-zero counts.
---@field resident_memory integer Bytes of the process's resident memory.
---@field ws_closed_clean integer WebSocket connections closed with a close handshake.
---@field handshakes table<string, integer> Answers to upgrades by HTTP status.
---@field close_sent table<string, integer> Close codes sent ("1000".."1015", "other").
---@field close_received table<string, integer> Close codes received.
---@field routes table<string, { open: integer, total: integer }> Per route path.

return sb
