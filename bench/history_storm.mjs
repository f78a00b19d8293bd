// A reconnect storm against spec/apps/history (route /h): N clients connect and
// recover `back` publications each with ws:subscribe{since, epoch} ("recover"), or
// the same clients subscribe plainly and then `back` publications are fanned out to
// them ("fanout": the same frames delivered, the reference). Prints one JSON object:
// seconds from the first connect to the last frame, frames received, server CPU
// seconds (utime + stime of PID from /proc) over that time.
//   node bench/history_storm.mjs PORT PID recover|fanout N BACK
import WebSocket from "ws";
import { readFileSync } from "fs";

const [port, pid, mode, n, back] = process.argv.slice(2).map((v, i) => (i === 2 ? v : Number(v)));
const url = `ws://127.0.0.1:${port}/h`;
const topic = `big:storm-${mode}-${Date.now()}`;
const HZ = 100;

function cpu() {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8");
  const rest = f.slice(f.lastIndexOf(")") + 2).split(" ");
  return (Number(rest[11]) + Number(rest[12])) / HZ;
}

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

function ask(ws, cmd, op) {
  return new Promise((resolve) => {
    const on = (data) => {
      const m = JSON.parse(data);
      if (m.op === op) {
        ws.off("message", on);
        resolve(m);
      }
    };
    ws.on("message", on);
    ws.send(JSON.stringify(cmd));
  });
}

const ctl = await open();
// 2 * back publications kept; the clients saw the first `back` of them
await ask(ctl, { op: "pub", topic, msg: "m", n: 2 * back }, "pubbed");
const { epoch } = await ask(ctl, { op: "read", topic, limit: 1 }, "items");

let frames = 0;
let doneClients = 0;
let subbed = 0;
let resolveAll, resolveSubbed;
const allDone = new Promise((r) => (resolveAll = r));
const allSubbed = new Promise((r) => (resolveSubbed = r));
const cpu0 = cpu();
const t0 = process.hrtime.bigint();
const clients = [];
const WINDOW = 200;
for (let i = 0; i < n; i += WINDOW) {
  const batch = [];
  for (let j = i; j < Math.min(n, i + WINDOW); j++) {
    batch.push(
      open().then((ws) => {
        let got = 0;
        ws.on("message", (data) => {
          if (data.includes('"op"')) { // the subscribe's answer
            if (++subbed === n) resolveSubbed();
            return;
          }
          got++;
          frames++;
          if (got === back) {
            doneClients++;
            if (doneClients === n) resolveAll();
          }
        });
        if (mode === "recover") ws.send(JSON.stringify({ op: "sub", topic, since: back, epoch }));
        else ws.send(JSON.stringify({ op: "live", topic }));
        clients.push(ws);
        return ws;
      }),
    );
  }
  await Promise.all(batch);
}
if (mode === "fanout") {
  await allSubbed; // every client is subscribed: publish `back` messages
  await ask(ctl, { op: "pub", topic, msg: "f", n: back }, "pubbed");
}
await allDone;
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
const used = cpu() - cpu0;
console.log(JSON.stringify({ mode, clients: n, back, frames, seconds: secs, server_cpu_s: used }));
for (const ws of clients) ws.terminate();
ctl.terminate();
