// Three chat pages on two switchboard processes (or one), for spec/e2e/browser_spec.lua:
//
//   node spec/support/chat_cluster.mjs BASE_A SCREENSHOT.png BASE_B
//
// ada and cy are served by A, bob by B. They chat; cy's network is cut (the browser goes
// offline) while the others go on and cy writes something; the network comes back; every
// page ends with the same messages, ids and order, each message once.
import { STEP, report, check, context, tab, login, say, messageText, run } from './browser_kit.mjs';

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
  const cyCtx = await context();
  const ada = await tab(await context(), 'ada', `${baseA}/`);
  const bob = await tab(await context(), 'bob', `${baseB}/`);
  const cy = await tab(cyCtx, 'cy', `${baseA}/`);
  await login(ada, 'ada', ROOM);
  await login(bob, 'bob', ROOM);
  await login(cy, 'cy', ROOM);
  await cy.locator('#member-list .member-nick', { hasText: 'bob' }).waitFor();
  check('members served by the other process are listed', true);

  await say(bob, 'b1');
  await say(ada, 'a1');
  await say(ada, 'a2');
  await say(bob, 'b2');
  await say(ada, 'a3');
  let r = await sameEverywhere([ada, bob, cy], 5);
  check('b1 a1 a2 b2 a3: every page shows all five, in one order', r.ok
    && JSON.stringify(r.lists[0].map((m) => m[2])) === '["b1","a1","a2","b2","a3"]', JSON.stringify(r.lists));

  // cy's network goes away: the page notices (offline emulation, or its socket dropped
  // when the browser keeps it), the others go on, cy writes something meanwhile.
  await cyCtx.setOffline(true);
  try {
    await cy.locator('#status[data-state="offline"]').waitFor({ timeout: 3000 });
    report.cut = 'offline';
  } catch {
    report.cut = 'dropped';
    await cy.evaluate(() => window.sbChat.client.drop());
    await cy.locator('#status[data-state="offline"]').waitFor();
  }
  check('the cut page shows it is offline', true);
  for (const [page, text] of [[bob, 'while cy was away 1'], [ada, 'while cy was away 2'], [bob, 'while cy was away 3']]) {
    await say(page, text);
    await messageText(ada, text).waitFor();
    await messageText(bob, text).waitFor();
  }
  await say(cy, 'written offline');
  await cy.locator('#send-notice', { hasText: 'Offline' }).waitFor();
  check('text written offline waits', await cy.locator('#messages .msg.pending').count() === 1);
  await cyCtx.setOffline(false);
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
}

run(main, shot);
