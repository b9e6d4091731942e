// Shared pieces of the browser scenarios: a real viche process, Debian's
// chromium driven by playwright-core, and small helpers that act as a
// person would (by label and role).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const WEB = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = resolve(WEB, '..');
export const OUT = join(WEB, 'test-output');
// cargo builds into CARGO_TARGET_DIR (relative to the root, where run.mjs runs it) when set.
export const BIN = process.env.VICHE_BIN ?? join(resolve(ROOT, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug', 'viche');
export const PASSWORD = 'correct horse battery';
/** Generous: this machine has 2 cores shared with cargo. */
export const T = 30_000;

mkdirSync(OUT, { recursive: true });

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout`. */
export async function waitFor(what, fn, timeout = T) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(100);
  }
}

/** A viche process on a free loopback port with its own data dir. */
export class Viche {
  constructor(args = []) {
    this.dir = mkdtempSync(join(tmpdir(), 'viche-web-e2e-'));
    this.dataDir = join(this.dir, 'data');
    this.log = join(this.dir, 'server.log');
    this.args = args;
    this.port = 0;
    this.child = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts (or restarts, on the same port and data) and waits for /healthz. */
  async start() {
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!this.port || attempt > 0) this.port = await freePort();
      const out = openSync(this.log, 'a');
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VICHE_')));
      this.child = spawn(
        BIN,
        [
          '--listen', `127.0.0.1:${this.port}`,
          '--data-dir', this.dataDir,
          '--web-dir', join(WEB, 'dist'),
          '--jwt-secret', 'viche-web-e2e-secret-0123456789abcdef',
          ...this.args,
        ],
        { env: { ...env, RUST_LOG: 'info' }, stdio: ['ignore', out, out] },
      );
      let exited = false;
      this.child.once('exit', () => (exited = true));
      const deadline = Date.now() + 60_000;
      while (!exited && Date.now() < deadline) {
        try {
          const r = await fetch(`${this.url}/healthz`);
          if (r.ok) return this;
        } catch {
          // not up yet
        }
        await sleep(50);
      }
      if (!exited) break;
    }
    throw new Error(`viche did not start:\n${this.logTail()}`);
  }

  /** Stops the process: SIGTERM (graceful, 1001) or SIGKILL. */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    let timer;
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 40_000)))]);
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  }

  logTail(n = 3000) {
    try {
      const text = readFileSync(this.log, 'utf8');
      return text.slice(-n);
    } catch {
      return '(no log)';
    }
  }

  async dispose() {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Registers a user over HTTP; returns its session. */
  async register(user) {
    const r = await fetch(`${this.url}/api/register`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: user, password: PASSWORD }),
    });
    if (r.status !== 201) throw new Error(`register ${user}: ${r.status} ${await r.text()}`);
    return r.json();
  }
}

export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/** A fresh browser context (its own storage) with a page on viche. */
export async function openPage(browser, server, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket|ERR_|Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.problems = problems;
  await page.goto(server.url);
  return { context, page };
}

export async function shot(page, name) {
  await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: false });
}

// ---- acting as a person -------------------------------------------------

export async function registerVia(page, user) {
  await page.getByLabel('Username', { exact: true }).fill(user);
  await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await page.getByRole('button', { name: 'Register' }).click();
  await page.getByLabel('Room', { exact: true }).waitFor();
}

export async function loginVia(page, user, password = PASSWORD) {
  await page.getByLabel('Username', { exact: true }).fill(user);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
}

export async function joinVia(page, room) {
  await page.getByLabel('Room', { exact: true }).fill(room);
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await page.getByRole('heading', { name: `# ${room}` }).waitFor();
}

export async function sendVia(page, text) {
  const box = page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
}

/** The conversation on screen: stored messages and pending ones. */
export function conversation(page) {
  return page.getByRole('list', { name: 'Conversation' }).evaluate((list) =>
    [...list.querySelectorAll(':scope > li')].map((li) => ({
      seq: li.dataset.seq ? Number(li.dataset.seq) : null,
      pending: li.dataset.pending ?? null,
      from: li.querySelector('.author')?.textContent ?? '',
      time: li.querySelector('time')?.getAttribute('datetime') ?? null,
      body: li.querySelector('.body')?.textContent ?? '',
    })),
  );
}

export async function onlineList(page) {
  return page.getByRole('list', { name: 'Online' }).getByRole('listitem').allTextContents();
}

/** Waits until the conversation shows `bodies` (stored, in this order, each once). */
export async function waitForBodies(page, bodies, what = 'messages') {
  return waitFor(`${what}: ${bodies.join(' | ')}`, async () => {
    const items = await conversation(page);
    const stored = items.filter((i) => i.seq !== null).map((i) => i.body);
    const wanted = stored.filter((b) => bodies.includes(b));
    return JSON.stringify(wanted) === JSON.stringify(bodies) ? items : false;
  });
}

/**
 * A third party speaking JSON over a raw WebSocket from a blank page of the
 * server's origin: joins `room` and sends `bodies`, waiting for each ack.
 */
export async function postAs(browser, server, token, room, bodies) {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${server.url}/healthz`);
    return await page.evaluate(
      async ({ url, token, room, bodies }) => {
        const ws = new WebSocket(url);
        const frames = [];
        let wake = () => {};
        ws.onmessage = (e) => {
          frames.push(JSON.parse(e.data));
          wake();
        };
        const next = async (pred) => {
          for (;;) {
            const i = frames.findIndex(pred);
            if (i >= 0) return frames.splice(i, 1)[0];
            await new Promise((r) => (wake = r));
          }
        };
        await new Promise((r, j) => {
          ws.onopen = r;
          ws.onerror = j;
        });
        ws.send(JSON.stringify({ t: 'hello', v: 1, token }));
        await next((f) => f.t === 'welcome');
        ws.send(JSON.stringify({ t: 'join', ref: 1, room }));
        await next((f) => f.ref === 1);
        const seqs = [];
        let ref = 2;
        for (const body of bodies) {
          const cid = `${Date.now()}-${Math.random()}`;
          for (;;) {
            const r = ref++;
            ws.send(JSON.stringify({ t: 'send', ref: r, room, body, cid }));
            const ack = await next((f) => f.ref === r);
            if (ack.t === 'ack') {
              seqs.push(ack.seq);
              break;
            }
            if (ack.code !== 'rate_limited') throw new Error(JSON.stringify(ack));
            await new Promise((w) => setTimeout(w, 250));
          }
        }
        ws.close();
        return seqs;
      },
      { url: `ws://127.0.0.1:${server.port}/ws`, token, room, bodies },
    );
  } finally {
    await context.close();
  }
}

/**
 * A third party speaking JSON over a raw WebSocket: sends each of `frames`
 * (a `ref` is added) and waits for its answer; `rate_limited` is retried.
 * Returns the answers (`ack`, `ok`, `error`, …).
 */
export async function wsAs(browser, server, token, frames) {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${server.url}/healthz`);
    return await page.evaluate(
      async ({ url, token, frames }) => {
        const ws = new WebSocket(url);
        const got = [];
        let wake = () => {};
        ws.onmessage = (e) => {
          got.push(JSON.parse(e.data));
          wake();
        };
        const next = async (pred) => {
          for (;;) {
            const i = got.findIndex(pred);
            if (i >= 0) return got.splice(i, 1)[0];
            await new Promise((r) => (wake = r));
          }
        };
        await new Promise((r, j) => {
          ws.onopen = r;
          ws.onerror = j;
        });
        ws.send(JSON.stringify({ t: 'hello', v: 1, token }));
        await next((f) => f.t === 'welcome');
        const answers = [];
        let ref = 1;
        for (const frame of frames) {
          for (;;) {
            const r = ref++;
            ws.send(JSON.stringify({ ...frame, ref: r }));
            const answer = await next((f) => f.ref === r);
            if (answer.t === 'error' && answer.code === 'rate_limited') {
              await new Promise((w) => setTimeout(w, 250));
              continue;
            }
            answers.push(answer);
            break;
          }
        }
        ws.close();
        return answers;
      },
      { url: `ws://127.0.0.1:${server.port}/ws`, token, frames },
    );
  } finally {
    await context.close();
  }
}

/** Window sizes every v1.1 scenario runs in. */
export const VIEWPORTS = {
  desktop: { viewport: { width: 1100, height: 720 } },
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true },
};

/** A message of the open conversation, by seq. */
export function messageItem(page, seq) {
  return page.locator(`ol[aria-label="Conversation"] > li[data-seq="${seq}"]`);
}

/** The unread badge of a conversation in the list (its text is "N unread"). */
export function unreadBadge(page, room) {
  return page.getByTestId(`unread-${room}`);
}

/** The user's conversations over HTTP, as the server counts them. */
export async function conversationsOf(server, token) {
  const r = await fetch(`${server.url}/api/conversations`, { headers: { Authorization: `Bearer ${token}` } });
  if (!r.ok) throw new Error(`GET /api/conversations: ${r.status} ${await r.text()}`);
  return (await r.json()).conversations;
}

/** Presses Tab until `locator` has the focus; fails if it never does. */
export async function tabTo(page, locator, max = 60) {
  for (let i = 0; i < max; i++) {
    if (await locator.evaluate((el) => el === document.activeElement)) return;
    await page.keyboard.press('Tab');
  }
  throw new Error('not reachable with the Tab key');
}

export function unique(prefix) {
  return `${prefix}${Date.now().toString(36).slice(-5)}${Math.floor(Math.random() * 1000)}`;
}
