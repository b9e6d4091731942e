// A short-lived token is renewed with `auth` before it expires, so the
// session outlives it; a token that can no longer be renewed ends the
// session with a reason on the login screen.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { joinVia, launchBrowser, openPage, registerVia, sendVia, shot, sleep, Viche, waitForBodies } from './harness.mjs';

describe('token lifetime', () => {
  let server;
  let browser;

  before(async () => {
    server = await new Viche(['--token-ttl', '8']).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    if (server) await server.dispose();
  });

  it('renews the token before it expires and stays connected', async () => {
    const { page } = await openPage(browser, server);
    await registerVia(page, 'erin');
    await joinVia(page, 'lobby');
    const token = () => page.evaluate(() => JSON.parse(localStorage.getItem('viche:session')).token);
    const first = await token();
    // Twice the token's lifetime: it must have been renewed (at 6 s, then 12 s).
    await sleep(14_000);
    assert.notEqual(await token(), first, 'the token was renewed');
    assert.equal(await page.getByRole('status').textContent(), '', 'still connected, never reconnecting');
    await sendVia(page, 'still here');
    await waitForBodies(page, ['still here']);
  });

  it('after a reload (password forgotten) the session ends with a reason when the token expires', async () => {
    const { page } = await openPage(browser, server);
    await registerVia(page, 'frank');
    await page.reload();
    await page.getByLabel('Room', { exact: true }).waitFor();
    // The server closes the session (4001) when the token expires.
    await page.getByText('Your sign-in has expired. Please log in again.').waitFor({ timeout: 20_000 });
    assert.ok(await page.getByLabel('Username', { exact: true }).isVisible());
    await shot(page, 'session-expired');
  });
});
