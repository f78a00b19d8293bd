// The chat page when the server's Redis goes away, for spec/e2e/browser_spec.lua:
//
//   node spec/support/chat_redis_away.mjs BASE SCREENSHOT.png REDIS_PID REDIS_PORT SERVER_LOG
//
// The server runs with --redis on a redis-server (REDIS_PID) that this script kills; a
// message written then is refused by the server (`unavailable`): the page keeps it,
// shows it waiting with one notice, and sends it again until it is taken, which it is
// once this script has started a new redis-server on the same port.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { STEP, check, browser, tab, login, say, messageText, run } from './browser_kit.mjs';

const [base, shot, redisPid, redisPort, serverLog] = process.argv.slice(2);

async function logSays(text) {
  const deadline = Date.now() + STEP;
  for (;;) {
    if (readFileSync(serverLog, 'utf8').includes(text)) return;
    if (Date.now() > deadline) throw new Error(`the server log never said "${text}"`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  const one = await browser('one', { width: 1000, height: 560 });
  let refused = 0;
  const ada = await tab(one, 'ada', `${base}/`, (page) => page.on('websocket', (ws) => ws.on('framereceived', (f) => {
    if (typeof f.payload === 'string' && f.payload.includes('"unavailable"')) refused += 1;
  })));
  await login(ada, 'ada', 'ops');
  await say(ada, 'before');
  await messageText(ada, 'before').waitFor();

  process.kill(Number(redisPid), 'SIGKILL');
  await logSays('redis: connection to');
  await say(ada, 'while redis is away');
  await ada.locator('#send-notice:not([hidden])', { hasText: 'cannot store messages' }).waitFor();
  check('a message the server cannot store is said so, in one notice',
    await ada.locator('#send-notice').count() === 1);
  check('it is kept, shown as waiting', await ada.locator('#messages .msg.pending .text',
    { hasText: 'while redis is away' }).count() === 1);
  check('the server did refuse it', refused > 0, String(refused));

  const redis = spawn('/usr/bin/redis-server', ['--port', redisPort, '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no'], { stdio: 'ignore' });
  try {
    await messageText(ada, 'while redis is away').waitFor({ timeout: 30000 });
    check('once Redis is back it is sent and shown', true);
    await ada.locator('#send-notice').waitFor({ state: 'hidden' });
    check('nothing is left pending', await ada.locator('#messages .msg.pending').count() === 0);
    await ada.screenshot({ path: shot });
  } finally {
    redis.kill('SIGKILL');
  }
}

run(main, shot);
