// Three chat pages on two switchboard processes (or one), for spec/e2e/browser_spec.lua:
//
//   node spec/support/chat_cluster.mjs BASE_A SCREENSHOT.png BASE_B
//
// ada and cy are served by A, bob by B. cy's page goes through a TCP proxy that this
// script can cut: its connections are reset on both sides and new ones refused. While
// cy is cut off the others go on and cy writes something; the network comes back; every
// page ends with the same messages, ids and order, each message once.
import net from 'node:net';
import { STEP, report, check, context, tab, login, say, messageText, run } from './browser_kit.mjs';

// A TCP proxy to `base`'s port on a free port of its own: { url, cut(), restore(), close() }.
async function proxy(base) {
  const target = Number(new URL(base).port);
  const live = new Set();
  let down = false;
  const srv = net.createServer((inbound) => {
    if (down) { inbound.resetAndDestroy(); return; }
    const outbound = net.connect(target, '127.0.0.1');
    const pair = [inbound, outbound];
    live.add(pair);
    const end = () => { live.delete(pair); inbound.destroy(); outbound.destroy(); };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    cut() {
      down = true;
      for (const [a, b] of live) { a.resetAndDestroy(); b.resetAndDestroy(); }
      live.clear();
    },
    restore() { down = false; },
    close() { srv.close(); },
  };
}

const [baseA, shot, baseB] = process.argv.slice(2);
const ROOM = 'net';

// [id, nick, text] of every room message a page holds, in order.
function messages(page) {
  return page.evaluate((room) => window.sbChat.state.rooms.get(room).items
    .filter((it) => it.type === 'message').map((it) => [it.id, it.nick, it.text]), ROOM);
}

async function sameEverywhere(pages, count) {
  const deadline = Date.now() + STEP;
  let lists;
  for (;;) {
    lists = await Promise.all(pages.map(messages));
    const a = JSON.stringify(lists[0]);
    if (lists[0].length >= count && lists.every((l) => JSON.stringify(l) === a)) return { ok: true, lists };
    if (Date.now() > deadline) return { ok: false, lists };
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  const cyNet = await proxy(baseA);
  const ada = await tab(await context(), 'ada', `${baseA}/`);
  const bob = await tab(await context(), 'bob', `${baseB}/`);
  const cy = await tab(await context(), 'cy', `${cyNet.url}/`);
  await login(ada, 'ada', ROOM);
  await login(bob, 'bob', ROOM);
  await login(cy, 'cy', ROOM);
  await cy.locator('#member-list .member-nick', { hasText: 'bob' }).waitFor();
  check('members served by the other process are listed', true);
  for (const page of [ada, bob, cy]) await page.locator('#joined-rooms .room .count', { hasText: '3' }).waitFor();
  check('every page counts the room\'s members on every process', true);

  await say(bob, 'b1');
  await say(ada, 'a1');
  await say(ada, 'a2');
  await say(bob, 'b2');
  await say(ada, 'a3');
  let r = await sameEverywhere([ada, bob, cy], 5);
  check('b1 a1 a2 b2 a3: every page shows all five, in one order', r.ok
    && JSON.stringify(r.lists[0].map((m) => m[2])) === '["b1","a1","a2","b2","a3"]', JSON.stringify(r.lists));

  // cy's network goes away: both ends of its connection are reset.
  cyNet.cut();
  await cy.locator('#status[data-state="offline"]').waitFor();
  check('the cut page shows it is offline', true);
  for (const [page, text] of [[bob, 'while cy was away 1'], [ada, 'while cy was away 2'], [bob, 'while cy was away 3']]) {
    await say(page, text);
    await messageText(ada, text).waitFor();
    await messageText(bob, text).waitFor();
  }
  await say(cy, 'written offline');
  await cy.locator('#send-notice', { hasText: 'Offline' }).waitFor();
  check('text written offline waits', await cy.locator('#messages .msg.pending').count() === 1);
  cyNet.restore();
  await cy.locator('#status[data-state="online"]').waitFor({ timeout: 30000 });
  await messageText(cy, 'while cy was away 3').waitFor();
  await messageText(ada, 'written offline').waitFor();
  await say(ada, 'after');
  r = await sameEverywhere([ada, bob, cy], 10);
  check('every page ends with the same messages, ids and order', r.ok, JSON.stringify(r.lists));
  const ids = r.lists[0].map((m) => m[0]);
  check('each message once, ids increasing', ids.every((id, i) => i === 0 || id > ids[i - 1]), JSON.stringify(ids));
  check('the cut page got what it missed as a recovery, not a reset',
    await cy.locator('#messages .notice', { hasText: 'was reset' }).count() === 0
    && await cy.locator('#messages .notice', { hasText: 'missed' }).count() === 0);
  await cy.screenshot({ path: shot });
  check('no alert dialog was opened', report.dialogs === 0);
  check('no errors in the console', report.console.length === 0, report.console.join('; '));
  cyNet.close();
}

run(main, shot);
