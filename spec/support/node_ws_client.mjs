// Drives /echo on a switchboard server with Node's `ws` client (npm) and
// prints one JSON object describing what came back, for spec/e2e/node_ws_spec.lua.
//   node spec/support/node_ws_client.mjs PORT
import WebSocket from "ws";

const port = Number(process.argv[2]);
const url = `ws://127.0.0.1:${port}/echo`;
const out = {};

function open(opts = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    ws.binaryType = "nodebuffer";
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

function next(ws) {
  return new Promise((resolve, reject) => {
    const onClose = (code) => reject(new Error("closed " + code));
    ws.once("close", onClose);
    ws.once("message", (data, isBinary) => {
      ws.off("close", onClose);
      resolve({ data, isBinary });
    });
  });
}

const deadline = setTimeout(() => {
  console.log(JSON.stringify({ error: "timeout", partial: out }));
  process.exit(1);
}, 20000);

try {
  const ws = await open({ perMessageDeflate: false });
  // text and binary, sizes across every length encoding
  out.echoes = [];
  for (const n of [0, 1, 125, 126, 65535, 65536, 1 << 20]) {
    const text = "é".repeat(Math.floor(n / 2)) + (n % 2 ? "x" : "");
    ws.send(text);
    const t = await next(ws);
    const bin = Buffer.alloc(n);
    for (let i = 0; i < n; i++) bin[i] = (i * 7 + 3) & 0xff;
    ws.send(bin);
    const b = await next(ws);
    out.echoes.push({
      n,
      text_ok: !t.isBinary && t.data.toString("utf8") === text,
      bin_ok: b.isBinary && Buffer.compare(b.data, bin) === 0,
    });
  }
  // a fragmented message: ws sends fin=false frames with {fin:false}
  ws.send("frag-", { fin: false });
  ws.send("ment-", { fin: false });
  ws.send("ed", { fin: true });
  out.fragmented = (await next(ws)).data.toString();
  // ping with a payload: the pong carries it back
  out.pong = await new Promise((resolve) => {
    ws.once("pong", (data) => resolve(data.toString()));
    ws.ping("are you there");
  });
  // clean close with a code and reason: the server echoes the code
  out.close = await new Promise((resolve) => {
    ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    ws.close(4001, "done here");
  });
  console.log(JSON.stringify(out));
  clearTimeout(deadline);
} catch (e) {
  console.log(JSON.stringify({ error: String(e), partial: out }));
  process.exit(1);
}
