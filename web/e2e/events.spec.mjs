// Protocol 1.1's events in the browser, on a desktop and on a phone-sized
// window: edit, delete, react and reply through buttons named "Edit",
// "Delete", "React" and "Reply" (keyboard included), seen by both sides;
// a refused edit says why and changes nothing; a client that was offline
// resumes with `join since` and applies the events it missed.
import { decode } from '@msgpack/msgpack';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  joinVia,
  launchBrowser,
  loginVia,
  messageItem,
  openPage,
  sendVia,
  shot,
  tabTo,
  unique,
  VIEWPORTS,
  Viche,
  waitFor,
  waitForBodies,
  wsAs,
} from './harness.mjs';

const body = (page, seq) => messageItem(page, seq).locator('.body').textContent();
const button = (page, seq, name) => messageItem(page, seq).getByRole('button', { name, exact: true });

describe('edits, deletions, reactions and replies (protocol 1.1)', () => {
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

  async function device(user, options) {
    const d = await openPage(browser, server, options);
    contexts.push(d);
    await loginVia(d.page, user);
    await d.page.getByLabel('Room', { exact: true }).waitFor();
    return d;
  }

  for (const [size, options] of Object.entries(VIEWPORTS)) {
    describe(`on a ${size}`, () => {
      it('edits, reacts, replies and deletes through the accessible buttons, and both sides see it', async () => {
        const ann = unique('ann');
        const bob = unique('bob');
        const room = unique('events');
        await server.register(ann);
        await server.register(bob);
        const a = await device(ann, options);
        const b = await device(bob, VIEWPORTS.desktop);
        await joinVia(a.page, room);
        await joinVia(b.page, room);
        await sendVia(a.page, 'helo everyone');
        await waitForBodies(b.page, ['helo everyone']);

        // Edit and Delete are offered on one's own messages only.
        assert.equal(await button(b.page, 1, 'Edit').count(), 0);
        assert.equal(await button(b.page, 1, 'Delete').count(), 0);

        // Ann edits: both see the new body, marked "(edited)".
        await button(a.page, 1, 'Edit').click();
        const box = a.page.getByLabel('Edit message', { exact: true });
        await box.fill('hello everyone');
        await box.press('Enter');
        for (const p of [a.page, b.page]) {
          await waitFor(`the edit on ${p === a.page ? ann : bob}'s screen`, async () => (await body(p, 1)) === 'hello everyone');
          await messageItem(p, 1).getByText('(edited)').waitFor();
        }

        // Bob reacts with the keyboard alone: Tab to "React", Space, Enter.
        await messageItem(b.page, 1).getByRole('button', { name: ann, exact: true }).focus();
        await tabTo(b.page, button(b.page, 1, 'React'));
        await b.page.keyboard.press(' ');
        await waitFor('the first reaction focused', () =>
          b.page.evaluate(() => document.activeElement?.getAttribute('aria-label') === '👍 thumbs up'),
        );
        await b.page.keyboard.press('Enter');
        await button(b.page, 1, '👍 1').waitFor();
        assert.equal(await button(b.page, 1, '👍 1').getAttribute('aria-pressed'), 'true', 'his own reaction shows as his');
        await button(a.page, 1, '👍 1').waitFor();
        assert.equal(await button(a.page, 1, '👍 1').getAttribute('aria-pressed'), 'false');

        // Ann adds hers with a click; Bob takes his back by clicking his.
        await button(a.page, 1, 'React').click();
        await a.page.getByRole('button', { name: '🎉 party', exact: true }).click();
        await button(b.page, 1, '🎉 1').waitFor();
        await button(b.page, 1, '👍 1').click();
        for (const p of [a.page, b.page]) await waitFor('the 👍 taken back', async () => (await button(p, 1, '👍 1').count()) === 0);
        assert.equal(await button(a.page, 1, '🎉 1').getAttribute('aria-pressed'), 'true');
        await shot(a.page, `${size}-reactions`);

        // Bob replies: the composer says to what, and the reply shows it.
        await button(b.page, 1, 'Reply').click();
        await b.page.getByText(`Replying to ${ann}: hello everyone`).waitFor();
        await b.page.getByLabel('Message', { exact: true }).fill('welcome!');
        await b.page.getByLabel('Message', { exact: true }).press('Enter');
        const reply = (p) => p.locator('ol[aria-label="Conversation"] > li[data-seq]').filter({ has: p.locator('.body', { hasText: 'welcome!' }) });
        for (const p of [a.page, b.page]) {
          await waitForBodies(p, ['hello everyone', 'welcome!']);
          assert.equal(await reply(p).locator('.reply-quote').textContent(), `In reply to ↪ ${ann}: hello everyone`);
        }
        await shot(a.page, `${size}-reply`);

        // Ann deletes her message (she is asked first).
        await button(a.page, 1, 'Delete').click();
        await a.page.getByRole('button', { name: 'Yes, delete', exact: true }).click();
        for (const p of [a.page, b.page]) {
          await waitFor('the deletion', async () => (await body(p, 1)) === 'message deleted');
          assert.equal(await messageItem(p, 1).getByRole('button').filter({ hasText: /Reply|React|Edit|Delete|🎉/ }).count(), 0, 'nothing to act on');
          assert.equal(await reply(p).locator('.reply-quote').textContent(), `In reply to ↪ ${ann}: message deleted`);
        }
        await shot(b.page, `${size}-deleted`);
      });

      it('a refused edit says why and changes nothing', async () => {
        const ann = unique('ann');
        const bob = unique('bob');
        const room = unique('refused');
        await server.register(ann);
        await server.register(bob);
        const a = await device(ann, options);
        const other = await device(ann, VIEWPORTS.desktop); // Ann's other device
        const b = await device(bob, VIEWPORTS.desktop);
        for (const p of [a.page, other.page, b.page]) await joinVia(p, room);
        await sendVia(other.page, 'draft');
        await sendVia(other.page, 'keep me');
        await waitForBodies(a.page, ['draft', 'keep me']);
        await waitForBodies(b.page, ['draft', 'keep me']);

        // Ann starts editing here while her other device deletes the message.
        await button(a.page, 1, 'Edit').click();
        await a.page.getByLabel('Edit message', { exact: true }).fill('draft, improved');
        await button(other.page, 1, 'Delete').click();
        await other.page.getByRole('button', { name: 'Yes, delete', exact: true }).click();
        await waitFor('the deletion on the first device', async () => (await messageItem(a.page, 1).locator('.body').count()) === 0 || (await body(a.page, 1)) === 'message deleted');
        await a.page.getByRole('button', { name: 'Save', exact: true }).click();
        const alert = a.page.getByRole('alert');
        await alert.waitFor();
        assert.match(await alert.textContent(), /That message can no longer be edited: it was deleted, or it is not a message\. Nothing was changed\./);
        await waitFor('still deleted', async () => (await body(a.page, 1)) === 'message deleted');
        assert.equal(await messageItem(a.page, 1).getByText('(edited)').count(), 0);
        await shot(a.page, `${size}-refused-edit`);
        await a.page.getByRole('button', { name: 'Dismiss', exact: true }).click();

        // Bob cannot edit Ann's message: the UI offers no Edit, and the server refuses it anyway.
        assert.equal(await button(b.page, 2, 'Edit').count(), 0);
        await b.page.evaluate((r) => window.viche.edit(r, 2, 'hijacked'), room);
        await b.page.getByRole('alert').getByText('You can only edit your own messages. Nothing was changed.').waitFor();
        assert.equal(await body(b.page, 2), 'keep me');
        assert.equal(await body(a.page, 2), 'keep me');
      });

      it('a client that was offline resumes with since and applies the events it missed', async () => {
        const ann = unique('ann');
        const bob = unique('bob');
        const room = unique('resume');
        await server.register(ann);
        const { token: bobToken } = await server.register(bob);
        const a = await device(ann, options);
        await joinVia(a.page, room);
        await wsAs(browser, server, bobToken, [
          { t: 'join', room },
          { t: 'send', room, body: 'one', cid: 'b1' },
          { t: 'send', room, body: 'two', cid: 'b2' },
        ]);
        await waitForBodies(a.page, ['one', 'two']);

        // Watch the joins Ann's browser sends.
        const joins = [];
        a.page.on('websocket', (ws) =>
          ws.on('framesent', (f) => {
            try {
              const frame = typeof f.payload === 'string' ? JSON.parse(f.payload) : decode(f.payload);
              if (frame.t === 'join') joins.push(frame);
            } catch {
              // not a frame
            }
          }),
        );
        // Her connection drops and she stays offline.
        await a.context.setOffline(true);
        await a.page.evaluate(() => window.viche.ws?.close());
        await a.page.getByRole('status').getByText(/Reconnecting…/).waitFor();

        // Meanwhile Bob edits, reacts, deletes and writes.
        const acks = await wsAs(browser, server, bobToken, [
          { t: 'join', room },
          { t: 'edit', room, target: 1, body: 'one (edited offline)', cid: 'e1' },
          { t: 'react', room, target: 1, emoji: '👍', on: true, cid: 'x1' },
          { t: 'delete', room, target: 2, cid: 'd1' },
          { t: 'send', room, body: 'three', cid: 'b3' },
        ]);
        assert.deepEqual(acks.map((f) => f.t), ['ok', 'ack', 'ack', 'ack', 'ack']);
        assert.equal(await body(a.page, 1), 'one', 'she has not seen it yet');

        // Back online: the page's "online" event reconnects at once.
        await a.context.setOffline(false);
        await waitFor('back online', async () => (await a.page.getByRole('status').textContent()) === '');
        await waitForBodies(a.page, ['one (edited offline)', 'message deleted', 'three']);
        await messageItem(a.page, 1).getByText('(edited)').waitFor();
        await button(a.page, 1, '👍 1').waitFor();
        const resume = joins.find((f) => f.room === room);
        assert.ok(resume, 'the room was joined again');
        assert.equal(resume.since, 2, 'resumed from the last seq seen');
        await shot(a.page, `${size}-resumed`);
      });
    });
  }
});
