import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatClient, mergeMessages, type ClientOptions } from './client';
import { toMessage } from './messages';
import { conv, FakeSocket, fakeToken, MemoryStorage, msg } from './test/fakes';

const NOW = 1_700_000_000_000;

function session(user = 'alice', ttlSeconds = 86_400) {
  const iat = Math.floor(Date.now() / 1000);
  return { user, token: fakeToken(user, iat, iat + ttlSeconds), expiresAt: (iat + ttlSeconds) * 1000 };
}

function makeClient(extra: Partial<ClientOptions> = {}) {
  const storage = new MemoryStorage();
  const client = new ChatClient({
    url: 'ws://test/ws',
    createSocket: (url) => new FakeSocket(url),
    storage,
    random: () => 0.5,
    fetch: vi.fn(),
    ...extra,
  });
  const state = () => {
    client.flush();
    return client.getState();
  };
  return { client, storage, state };
}

/** Connects and answers the hello; returns the socket. */
function connect(user = 'alice') {
  const ws = FakeSocket.last();
  ws.open();
  expect(ws.lastFrame('hello')).toMatchObject({ t: 'hello', v: 1 });
  ws.welcome(user);
  return ws;
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
  vi.setSystemTime(NOW);
});

afterEach(() => {
  vi.useRealTimers();
});

describe('mergeMessages', () => {
  it('keeps seq order and each seq once', () => {
    const a = [msg('r', 1, 'x'), msg('r', 3, 'x')].map((m) => toMessage(m));
    const merged = mergeMessages(a, [msg('r', 2, 'y'), msg('r', 3, 'y'), msg('r', 4, 'y')].map((m) => toMessage(m)));
    expect(merged.map((m) => m.seq)).toEqual([1, 2, 3, 4]);
    expect(merged[2].from).toBe('x');
    expect(mergeMessages(merged, [toMessage(msg('r', 2, 'z'))])).toBe(merged);
  });
});

describe('joining and history', () => {
  it('joins, then loads the newest page before the join seq', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    expect(client.joinRoom('lobby')).toBeNull();
    const join = ws.lastFrame('join');
    expect(join).toMatchObject({ room: 'lobby' });
    expect(join.since).toBeUndefined();
    ws.receive({ t: 'ok', ref: join.ref, room: 'lobby', seq: 60, members: ['bob', 'alice'], more: false });
    const history = ws.lastFrame('history');
    expect(history).toMatchObject({ room: 'lobby', before: 61, limit: 50 });
    const page = Array.from({ length: 50 }, (_, i) => msg('lobby', 60 - i, 'bob'));
    ws.receive({ t: 'history', ref: history.ref, room: 'lobby', messages: page, more: true });
    const room = state().rooms.lobby;
    expect(room.messages.map((m) => m.seq)).toEqual(Array.from({ length: 50 }, (_, i) => 11 + i));
    expect(room.more).toBe(true);
    expect(room.members).toEqual(['alice', 'bob']);
    // Scrolling up pages in older messages.
    client.loadOlder('lobby');
    const older = ws.lastFrame('history');
    expect(older).toMatchObject({ before: 11, limit: 50 });
    ws.receive({ t: 'history', ref: older.ref, room: 'lobby', messages: Array.from({ length: 10 }, (_, i) => msg('lobby', 10 - i, 'bob')), more: false });
    expect(state().rooms.lobby.messages.length).toBe(60);
    expect(state().rooms.lobby.more).toBe(false);
  });

  it('refuses a bad room name before asking the server', () => {
    const { client } = makeClient();
    client.start(session());
    connect();
    expect(client.joinRoom('no spaces allowed')).toMatch(/Room names/);
    expect(FakeSocket.last().frames('join')).toHaveLength(0);
  });

  it('after a reload, the rooms come from the server, not from the browser', () => {
    const { client, storage } = makeClient();
    client.start(session());
    connect();
    client.joinRoom('lobby');
    client.joinRoom('random');
    expect(storage.getItem('viche:alice:rooms')).toBeNull();
    const again = new ChatClient({ url: 'ws://test/ws', createSocket: (u) => new FakeSocket(u), storage, random: () => 0.5 });
    const saved = again.savedSession();
    expect(saved?.user).toBe('alice');
    again.start(saved!);
    const ws = connect();
    expect(ws.frames('join')).toEqual([]);
    expect(ws.lastFrame('conversations')).toMatchObject({ limit: 200 });
    ws.conversations([conv('random', 0, 0), conv('lobby', 0, 0)]);
    expect(ws.frames('join').map((f) => f.room).sort()).toEqual(['lobby', 'random']);
  });
});

describe('reconnecting', () => {
  it('backs off exponentially with jitter, then resumes each room with since', () => {
    let rand = 0;
    const { client, state } = makeClient({ random: () => rand, backoffBaseMs: 1000, backoffMaxMs: 8000 });
    client.start(session());
    let ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    ws.receive(msg('lobby', 1, 'bob'));
    ws.receive(msg('lobby', 2, 'bob'));

    // Delays: half the backoff plus a random share of the other half.
    const delays: number[] = [];
    for (const r of [0, 1, 0, 1, 0.5]) {
      rand = r;
      ws.serverClose(1006);
      expect(state().status).toBe('reconnecting');
      expect(state().disconnectReason).toMatch(/lost/);
      delays.push(state().reconnectAt! - Date.now());
      vi.advanceTimersByTime(delays[delays.length - 1]);
      ws = FakeSocket.last();
    }
    expect(delays).toEqual([500, 2000, 2000, 8000, 6000]);

    ws.open();
    ws.welcome();
    expect(state().status).toBe('online');
    // Rooms are joined again once the server lists them.
    expect(ws.frames('join')).toEqual([]);
    ws.conversations([conv('lobby', 2, 2)]);
    const join = ws.lastFrame('join');
    expect(join).toMatchObject({ room: 'lobby', since: 2 });
    ws.receive({ t: 'ok', ref: join.ref, room: 'lobby', seq: 4, members: ['alice', 'bob'], more: false });
    // The replay, then a live message; a repeat of an old one is ignored.
    ws.receive(msg('lobby', 3, 'bob'));
    ws.receive(msg('lobby', 2, 'bob'));
    ws.receive(msg('lobby', 4, 'bob'));
    expect(state().rooms.lobby.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4]);
    expect(ws.frames('history')).toHaveLength(0);

    // After a successful welcome the backoff starts over.
    rand = 0;
    ws.serverClose(1001);
    expect(state().disconnectReason).toMatch(/restarting/);
    expect(state().reconnectAt! - Date.now()).toBe(500);
  });

  it('pages in what the replay left out when ok says more', () => {
    const { client, state } = makeClient();
    client.start(session());
    let ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 5, members: ['alice'], more: false });
    ws.receive({ t: 'history', ref: ws.lastFrame('history').ref, room: 'lobby', messages: [5, 4, 3, 2, 1].map((s) => msg('lobby', s, 'bob')), more: false });
    ws.serverClose(4008);
    vi.advanceTimersByTime(1000);
    ws = connect();
    ws.conversations([conv('lobby', 1205, 5)]);
    const join = ws.lastFrame('join');
    expect(join.since).toBe(5);
    ws.receive({ t: 'ok', ref: join.ref, room: 'lobby', seq: 1205, members: ['alice'], more: true });
    const gap = ws.lastFrame('history');
    expect(gap).toMatchObject({ before: 206, limit: 100 });
    ws.receive({ t: 'history', ref: gap.ref, room: 'lobby', messages: Array.from({ length: 100 }, (_, i) => msg('lobby', 205 - i, 'bob')), more: true });
    const gap2 = ws.lastFrame('history');
    expect(gap2).toMatchObject({ before: 106 });
    ws.receive({ t: 'history', ref: gap2.ref, room: 'lobby', messages: Array.from({ length: 100 }, (_, i) => msg('lobby', 105 - i, 'bob')), more: true });
    expect(ws.frames('history')).toHaveLength(2);
    expect(state().rooms.lobby.messages.map((m) => m.seq)).toEqual(Array.from({ length: 205 }, (_, i) => i + 1));
  });

  it('gives up the session on 4001 when it cannot renew the token', () => {
    const { client, state, storage } = makeClient();
    client.start(session());
    const ws = FakeSocket.last();
    ws.open();
    ws.receive({ t: 'error', code: 'unauthorized', message: 'bad token' });
    ws.serverClose(4001);
    expect(state().status).toBe('signed-out');
    expect(state().signedOutReason).toMatch(/expired/);
    expect(storage.getItem('viche:session')).toBeNull();
  });

  it('closes and retries when no welcome arrives', () => {
    const { client, state } = makeClient({ helloTimeoutMs: 1000 });
    client.start(session());
    FakeSocket.last().open();
    vi.advanceTimersByTime(1000);
    expect(state().status).toBe('reconnecting');
  });
});

describe('sending', () => {
  it('shows a send as pending until its ack and retries it with the same cid after a reconnect', () => {
    const { client, state } = makeClient();
    client.start(session());
    let ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    expect(client.send('lobby', 'hello there')).toBeNull();
    const first = ws.lastFrame('send');
    expect(first).toMatchObject({ room: 'lobby', body: 'hello there' });
    expect(state().rooms.lobby.pending).toMatchObject([{ body: 'hello there', state: 'sending' }]);

    // The connection drops before the ack: the send waits, then goes again with the same cid.
    ws.serverClose(1006);
    expect(state().rooms.lobby.pending[0].state).toBe('waiting');
    vi.advanceTimersByTime(1000);
    ws = connect();
    ws.conversations([conv('lobby', 1, 1)]);
    expect(ws.frames('send')).toHaveLength(0); // not before the room is joined again
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 1, members: ['alice'], more: false });
    const again = ws.lastFrame('send');
    expect(again.cid).toBe(first.cid);
    // The server had stored it: the replay brings it, and the ack repeats its seq.
    ws.receive(msg('lobby', 1, 'alice', 'hello there', first.cid as string));
    ws.receive({ t: 'ack', ref: again.ref, room: 'lobby', seq: 1, cid: first.cid, ts: NOW });
    const room = state().rooms.lobby;
    expect(room.pending).toEqual([]);
    expect(room.messages.map((m) => [m.seq, m.body])).toEqual([[1, 'hello there']]);
  });

  it('sends while offline once connected, in order', () => {
    const { client, state } = makeClient();
    client.start(session());
    client.joinRoom('lobby');
    client.send('lobby', 'one');
    client.send('lobby', 'two');
    expect(state().rooms.lobby.pending.map((p) => p.state)).toEqual(['waiting', 'waiting']);
    const ws = connect();
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    expect(ws.frames('send').map((f) => f.body)).toEqual(['one', 'two']);
    // The ack may come before the msg.
    const [a, b] = ws.frames('send');
    ws.receive({ t: 'ack', ref: a.ref, room: 'lobby', seq: 1, cid: a.cid, ts: NOW });
    ws.receive(msg('lobby', 1, 'alice', 'one', a.cid as string));
    ws.receive(msg('lobby', 2, 'alice', 'two', b.cid as string));
    ws.receive({ t: 'ack', ref: b.ref, room: 'lobby', seq: 2, cid: b.cid, ts: NOW });
    expect(state().rooms.lobby.messages.map((m) => m.body)).toEqual(['one', 'two']);
    expect(state().rooms.lobby.pending).toEqual([]);
  });

  it('keeps unsent messages across a reload and sends them with the same cid', () => {
    const { client, storage } = makeClient();
    client.start(session());
    client.joinRoom('lobby');
    client.send('lobby', 'survive me');
    const cid = JSON.parse(storage.getItem('viche:alice:pending')!)[0].cid;
    const again = new ChatClient({ url: 'ws://test/ws', createSocket: (u) => new FakeSocket(u), storage, random: () => 0.5 });
    again.start(again.savedSession()!);
    const ws = connect();
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    expect(ws.lastFrame('send')).toMatchObject({ cid, body: 'survive me' });
  });

  it('marks a refused send as failed, in words, and can retry it', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect('alice');
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    client.send('lobby', 'x');
    ws.receive({ t: 'error', ref: ws.lastFrame('send').ref, code: 'too_large', message: 'body too large' });
    expect(state().rooms.lobby.pending[0]).toMatchObject({ state: 'failed', error: 'That message is too long: the limit is 4096 bytes.' });
    client.retry(state().rooms.lobby.pending[0].cid);
    expect(ws.frames('send')).toHaveLength(2);
    client.discard(state().rooms.lobby.pending[0].cid);
    expect(state().rooms.lobby.pending).toEqual([]);
  });

  it('waits and retries after rate_limited', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    client.send('lobby', 'x');
    const first = ws.lastFrame('send');
    ws.receive({ t: 'error', ref: first.ref, code: 'rate_limited', message: 'slow down' });
    expect(state().rooms.lobby.pending[0]).toMatchObject({ state: 'waiting', error: expect.stringMatching(/too fast/) });
    vi.advanceTimersByTime(2000);
    expect(ws.frames('send')).toHaveLength(2);
    expect(ws.lastFrame('send').cid).toBe(first.cid);
  });

  it('refuses a body over max_body before sending', () => {
    const { client } = makeClient();
    client.start(session());
    const ws = FakeSocket.last();
    ws.open();
    ws.welcome('alice', 10);
    client.joinRoom('lobby');
    expect(client.send('lobby', 'é'.repeat(6))).toMatch(/limit is 10 bytes/);
  });
});

describe('direct messages', () => {
  it('starts a DM by username and sends with dm', () => {
    const { client, state } = makeClient();
    client.start(session('bob'));
    const ws = connect('bob');
    expect(client.startDm('alice')).toBeNull();
    expect(ws.lastFrame('join').room).toBe('dm:alice:bob');
    expect(state().dmOrder).toEqual(['dm:alice:bob']);
    expect(state().rooms['dm:alice:bob'].peer).toBe('alice');
    client.send('dm:alice:bob', 'psst');
    expect(ws.lastFrame('dm')).toMatchObject({ to: 'alice', body: 'psst' });
    expect(client.startDm('bob')).toMatch(/That is you/);
  });

  it('lists a DM someone else started, without joining it', () => {
    const { client, state } = makeClient();
    client.start(session('alice'));
    const ws = connect();
    ws.receive(msg('dm:alice:carol', 1, 'carol', 'hi alice'));
    expect(state().dmOrder).toEqual(['dm:alice:carol']);
    expect(state().rooms['dm:alice:carol'].unread).toBe(1);
    expect(state().rooms['dm:alice:carol'].peer).toBe('carol');
    expect(ws.frames('join')).toEqual([]);
    expect(state().incoming).toMatchObject({ room: 'dm:alice:carol', from: 'carol', body: 'hi alice' });
    // Opened, it is joined (presence, typing, resumes) and its history read.
    client.setActive('dm:alice:carol');
    const join = ws.lastFrame('join');
    expect(join).toMatchObject({ room: 'dm:alice:carol' });
    ws.receive({ t: 'ok', ref: join.ref, room: 'dm:alice:carol', seq: 1, members: ['alice'], more: false });
    expect(ws.lastFrame('history')).toMatchObject({ room: 'dm:alice:carol', before: 2 });
  });

  it('says so when the user does not exist', () => {
    const { client, state } = makeClient();
    client.start(session('alice'));
    const ws = connect();
    client.startDm('nobody');
    ws.receive({ t: 'error', ref: ws.lastFrame('join').ref, code: 'not_found', message: 'no such user' });
    expect(state().dmOrder).toEqual([]);
    expect(state().notice).toBe('There is no user called nobody.');
  });
});

describe('presence, typing and unread', () => {
  it('tracks who is online and who is typing', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    ws.receive({ t: 'presence', room: 'lobby', user: 'bob', online: true });
    expect(state().rooms.lobby.members).toEqual(['alice', 'bob']);
    ws.receive({ t: 'typing', room: 'lobby', user: 'bob' });
    expect(state().rooms.lobby.typing).toEqual(['bob']);
    vi.advanceTimersByTime(5001);
    expect(state().rooms.lobby.typing).toEqual([]);
    ws.receive({ t: 'typing', room: 'lobby', user: 'bob' });
    ws.receive(msg('lobby', 1, 'bob'));
    expect(state().rooms.lobby.typing).toEqual([]);
    ws.receive({ t: 'presence', room: 'lobby', user: 'bob', online: false });
    expect(state().rooms.lobby.members).toEqual(['alice']);
  });

  it('throttles its own typing frames', () => {
    const { client } = makeClient();
    client.start(session());
    const ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    for (let i = 0; i < 10; i++) client.typing('lobby');
    expect(ws.frames('typing')).toHaveLength(1);
    vi.advanceTimersByTime(3000);
    client.typing('lobby');
    expect(ws.frames('typing')).toHaveLength(2);
  });

  it('counts unread as the server does: last seq minus the read marker', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    client.joinRoom('lobby');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'lobby', seq: 0, members: ['alice'], more: false });
    client.joinRoom('other');
    ws.receive({ t: 'ok', ref: ws.lastFrame('join').ref, room: 'other', seq: 0, members: ['alice'], more: false });
    expect(state().active).toBe('other');
    ws.receive(msg('lobby', 1, 'bob'));
    ws.receive(msg('lobby', 2, 'bob'));
    expect(state().rooms.lobby.unread).toBe(2);
    // An event counts like a message.
    ws.receive({ ...msg('lobby', 3, 'bob', ''), kind: 'reaction', target: 1, emoji: '👍', on: true });
    expect(state().rooms.lobby.unread).toBe(3);
    // What the user stores moves the user's own marker (the server does the same).
    ws.receive(msg('lobby', 4, 'alice'));
    expect(state().rooms.lobby).toMatchObject({ unread: 0, readSeq: 4, lastSeq: 4 });
    ws.receive(msg('other', 1, 'bob'));
    expect(state().rooms.other.unread).toBe(1);
    client.markSeen('other', 1);
    expect(state().rooms.other.unread).toBe(0);
  });
});

describe('token refresh', () => {
  it('logs in again before the token expires and sends auth', async () => {
    const fresh = session('alice', 100);
    const next = session('alice', 200);
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ user: 'alice', token: next.token, expires_at: next.expiresAt }), { status: 200 }));
    const { client, storage } = makeClient({ fetch: fetchMock as unknown as typeof fetch });
    client.start(session('alice', 100), 'secret-password');
    const ws = connect();
    // Refresh a quarter of the lifetime before expiry: at 75 s.
    await vi.advanceTimersByTimeAsync(74_000);
    expect(fetchMock).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1_500);
    expect(fetchMock).toHaveBeenCalledTimes(1);
    const [url, init] = fetchMock.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe('/api/login');
    expect(JSON.parse(init.body as string)).toEqual({ username: 'alice', password: 'secret-password' });
    const auth = ws.lastFrame('auth');
    expect(auth.token).toBe(next.token);
    ws.receive({ t: 'ok', ref: auth.ref });
    expect(JSON.parse(storage.getItem('viche:session')!).token).toBe(next.token);
    // The next refresh is planned from the new token, not at once.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(fetchMock).toHaveBeenCalledTimes(1);
    expect(fresh.user).toBe('alice');
  });

  it('renews the token and reconnects after a 4001 when it knows the password', async () => {
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ user: 'alice', token: 'new-token', expires_at: NOW + 200_000 }), { status: 200 }));
    const { client, state } = makeClient({ fetch: fetchMock as unknown as typeof fetch });
    client.start(session(), 'pw-pw-pw-pw');
    const ws = connect();
    ws.serverClose(4001);
    expect(state().status).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(10);
    const next = FakeSocket.last();
    expect(next).not.toBe(ws);
    next.open();
    expect(next.lastFrame('hello').token).toBe('new-token');
  });
});
