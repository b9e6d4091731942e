// The server restarts mid-conversation: both clients show "Reconnecting…",
// a message written meanwhile waits as pending, and after the restart every
// client resumes with `join since`: everything once, in order, no gap.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  conversation,
  joinVia,
  launchBrowser,
  openPage,
  postAs,
  registerVia,
  sendVia,
  shot,
  sleep,
  Viche,
  waitFor,
  waitForBodies,
} from './harness.mjs';

async function assertExactly(page, bodies, who) {
  const items = await waitForBodies(page, bodies, `${who}'s conversation`);
  const stored = items.filter((i) => i.seq !== null);
  assert.deepEqual(stored.map((i) => i.body), bodies, `${who}: each message once, in order`);
  assert.deepEqual(stored.map((i) => i.seq), bodies.map((_, i) => i + 1), `${who}: seqs without a gap`);
  await waitFor(`${who}: nothing left pending`, async () => (await conversation(page)).every((i) => i.pending === null));
}

describe('a server restart mid-conversation', () => {
  let server;
  let browser;
  let alice;
  let bob;

  before(async () => {
    server = await new Viche(['--token-ttl', '3600']).start();
    browser = await launchBrowser();
    alice = await openPage(browser, server);
    bob = await openPage(browser, server);
  });

  after(async () => {
    await browser?.close();
    if (server) await server.dispose();
  });

  it('resumes with no gap and no duplicate', async () => {
    await registerVia(alice.page, 'alice');
    await registerVia(bob.page, 'bob');
    const { token: carol } = await server.register('carol');
    await joinVia(alice.page, 'ops');
    await joinVia(bob.page, 'ops');
    await sendVia(alice.page, 'before 1');
    await waitForBodies(bob.page, ['before 1']);
    await sendVia(bob.page, 'before 2');
    await waitForBodies(alice.page, ['before 1', 'before 2']);

    // Kill the server hard: nothing graceful.
    await server.stop('SIGKILL');
    for (const p of [alice.page, bob.page]) await p.getByRole('status').getByText(/Reconnecting…/).waitFor();
    // Alice writes while it is down: the message waits, visibly.
    await sendVia(alice.page, 'written while down');
    await alice.page.locator('[data-pending="waiting"]').waitFor();
    await shot(alice.page, 'reconnecting');

    // Bob's browser is offline for a while, so he misses what follows live.
    await bob.context.setOffline(true);
    await sleep(1000);
    await server.start();
    // Right after the restart, someone else talks in the room.
    await postAs(browser, server, carol, 'ops', ['after 1', 'after 2', 'after 3']);

    const all = ['before 1', 'before 2', 'written while down', 'after 1', 'after 2', 'after 3'];
    const withoutPending = ['before 1', 'before 2', 'after 1', 'after 2', 'after 3'];
    // Alice resumes; her pending message is sent again with its cid and stored once.
    await waitForBodies(alice.page, withoutPending, 'alice');
    // Bob really missed them: still offline, still reconnecting.
    assert.match(await bob.page.getByRole('status').textContent(), /Reconnecting…/);
    assert.ok(!(await conversation(bob.page)).some((i) => i.body.startsWith('after')), 'bob has not seen them yet');
    await shot(bob.page, 'offline');
    await waitFor('alice online', async () => (await alice.page.getByRole('status').textContent()) === '');

    await bob.context.setOffline(false);
    // Bob comes back and gets exactly what he missed.
    await waitFor('bob online', async () => (await bob.page.getByRole('status').textContent()) === '');

    // Both see the same conversation: the pending one is in it once, wherever the server put it.
    const final = async (page) => (await conversation(page)).filter((i) => i.seq !== null).map((i) => i.body);
    await waitFor('alice has all six', async () => (await final(alice.page)).length === 6);
    const order = await final(alice.page);
    assert.deepEqual([...order].sort(), [...all].sort(), 'every message, once');
    await assertExactly(alice.page, order, 'alice');
    await assertExactly(bob.page, order, 'bob');

    // And the conversation goes on.
    await sendVia(bob.page, 'back again');
    await assertExactly(alice.page, [...order, 'back again'], 'alice');
    await shot(bob.page, 'resumed');
  });
});
