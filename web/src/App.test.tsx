import { act, cleanup, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from './App';
import { ChatClient } from './client';
import { FakeSocket, fakeToken, MemoryStorage, msg } from './test/fakes';

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
