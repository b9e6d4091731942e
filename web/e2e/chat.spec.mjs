// Two people in two browser contexts against a real viche: register, join a
// room, talk, see each other online and typing, a DM, a reload with the
// history, paging back, a bad login, keyboard-only use, a phone-sized window,
// and the time to first render a room of 50 messages.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  conversation,
  joinVia,
  launchBrowser,
  loginVia,
  onlineList,
  openPage,
  OUT,
  PASSWORD,
  postAs,
  registerVia,
  sendVia,
  shot,
  tabTo,
  Viche,
  waitFor,
  waitForBodies,
} from './harness.mjs';

describe('chatting in the browser', () => {
  let server;
  let browser;
  let alice;
  let bob;

  before(async () => {
    server = await new Viche().start();
    browser = await launchBrowser();
    alice = await openPage(browser, server);
    bob = await openPage(browser, server);
  });

  after(async () => {
    for (const p of [alice, bob]) if (p?.page.problems.length) console.log(`page problems: ${p.page.problems.join('\n')}`);
    await browser?.close();
    if (server) await server.dispose();
  });

  it('shows a bad login as words', async () => {
    await shot(alice.page, 'login');
    await loginVia(alice.page, 'nobody', 'wrong password');
    const alert = alice.page.getByRole('alert');
    await alert.waitFor();
    assert.equal(await alert.textContent(), 'Wrong username or password.');
    await shot(alice.page, 'login-error');
  });

  it('registers two users who meet in a room, see each other online and typing, and talk', async () => {
    await registerVia(alice.page, 'alice');
    await registerVia(bob.page, 'bob');
    await joinVia(alice.page, 'lobby');
    await joinVia(bob.page, 'lobby');

    await waitFor('both online for alice', async () => JSON.stringify(await onlineList(alice.page)) === JSON.stringify(['alice (you)', 'bob']));
    await waitFor('both online for bob', async () => JSON.stringify(await onlineList(bob.page)) === JSON.stringify(['alice', 'bob (you)']));

    // Bob types: Alice sees it.
    await bob.page.getByLabel('Message', { exact: true }).pressSequentially('hel');
    await alice.page.getByText('bob is typing…').waitFor();
    await shot(alice.page, 'room-typing');

    await sendVia(alice.page, 'Hi Bob, welcome to the lobby.');
    await sendVia(bob.page, 'Hello Alice!');
    await sendVia(alice.page, 'How are things?');
    const bodies = ['Hi Bob, welcome to the lobby.', 'Hello Alice!', 'How are things?'];
    for (const p of [alice.page, bob.page]) {
      const items = await waitForBodies(p, bodies);
      assert.deepEqual(items.map((i) => i.from), ['alice', 'bob', 'alice']);
      assert.deepEqual(items.map((i) => i.seq), [1, 2, 3]);
      assert.ok(items.every((i) => i.time && !Number.isNaN(Date.parse(i.time))), 'each message has a time');
    }
    // The list is a list of list items.
    assert.equal(await alice.page.getByRole('list', { name: 'Conversation' }).getByRole('listitem').count(), 3);
    await shot(alice.page, 'room');
    await shot(bob.page, 'room-bob');
  });

  it('starts a direct message by username, and the other side gets it', async () => {
    await alice.page.getByLabel('Direct message to', { exact: true }).fill('bob');
    await alice.page.getByRole('button', { name: 'Start', exact: true }).click();
    await alice.page.getByRole('heading', { name: '@ bob' }).waitFor();
    await sendVia(alice.page, 'Just between us.');
    await waitForBodies(alice.page, ['Just between us.']);

    // Bob is in the lobby: the DM appears in his list with an unread count.
    const dm = bob.page.getByRole('button', { name: /@ alice/ });
    await dm.waitFor();
    await waitFor('unread count on the DM', async () => /1\s*unread/.test(await dm.textContent()));
    await shot(bob.page, 'dm-unread');
    await dm.click();
    await waitForBodies(bob.page, ['Just between us.']);
    await sendVia(bob.page, 'Sure.');
    await waitForBodies(alice.page, ['Just between us.', 'Sure.']);
    await shot(alice.page, 'dm');
    // A DM to nobody says so.
    await alice.page.getByLabel('Direct message to', { exact: true }).fill('nobody');
    await alice.page.getByRole('button', { name: 'Start', exact: true }).click();
    await alice.page.getByText('There is no user called nobody.').waitFor();
    await alice.page.getByRole('button', { name: 'Dismiss' }).click();
  });

  it('keeps the session and shows the history after a reload', async () => {
    await alice.page.reload();
    await alice.page.getByRole('button', { name: /# lobby/ }).click();
    const items = await waitForBodies(alice.page, ['Hi Bob, welcome to the lobby.', 'Hello Alice!', 'How are things?']);
    assert.equal(items.length, 3, 'nothing shown twice');
    await alice.page.getByRole('button', { name: /@ bob/ }).click();
    await waitForBodies(alice.page, ['Just between us.', 'Sure.']);
    await shot(alice.page, 'after-reload');
  });

  it('renders a room of 50 messages fast, and pages back through older ones on scroll', async () => {
    const { token } = await server.register('carol');
    const bodies = Array.from({ length: 120 }, (_, i) => `archive message ${i + 1}`);
    await postAs(browser, server, token, 'archive', bodies);

    await joinVia(bob.page, 'archive');
    const first = await waitForBodies(bob.page, bodies.slice(70), 'the newest page');
    assert.equal(first.length, 50, 'one page of 50');
    // Performance API: from the history page's arrival to the 50 items committed, and to the next frame.
    const timing = await waitFor('the render measures', () =>
      bob.page.evaluate(() => {
        const get = (n) => performance.getEntriesByName(n, 'measure')[0]?.duration;
        const render = get('viche:first-render:archive');
        const paint = get('viche:first-paint:archive');
        return render !== undefined && paint !== undefined ? { render, paint } : null;
      }),
    );
    // Switching back to a room already loaded.
    await bob.page.getByRole('button', { name: /# lobby/ }).click();
    await bob.page.getByRole('button', { name: /# archive/ }).click();
    const switchMs = await waitFor('the switch measure', () =>
      bob.page.evaluate(() => performance.getEntriesByName('viche:switch-render:archive', 'measure').at(-1)?.duration ?? null),
    );
    const report = {
      messages: 50,
      firstRenderMs: Number(timing.render.toFixed(1)),
      firstRenderToNextFrameMs: Number(timing.paint.toFixed(1)),
      switchBackRenderMs: Number(switchMs.toFixed(1)),
    };
    console.log(`render timing: ${JSON.stringify(report)}`);
    writeFileSync(join(OUT, 'render-timing.json'), `${JSON.stringify(report, null, 2)}\n`);
    assert.ok(timing.render <= 100, `first render of 50 messages took ${timing.render} ms`);

    // Scrolling up loads the older pages until the start of the room.
    const list = bob.page.locator('.messages');
    await waitFor('all 120 after scrolling up', async () => {
      await list.evaluate((el) => el.scrollTo(0, 0));
      const items = await conversation(bob.page);
      return items.length === 120;
    });
    const all = await conversation(bob.page);
    assert.deepEqual(all.map((i) => i.seq), Array.from({ length: 120 }, (_, i) => i + 1));
    await bob.page.getByText('This is the start of the conversation.').waitFor();
    await shot(bob.page, 'history-scrolled');
  });

  it('works with the keyboard alone', async () => {
    const { context, page } = await openPage(browser, server);
    try {
      // The username field has the focus on arrival (wait for the app to
      // mount: keys typed before that go nowhere).
      await waitFor('focus in the username field', () =>
        page.getByLabel('Username', { exact: true }).evaluate((el) => el === document.activeElement),
      );
      await page.keyboard.type('dave');
      await page.keyboard.press('Tab');
      await page.keyboard.type(PASSWORD);
      await tabTo(page, page.getByRole('button', { name: 'Register' }));
      await page.keyboard.press('Enter');
      const room = page.getByLabel('Room', { exact: true });
      await room.waitFor();
      await tabTo(page, room);
      await page.keyboard.type('lobby');
      await page.keyboard.press('Enter');
      await page.getByRole('heading', { name: '# lobby' }).waitFor();
      // After joining, the message box has the focus.
      await waitFor('focus in the message box', () =>
        page.getByLabel('Message', { exact: true }).evaluate((el) => el === document.activeElement),
      );
      await page.keyboard.type('Typed without a mouse.');
      await page.keyboard.press('Enter');
      await waitForBodies(page, ['Typed without a mouse.']);
      await shot(page, 'keyboard');
    } finally {
      await context.close();
    }
  });

  it('reads well on a phone-sized window', async () => {
    const { context, page } = await openPage(browser, server, { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    try {
      await loginVia(page, 'bob');
      await page.getByLabel('Room', { exact: true }).waitFor();
      await shot(page, 'phone-list');
      // The room list comes from the server: this browser never joined the lobby, yet it is listed.
      await page.getByRole('button', { name: /# lobby/ }).click();
      await page.getByRole('heading', { name: '# lobby' }).waitFor();
      await waitForBodies(page, ['Hi Bob, welcome to the lobby.', 'Hello Alice!', 'How are things?', 'Typed without a mouse.']);
      const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
      assert.ok(fits, 'no sideways scrolling');
      assert.ok(await page.getByLabel('Message', { exact: true }).isVisible());
      assert.ok(await page.getByRole('list', { name: 'Online' }).isVisible());
      await shot(page, 'phone-chat');
      await page.getByRole('button', { name: '← Back' }).click();
      await page.getByLabel('Room', { exact: true }).waitFor({ state: 'visible' });
    } finally {
      await context.close();
    }
  });
});
