import { act, cleanup, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from './App';
import { ChatClient } from './client';
import { event, FakeSocket, fakeToken, MemoryStorage, msg } from './test/fakes';

function makeClient(storage = new MemoryStorage()) {
  return new ChatClient({ url: 'ws://test/ws', createSocket: (u) => new FakeSocket(u), storage, random: () => 0.5 });
}

function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

function signedIn(user = 'alice') {
  const iat = Math.floor(Date.now() / 1000);
  return { user, token: fakeToken(user, iat, iat + 3600), expiresAt: (iat + 3600) * 1000 };
}

beforeEach(() => {
  FakeSocket.all = [];
});
afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('login screen', () => {
  it('labels its fields and shows a bad login in words', async () => {
    const fetchMock = vi.fn(async () => jsonResponse(401, { error: 'unauthorized', message: 'wrong username or password' }));
    vi.stubGlobal('fetch', fetchMock);
    render(<App client={makeClient()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Username'), 'alice');
    await user.type(screen.getByLabelText('Password'), 'not-the-password');
    await user.keyboard('{Enter}');
    expect(await screen.findByRole('alert')).toHaveProperty('textContent', 'Wrong username or password.');
    expect(fetchMock).toHaveBeenCalledWith('/api/login', expect.objectContaining({ method: 'POST' }));
  });

  it('says a taken username is taken', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => jsonResponse(409, { error: 'conflict', message: 'taken' })));
    render(<App client={makeClient()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Username'), 'alice');
    await user.type(screen.getByLabelText('Password'), 'long-enough');
    await user.click(screen.getByRole('button', { name: 'Register' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/already taken/);
  });

  it('checks the rules before registering', async () => {
    const fetchMock = vi.fn();
    vi.stubGlobal('fetch', fetchMock);
    render(<App client={makeClient()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Username'), 'al');
    await user.type(screen.getByLabelText('Password'), 'short');
    await user.click(screen.getByRole('button', { name: 'Register' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/3 to 32/);
    expect(fetchMock).not.toHaveBeenCalled();
  });

  it('registers and opens the chat', async () => {
    const iat = Math.floor(Date.now() / 1000);
    vi.stubGlobal('fetch', vi.fn(async () => jsonResponse(201, { user: 'alice', token: fakeToken('alice', iat, iat + 60), expires_at: (iat + 60) * 1000 })));
    render(<App client={makeClient()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Username'), 'alice');
    await user.type(screen.getByLabelText('Password'), 'long-enough');
    await user.click(screen.getByRole('button', { name: 'Register' }));
    expect(await screen.findByLabelText('Room')).toBeTruthy();
    expect(screen.getByLabelText('Direct message to')).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Join' })).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Start' })).toBeTruthy();
  });
});

describe('chat screen', () => {
  it('shows messages as a list, who is online, who is typing, and the reconnecting state', async () => {
    const client = makeClient();
    render(<App client={client} />);
    await act(async () => client.start(signedIn()));
    const ws = FakeSocket.last();
    await act(async () => {
      ws.open();
      ws.welcome();
    });
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Room'), 'lobby');
    await user.click(screen.getByRole('button', { name: 'Join' }));
    await act(async () => {
      ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 2, members: ['alice', 'bob'], more: false });
      ws.receive({ t: 'history', ref: ws.lastFrame('history').ref, room: 'lobby', messages: [msg('lobby', 2, 'bob', 'second'), msg('lobby', 1, 'alice', 'first')], more: false });
      ws.receive({ t: 'typing', room: 'lobby', user: 'bob' });
    });
    const list = screen.getByRole('list', { name: 'Conversation' });
    const items = within(list).getAllByRole('listitem');
    expect(items.map((li) => li.querySelector('.body')?.textContent)).toEqual(['first', 'second']);
    expect(within(items[1]).getByText('bob')).toBeTruthy();
    expect(items[1].querySelector('time')?.getAttribute('datetime')).toBe(new Date(1_700_000_002_000).toISOString());
    const online = screen.getByRole('list', { name: 'Online' });
    expect(within(online).getAllByRole('listitem').map((li) => li.textContent)).toEqual(['alice (you)', 'bob']);
    expect(screen.getByText('bob is typing…')).toBeTruthy();

    // Send with the keyboard: it shows as pending until acknowledged.
    await user.type(screen.getByLabelText('Message', { exact: true }), 'third{Enter}');
    const pending = within(list).getAllByRole('listitem')[2];
    expect(pending.textContent).toMatch(/Sending…/);
    const send = ws.lastFrame('send');
    await act(async () => ws.receive({ t: 'ack', ref: send.ref, room: 'lobby', seq: 3, cid: send.cid, ts: 1_700_000_003_000 }));
    expect(within(list).getAllByRole('listitem')[2].textContent).not.toMatch(/Sending/);

    await act(async () => ws.serverClose(1001));
    expect(screen.getByRole('status').textContent).toMatch(/Reconnecting… The server is restarting\./);
  });

  it('shows unread counts of other rooms', async () => {
    const client = makeClient();
    render(<App client={client} />);
    await act(async () => client.start(signedIn()));
    const ws = FakeSocket.last();
    await act(async () => {
      ws.open();
      ws.welcome();
      client.joinRoom('lobby');
      ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
      client.joinRoom('other');
      ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'other', seq: 0, members: ['alice'], more: false });
    });
    await act(async () => {
      ws.receive(msg('lobby', 1, 'bob'));
      ws.receive(msg('lobby', 2, 'bob'));
    });
    expect(screen.getByRole('button', { name: /# lobby\s*2\s*unread/ })).toBeTruthy();
  });
});

/** Alice signed in, in `lobby` (open), with `messages` as its history. */
async function inLobby(messages: Record<string, unknown>[], members = ['alice', 'bob']) {
  const client = new ChatClient({ url: 'ws://test/ws', createSocket: (u) => new FakeSocket(u), storage: new MemoryStorage(), random: () => 0.5, readDelayMs: 0 });
  render(<App client={client} />);
  await act(async () => client.start(signedIn()));
  const ws = FakeSocket.last();
  await act(async () => {
    ws.open();
    ws.welcome();
    ws.conversations([]);
    client.joinRoom('lobby');
  });
  const top = Math.max(0, ...messages.map((m) => m.seq as number));
  await act(async () => {
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: top, members, more: false });
    if (top > 0) ws.receive({ t: 'history', ref: ws.lastFrame('history').ref, room: 'lobby', messages: [...messages].reverse(), more: false });
  });
  return { client, ws, user: userEvent.setup() };
}

function item(seq: number): HTMLElement {
  const li = screen.getByRole('list', { name: 'Conversation' }).querySelector<HTMLElement>(`li[data-seq="${seq}"]`);
  if (!li) throw new Error(`no message ${seq}`);
  return li;
}

/** Presses Tab until `el` has the focus. */
async function tabTo(user: ReturnType<typeof userEvent.setup>, el: HTMLElement) {
  for (let i = 0; i < 60 && document.activeElement !== el; i++) await user.tab();
  expect(document.activeElement).toBe(el);
}

describe('protocol 1.1 in the chat screen', () => {
  it('opens the DM with a person whose name is clicked, in the Online list or on a message', async () => {
    const { ws, user } = await inLobby([msg('lobby', 1, 'carol', 'hi all')], ['alice', 'bob']);
    // Only other people's names are buttons.
    expect(within(screen.getByRole('list', { name: 'Online' })).queryByRole('button', { name: 'alice' })).toBeNull();
    await user.click(within(screen.getByRole('list', { name: 'Online' })).getByRole('button', { name: 'bob' }));
    expect(screen.getByRole('heading', { name: '@ bob' })).toBeTruthy();
    expect(ws.lastFrame('join').room).toBe('dm:alice:bob');
    await user.click(screen.getByRole('button', { name: /# lobby/ }));
    await user.click(within(item(1)).getByRole('button', { name: 'carol' }));
    expect(screen.getByRole('heading', { name: '@ carol' })).toBeTruthy();
  });

  it('offers Reply, React, Edit and Delete as buttons, reachable with Tab and operable from the keyboard', async () => {
    const { ws, user } = await inLobby([msg('lobby', 1, 'alice', 'mine'), msg('lobby', 2, 'bob', 'theirs')]);
    const names = (li: HTMLElement) => within(li).getAllByRole('button').map((b) => b.getAttribute('aria-label') ?? b.textContent);
    expect(names(item(1))).toEqual(['Reply', 'React', 'Edit', 'Delete']);
    expect(names(item(2))).toEqual(['bob', 'Reply', 'React']);

    // Edit with Enter: a labelled box with the body, Enter saves.
    await tabTo(user, within(item(1)).getByRole('button', { name: 'Edit' }));
    await user.keyboard('{Enter}');
    const box = screen.getByLabelText('Edit message') as HTMLTextAreaElement;
    expect(document.activeElement).toBe(box);
    expect(box.value).toBe('mine');
    await user.keyboard(' (fixed){Enter}');
    expect(ws.lastFrame('edit')).toMatchObject({ room: 'lobby', target: 1, body: 'mine (fixed)' });
    expect(screen.queryByLabelText('Edit message')).toBeNull();

    // React with Space, then Enter on a reaction.
    const react = within(item(2)).getByRole('button', { name: 'React' });
    await tabTo(user, react);
    await user.keyboard(' ');
    expect(react.getAttribute('aria-expanded')).toBe('true');
    expect(document.activeElement?.getAttribute('aria-label')).toBe('👍 thumbs up');
    await user.keyboard('{Enter}');
    expect(ws.lastFrame('react')).toMatchObject({ target: 2, emoji: '👍', on: true });

    // Delete asks first.
    await tabTo(user, within(item(1)).getByRole('button', { name: 'Delete' }));
    await user.keyboard('{Enter}');
    expect(document.activeElement?.textContent).toBe('Yes, delete');
    await user.keyboard('{Enter}');
    expect(ws.lastFrame('delete')).toMatchObject({ target: 1 });

    // Reply: the composer says to what, and the send carries reply_to.
    await tabTo(user, within(item(2)).getByRole('button', { name: 'Reply' }));
    await user.keyboard('{Enter}');
    expect(screen.getByText(/Replying to/).textContent).toBe('Replying to bob: theirs');
    expect(document.activeElement).toBe(screen.getByLabelText('Message', { exact: true }));
    await user.keyboard('agreed{Enter}');
    expect(ws.lastFrame('send')).toMatchObject({ body: 'agreed', reply_to: 2 });
    expect(screen.queryByText(/Replying to/)).toBeNull();
  });

  it('shows deleted and edited messages, reactions with counts and mine, and what a reply answers', async () => {
    await inLobby([
      { ...msg('lobby', 1, 'bob', 'first'), edited_ts: 1_700_000_005_000, reactions: { '👍': ['alice', 'carol'], '🎉': ['carol'] } },
      { ...msg('lobby', 2, 'bob', ''), deleted: true },
      { ...msg('lobby', 3, 'carol', 'I agree'), reply_to: 1 },
      { ...msg('lobby', 4, 'carol', 'and?'), reply_to: 2 },
    ]);
    expect(item(1).querySelector('.body')?.textContent).toBe('first');
    expect(within(item(1)).getByText('(edited)')).toBeTruthy();
    const thumbs = within(item(1)).getByRole('button', { name: '👍 2' });
    expect(thumbs.getAttribute('aria-pressed')).toBe('true');
    expect(within(item(1)).getByRole('button', { name: '🎉 1' }).getAttribute('aria-pressed')).toBe('false');
    expect(item(2).querySelector('.body')?.textContent).toBe('message deleted');
    expect(within(item(2)).queryByRole('button', { name: 'Reply' })).toBeNull();
    expect(item(3).querySelector('.reply-quote')?.textContent).toBe('In reply to ↪ bob: first');
    expect(item(4).querySelector('.reply-quote')?.textContent).toBe('In reply to ↪ bob: message deleted');
  });

  it('applies live events, and a click on a reaction takes mine back', async () => {
    const { ws, user } = await inLobby([msg('lobby', 1, 'bob', 'typo')]);
    await act(async () => {
      ws.receive(event('lobby', 2, 'bob', 'edit', 1, { body: 'fixed' }));
      ws.receive(event('lobby', 3, 'alice', 'reaction', 1, { emoji: '❤️' }));
    });
    expect(item(1).querySelector('.body')?.textContent).toBe('fixed');
    await user.click(within(item(1)).getByRole('button', { name: '❤️ 1' }));
    expect(ws.lastFrame('react')).toMatchObject({ target: 1, emoji: '❤️', on: false });
    await act(async () => ws.receive(event('lobby', 4, 'bob', 'delete', 1)));
    expect(item(1).querySelector('.body')?.textContent).toBe('message deleted');
    expect(within(item(1)).queryByRole('button', { name: /❤️/ })).toBeNull();
  });

  it('says clearly why an edit was refused, and shows the message unchanged', async () => {
    const { ws, user } = await inLobby([msg('lobby', 1, 'alice', 'original')]);
    await user.click(within(item(1)).getByRole('button', { name: 'Edit' }));
    await user.clear(screen.getByLabelText('Edit message'));
    await user.type(screen.getByLabelText('Edit message'), 'changed{Enter}');
    expect(within(item(1)).getByText('Saving…')).toBeTruthy();
    await act(async () => ws.receive({ t: 'error', ref: ws.lastFrame('edit').ref, code: 'not_found', message: 'no such message' }));
    expect(screen.getByRole('alert').textContent).toMatch(/can no longer be edited.*Nothing was changed/);
    expect(item(1).querySelector('.body')?.textContent).toBe('original');
    expect(within(item(1)).queryByText('(edited)')).toBeNull();
    expect(within(item(1)).queryByText('Saving…')).toBeNull();
  });

  it('marks what is on screen as read, and Leave removes the conversation', async () => {
    const { ws, user } = await inLobby([msg('lobby', 1, 'bob'), msg('lobby', 2, 'bob')]);
    await act(async () => new Promise((r) => setTimeout(r, 10)));
    expect(ws.lastFrame('read')).toMatchObject({ room: 'lobby', seq: 2 });
    await act(async () => ws.receive(msg('lobby', 3, 'bob')));
    await act(async () => new Promise((r) => setTimeout(r, 10)));
    expect(ws.lastFrame('read')).toMatchObject({ room: 'lobby', seq: 3 });
    await user.click(screen.getByRole('button', { name: 'Leave' }));
    expect(ws.lastFrame('leave')).toMatchObject({ room: 'lobby', forget: true });
    expect(screen.queryByRole('button', { name: /# lobby/ })).toBeNull();
    expect(screen.getByRole('heading', { name: 'Welcome, alice' })).toBeTruthy();
  });

  it('on a phone-sized screen, shows unread elsewhere on the way back and names who wrote', async () => {
    vi.stubGlobal('matchMedia', (query: string) => ({
      matches: query.includes('max-width: 700px'),
      media: query,
      addEventListener: () => {},
      removeEventListener: () => {},
    }));
    const { ws, user } = await inLobby([msg('lobby', 1, 'bob')]);
    // The list is shown first; opening the room hides it.
    await user.click(screen.getByRole('button', { name: /# lobby/ }));
    expect(document.querySelector('.app')?.getAttribute('data-pane')).toBe('chat');
    await act(async () => ws.receive(msg('dm:alice:dave', 1, 'dave', 'are you free?')));
    expect(screen.getByRole('button', { name: /← Back/ }).textContent).toBe('← Back1 unread');
    const notice = screen.getByTestId('incoming');
    expect(notice.textContent).toMatch(/New message from dave.*are you free\?/);
    expect(document.title).toBe('(1) Viche');
    await user.click(within(notice).getByRole('button', { name: 'Open' }));
    expect(screen.getByRole('heading', { name: '@ dave' })).toBeTruthy();
    expect(screen.queryByTestId('incoming')).toBeNull();
  });

  it('does not mark read what is hidden behind the list', async () => {
    vi.stubGlobal('matchMedia', (query: string) => ({ matches: true, media: query, addEventListener: () => {}, removeEventListener: () => {} }));
    const { ws, user } = await inLobby([msg('lobby', 1, 'bob')]);
    await act(async () => new Promise((r) => setTimeout(r, 10)));
    expect(ws.frames('read')).toEqual([]);
    expect(screen.getByRole('button', { name: /# lobby\s*1\s*unread/ })).toBeTruthy();
    await user.click(screen.getByRole('button', { name: /# lobby/ }));
    await act(async () => new Promise((r) => setTimeout(r, 10)));
    expect(ws.lastFrame('read')).toMatchObject({ room: 'lobby', seq: 1 });
  });
});
