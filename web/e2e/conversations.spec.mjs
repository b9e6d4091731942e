// Protocol 1.1 in the browser, on a desktop and on a phone-sized window:
// the conversation list comes from the server (a DM sent while the user was
// logged out is there after login, with its unread count), reading on one
// device clears the badge on the other, a person's name opens the DM with
// them, a message elsewhere is announced while the list is hidden, and
// Leave removes a conversation for good.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  conversationsOf,
  joinVia,
  launchBrowser,
  loginVia,
  messageItem,
  openPage,
  sendVia,
  shot,
  unique,
  unreadBadge,
  VIEWPORTS,
  Viche,
  waitFor,
  waitForBodies,
  wsAs,
} from './harness.mjs';

describe('conversations, unread counts and DMs (protocol 1.1)', () => {
  let server;
  let browser;
  const contexts = [];

  before(async () => {
    server = await new Viche().start();
    browser = await launchBrowser();
  });

  after(async () => {
    for (const { page } of contexts) if (page.problems.length) console.log(`page problems: ${page.problems.join('\n')}`);
    await browser?.close();
    if (server) await server.dispose();
  });

  /** A fresh browser (its own storage) of this size, logged in as `user`. */
  async function device(user, options) {
    const d = await openPage(browser, server, options);
    contexts.push(d);
    await loginVia(d.page, user);
    await d.page.getByLabel('Room', { exact: true }).waitFor();
    return d;
  }

  /** A conversation's badge ("N unread"), or '' when there is none (does not wait). */
  async function badgeText(page, room) {
    return (await unreadBadge(page, room).allTextContents())[0] ?? '';
  }

  /** Shows the list (on a phone it hides behind the open conversation). */
  async function toList(page) {
    const back = page.getByRole('button', { name: /← Back/ });
    if (await back.isVisible()) await back.click();
  }

  /** Opens a conversation from the list. */
  async function openFromList(page, name) {
    await toList(page);
    await page.getByRole('button', { name }).click();
  }

  for (const [size, options] of Object.entries(VIEWPORTS)) {
    describe(`on a ${size}`, () => {
      it('finds a DM sent while logged out, with its unread badge; reading it on one device clears the badge on the other', async () => {
        const ann = unique('ann');
        const bob = unique('bob');
        const annSession = await server.register(ann);
        const bobSession = await server.register(bob);
        const dm = [ann, bob].sort().join(':');
        const room = `dm:${dm}`;

        // Bob logs in, then out.
        const first = await device(bob, options);
        await first.page.getByRole('button', { name: 'Log out' }).click();
        await first.page.getByLabel('Username', { exact: true }).waitFor();
        await first.context.close();

        // Ann writes to him while he is away.
        const acks = await wsAs(browser, server, annSession.token, [
          { t: 'dm', to: bob, body: 'are you there?', cid: 'd1' },
          { t: 'dm', to: bob, body: 'call me', cid: 'd2' },
        ]);
        assert.deepEqual(acks.map((a) => a.t), ['ack', 'ack']);

        // He logs in on a device that never saw anything: the DM is listed, with 2 unread.
        const phone = await device(bob, options);
        const item = phone.page.getByRole('button', { name: new RegExp(`@ ${ann}`) });
        await item.waitFor();
        assert.equal(await unreadBadge(phone.page, room).textContent(), '2 unread');
        assert.match(await item.textContent(), new RegExp(`${ann}: call me`));
        await shot(phone.page, `${size}-offline-dm-unread`);

        // And on a second device (the other size), the same count.
        const other = await device(bob, size === 'phone' ? VIEWPORTS.desktop : VIEWPORTS.phone);
        await waitFor('the badge on the other device', async () => (await badgeText(other.page, room)) === '2 unread');

        // Reading on one device clears the badge on the other.
        await item.click();
        await waitForBodies(phone.page, ['are you there?', 'call me']);
        await waitFor('the badge cleared on the other device', async () => (await unreadBadge(other.page, room).count()) === 0);
        await waitFor('the server agrees', async () => (await conversationsOf(server, bobSession.token)).find((c) => c.room === room)?.unread === 0);

        // With the DM no longer on screen, a new message raises the badge on both devices…
        if (size === 'phone') await toList(phone.page);
        else await joinVia(phone.page, unique('elsewhere'));
        await wsAs(browser, server, annSession.token, [{ t: 'dm', to: bob, body: 'still there?', cid: 'd3' }]);
        for (const p of [phone.page, other.page]) {
          await waitFor('a badge of 1', async () => (await badgeText(p, room)) === '1 unread');
        }
        // …and reading it on one clears it on the other.
        await item.click();
        await waitForBodies(phone.page, ['are you there?', 'call me', 'still there?']);
        await waitFor('read everywhere', async () => (await unreadBadge(other.page, room).count()) === 0);
        assert.equal(await unreadBadge(phone.page, room).count(), 0);
        await shot(other.page, `${size}-read-elsewhere`);
      });

      it("opens the DM from a person's name, and tells about a message in another conversation", async () => {
        const ann = unique('ann');
        const bob = unique('bob');
        const carol = unique('carol');
        const lobby = unique('lobby');
        await server.register(ann);
        await server.register(bob);
        const carolSession = await server.register(carol);

        const a = await device(ann, options);
        const b = await device(bob, VIEWPORTS.desktop);
        await joinVia(b.page, lobby);
        await joinVia(a.page, lobby);
        await sendVia(b.page, 'hello from bob');
        await waitForBodies(a.page, ['hello from bob']);

        // Bob's name in the Online list opens the DM with him.
        const online = a.page.getByRole('list', { name: 'Online' });
        await online.getByRole('button', { name: bob, exact: true }).click();
        await a.page.getByRole('heading', { name: `@ ${bob}` }).waitFor();
        await sendVia(a.page, 'psst');
        await waitForBodies(a.page, ['psst']);

        // So does his name on his message.
        await openFromList(a.page, new RegExp(`# ${lobby}`));
        await waitForBodies(a.page, ['hello from bob']);
        await messageItem(a.page, 1).getByRole('button', { name: bob, exact: true }).click();
        await a.page.getByRole('heading', { name: `@ ${bob}` }).waitFor();
        await waitForBodies(a.page, ['psst']);

        // While the DM with Bob is open, Carol writes: it is visible at once.
        await wsAs(browser, server, carolSession.token, [{ t: 'dm', to: ann, body: 'lunch at noon?', cid: 'c1' }]);
        const carolRoom = `dm:${[ann, carol].sort().join(':')}`;
        if (size === 'phone') {
          // The list is hidden behind the conversation: a notice names her,
          // and the way back to the list carries the unread count.
          const notice = a.page.getByTestId('incoming');
          await notice.waitFor();
          assert.match(await notice.textContent(), new RegExp(`New message from ${carol}.*lunch at noon\\?`));
          await waitFor('the unread count on Back', async () => /← Back\s*1\s*unread/.test(await a.page.getByRole('button', { name: /← Back/ }).textContent()));
          await shot(a.page, `${size}-incoming`);
          await notice.getByRole('button', { name: 'Open' }).click();
        } else {
          await waitFor('the badge in the list', async () => (await badgeText(a.page, carolRoom)) === '1 unread');
          await shot(a.page, `${size}-incoming`);
          await a.page.getByRole('button', { name: new RegExp(`@ ${carol}`) }).click();
        }
        await a.page.getByRole('heading', { name: `@ ${carol}` }).waitFor();
        await waitForBodies(a.page, ['lunch at noon?']);

        // A message in a room that is not open raises its badge too.
        await sendVia(b.page, 'anyone?');
        if (size === 'phone') {
          await waitFor('Back counts the room', async () => /1\s*unread/.test(await a.page.getByRole('button', { name: /← Back/ }).textContent()));
          await a.page.getByRole('button', { name: /← Back/ }).click();
        }
        await waitFor('the room badge', async () => (await badgeText(a.page, lobby)) === '1 unread');
      });

      it('joins once the rooms a pre-1.1 version of the app kept in this browser, then drops that list', async () => {
        const ann = unique('ann');
        const old = unique('old');
        await server.register(ann);
        const d = await openPage(browser, server, options);
        contexts.push(d);
        await d.page.evaluate(([u, r]) => localStorage.setItem(`viche:${u}:rooms`, JSON.stringify({ rooms: [r], dms: [], active: r })), [ann, old]);
        await loginVia(d.page, ann);
        // It opens as it was left, and the server adds it to her conversations.
        await d.page.getByRole('heading', { name: `# ${old}` }).waitFor();
        await waitFor('the old list dropped', () => d.page.evaluate((u) => localStorage.getItem(`viche:${u}:rooms`) === null, ann));
        const fresh = await device(ann, options);
        await fresh.page.getByRole('button', { name: `# ${old}` }).waitFor();
      });

      it('Leave removes the conversation, here, after a reload, and on the other device at its next connection', async () => {
        const ann = unique('ann');
        const room = unique('gone');
        const keep = unique('kept');
        const { token } = await server.register(ann);
        const a = await device(ann, options);
        await joinVia(a.page, keep);
        await toList(a.page);
        await joinVia(a.page, room);
        const other = await device(ann, size === 'phone' ? VIEWPORTS.desktop : VIEWPORTS.phone);
        await other.page.getByRole('button', { name: `# ${room}` }).waitFor();

        await a.page.getByRole('button', { name: 'Leave', exact: true }).click();
        await waitFor('the room gone from the list', async () => (await a.page.getByRole('button', { name: `# ${room}` }).count()) === 0);
        await waitFor('the server forgot it', async () => !(await conversationsOf(server, token)).some((c) => c.room === room));
        await a.page.reload();
        await a.page.getByRole('button', { name: `# ${keep}` }).waitFor();
        assert.equal(await a.page.getByRole('button', { name: `# ${room}` }).count(), 0, 'still gone after a reload');

        // The other device learns it when it connects again (and does not join it back).
        await other.page.evaluate(() => window.viche.ws?.close());
        await waitFor('gone on the other device', async () => (await other.page.getByRole('button', { name: `# ${room}` }).count()) === 0);
        await other.page.getByRole('button', { name: `# ${keep}` }).waitFor();
        assert.ok(!(await conversationsOf(server, token)).some((c) => c.room === room), 'not added back');
      });
    });
  }
});
