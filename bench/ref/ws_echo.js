// Reference server: Node's `ws` (npm). /echo echoes every message; /fanout
// follows bench/fanout.lua's protocol (?role=sub subscribes, ?role=pub
// messages are sent to every subscriber). Usage: node ws_echo.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 9001);
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 << 20 });
const subs = new Set();

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/echo' && url.pathname !== '/fanout') {
    socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (url.pathname === '/echo') {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    } else if (url.searchParams.get('role') === 'sub') {
      subs.add(ws);
      ws.on('close', () => subs.delete(ws));
    } else {
      ws.on('message', (data, isBinary) => {
        for (const s of subs) s.send(data, { binary: isBinary });
      });
    }
  });
});
server.listen(port, '127.0.0.1', () => console.log(`ws listening on ${port}`));
