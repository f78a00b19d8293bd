"""A loopback service for the outbound specs (sb.http, sb.tcp): one asyncio
process that answers HTTP/1.1 (and HTTPS with --tls CERT KEY) and runs a TCP
echo beside it. It prints one line "ports HTTP ECHO" and serves until killed.

HTTP paths (query parameters in brackets):
  /delay[s]          wait s seconds (default 0.05), then 200 "slept"
  /echo              200, a JSON object: method, path, headers, body
  /chunked[n]        n chunks "chunk<i>\\n", chunked transfer coding
  /big[n]            n bytes of "x" with a Content-Length
  /big_chunked[n]    the same, chunked
  /close[n]          n bytes of "y", no length: the end of the connection ends it
  /status[code]      that status, body "status <code>"
  /auth[token]       200 "ok" when token is "good", else 403 "no"
  /count             200, the number of requests seen so far
  /trickle[kind]     a response written a byte at a time (kind=chunked: chunked,
                     with extensions and a trailer; else 100 Continue, then 201)
  /peer[close,drop]  200, the client's port (which connection it came on); close=1:
                     with Connection: close; drop=1: the next request on this
                     connection is not answered, the connection is closed
  /redirect[code,to] that status (302) with Location: to, body "moved"
  /hang              never answers
Echo (TCP): bytes come back as they arrive; a line "close" is answered with
"closing\\n" and the end of the connection."""
import asyncio
import json
import ssl
import sys
import urllib.parse

SEEN = 0


async def handle_http(reader, writer):
    global SEEN
    conn = {"peer": (writer.get_extra_info("peername") or ("", 0))[1], "drop": False}
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            SEEN += 1
            if conn["drop"]:
                break
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            url = urllib.parse.urlsplit(target)
            q = dict(urllib.parse.parse_qsl(url.query))
            keep = await respond(writer, method, url.path, q, headers, body, conn)
            await writer.drain()
            if not keep or headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def send(writer, status, body, extra=None, length=True):
    if isinstance(body, str):
        body = body.encode()
    h = "HTTP/1.1 %d X\r\nContent-Type: text/plain\r\n" % status
    for k, v in (extra or {}).items():
        h += "%s: %s\r\n" % (k, v)
    if length:
        h += "Content-Length: %d\r\n" % len(body)
    writer.write(h.encode() + b"\r\n" + body)


def send_chunked(writer, parts):
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n")
    for p in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(p), p))
    writer.write(b"0\r\nX-Trailer: t\r\n\r\n")


async def respond(writer, method, path, q, headers, body, conn):
    if path == "/peer":
        close = q.get("close") == "1"
        conn["drop"] = q.get("drop") == "1"
        send(writer, 200, str(conn["peer"]), {"Connection": "close"} if close else None)
        return not close
    if path == "/redirect":
        send(writer, int(q.get("code", "302")), "moved", {"Location": q.get("to", "/echo")})
        return True
    if path == "/delay":
        await asyncio.sleep(float(q.get("s", "0.05")))
        send(writer, 200, "slept")
    elif path == "/echo":
        send(writer, 200, json.dumps({"method": method, "path": path, "query": q,
                                      "headers": headers, "body": body.decode("latin-1")}),
             {"X-Multi": "a", "x-multi": "b"})
    elif path == "/chunked":
        send_chunked(writer, [b"chunk%d\n" % i for i in range(int(q.get("n", "3")))])
    elif path == "/big":
        send(writer, 200, "x" * int(q.get("n", "1000")))
    elif path == "/big_chunked":
        n = int(q.get("n", "1000"))
        send_chunked(writer, [b"x" * min(65536, n - i) for i in range(0, n, 65536)])
    elif path == "/close":
        send(writer, 200, "y" * int(q.get("n", "10")), {"Connection": "close"}, length=False)
        return False
    elif path == "/status":
        code = int(q.get("code", "404"))
        send(writer, code, "status %d" % code)
    elif path == "/auth":
        await asyncio.sleep(float(q.get("s", "0")))
        ok = q.get("token") == "good"
        send(writer, 200 if ok else 403, "ok" if ok else "no")
    elif path == "/count":
        send(writer, 200, str(SEEN))
    elif path == "/trickle":
        # one byte at a time, so the client sees every split of the head and framing
        parts = [b"ab", b"", b"cdefghij", b"k"]
        if q.get("kind") == "chunked":
            raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                   + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p)
                   + b"0\r\nX-T: 2\r\n\r\n")
        else:
            raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 11\r\n"
                   b"X-A:  spaced  \r\n\r\n" + b"".join(parts))
        for i in range(len(raw)):
            writer.write(raw[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.002)
    elif path == "/hang":
        await asyncio.sleep(3600)
    else:
        send(writer, 404, "not found")
    return True


async def handle_echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if data.endswith(b"close\n"):
                writer.write(data[:-6] + b"closing\n")
                await writer.drain()
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def main():
    ctx = None
    if len(sys.argv) >= 4 and sys.argv[1] == "--tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    http = await asyncio.start_server(handle_http, "127.0.0.1", 0, ssl=ctx, backlog=4096)
    echo = await asyncio.start_server(handle_echo, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    print("ports %d %d" % (http.sockets[0].getsockname()[1], echo.sockets[0].getsockname()[1]),
          flush=True)
    await asyncio.gather(http.serve_forever(), echo.serve_forever())


asyncio.run(main())
