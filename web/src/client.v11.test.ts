// The client's side of protocol v1.1: the conversation list from the
// server, read markers and unread counts, edits, deletions, reactions,
// replies, leave with forget, and the pacing of joins and reads.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ChatClient, totalUnread, type ClientOptions } from './client';
import { conv, event, FakeSocket, fakeToken, MemoryStorage, msg } from './test/fakes';

const NOW = 1_700_000_000_000;

function session(user = 'alice') {
  const iat = Math.floor(Date.now() / 1000);
  return { user, token: fakeToken(user, iat, iat + 86_400), expiresAt: (iat + 86_400) * 1000 };
}

function makeClient(extra: Partial<ClientOptions> = {}, storage = new MemoryStorage()) {
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

function connect(user = 'alice') {
  const ws = FakeSocket.last();
  ws.open();
  ws.welcome(user);
  return ws;
}

/** Answers the latest join of `room`. */
function joined(ws: FakeSocket, room: string, seq: number, more = false) {
  const join = ws.frames('join').filter((f) => f.room === room).at(-1);
  if (!join) throw new Error(`no join of ${room}`);
  ws.receive({ t: 'ok', ref: join.ref, room, seq, members: ['alice'], more });
  return join;
}

/** Alice in `lobby`, open, with messages 1..n (history answered). */
function inLobby(n = 3, extra: Partial<ClientOptions> = {}) {
  const c = makeClient(extra);
  c.client.start(session());
  const ws = connect();
  ws.conversations([]);
  c.client.joinRoom('lobby');
  joined(ws, 'lobby', n);
  if (n > 0) {
    const h = ws.lastFrame('history');
    const page = Array.from({ length: n }, (_, i) => msg('lobby', n - i, i % 2 ? 'alice' : 'bob'));
    ws.receive({ t: 'history', ref: h.ref, room: 'lobby', messages: page, more: false });
  }
  return { ...c, ws };
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
  vi.setSystemTime(NOW);
});

afterEach(() => {
  vi.useRealTimers();
});

describe('the conversation list', () => {
  it('comes from the server after login, page by page, newest activity first', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    expect(state().listLoaded).toBe(false);
    const first = ws.lastFrame('conversations');
    expect(first.before).toBeUndefined();
    ws.conversations(
      [
        conv('dm:alice:bob', 3, 1, { peer: 'bob', last_ts: 9000 }),
        conv('lobby', 7, 7, { last_ts: 8000 }),
        conv('random', 2, 0, { last_ts: 5000 }),
      ],
      true,
    );
    // The next page: from one past the oldest last_ts (conversations can share one).
    expect(ws.lastFrame('conversations')).toMatchObject({ before: 5001, limit: 200 });
    ws.conversations([conv('random', 2, 0, { last_ts: 5000 }), conv('dm:alice:cat', 1, 0, { peer: 'cat', last_ts: 4000 }), conv('empty', 0, 0)], false);
    const s = state();
    expect(s.listLoaded).toBe(true);
    expect(s.roomOrder).toEqual(['lobby', 'random', 'empty']);
    expect(s.dmOrder).toEqual(['dm:alice:bob', 'dm:alice:cat']);
    expect(s.rooms['dm:alice:bob']).toMatchObject({ kind: 'dm', peer: 'bob', unread: 2, lastSeq: 3, readSeq: 1 });
    expect(s.rooms.lobby.unread).toBe(0);
    expect(s.rooms.random.unread).toBe(2);
    expect(s.rooms.random.last).toMatchObject({ seq: 2, from: 'bob' });
    expect(totalUnread(s)).toBe(5);
    expect(totalUnread(s, 'random')).toBe(3);
    // Public rooms are joined so that their messages arrive; DMs are not.
    expect(ws.frames('join').map((f) => f.room).sort()).toEqual(['empty', 'lobby', 'random']);
    // New activity moves a conversation up.
    ws.receive({ ...msg('random', 3, 'bob'), ts: 10_000 });
    expect(state().roomOrder).toEqual(['random', 'lobby', 'empty']);
    expect(state().rooms.random.unread).toBe(3);
  });

  it('stops paging when a page brings nothing new (a last_ts shared past a page)', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    const tied = Array.from({ length: 3 }, (_, i) => conv(`r${i}`, 0, 0));
    ws.conversations(tied, true);
    expect(ws.frames('conversations')).toHaveLength(2);
    ws.conversations(tied, true);
    expect(ws.frames('conversations')).toHaveLength(2);
    expect(state().listLoaded).toBe(true);
  });

  it('asks again when the list is refused for going too fast', () => {
    const { client } = makeClient();
    client.start(session());
    const ws = connect();
    ws.receive({ t: 'error', ref: ws.lastFrame('conversations').ref, code: 'rate_limited', message: 'slow down' });
    vi.advanceTimersByTime(1100);
    expect(ws.frames('conversations')).toHaveLength(2);
  });

  it('finds a DM sent while the user was offline, with its unread count, and opens the last conversation open', () => {
    const storage = new MemoryStorage();
    storage.setItem('viche:alice:active', JSON.stringify('lobby'));
    const { client, state } = makeClient({}, storage);
    client.start(session());
    const ws = connect();
    expect(state().active).toBeNull();
    ws.conversations([conv('dm:alice:bob', 2, 0, { peer: 'bob' }), conv('lobby', 5, 5)]);
    expect(state().rooms['dm:alice:bob']).toMatchObject({ unread: 2, last: { body: 'm2' } });
    expect(state().active).toBe('lobby');
  });

  it('joins the rooms a pre-1.1 client kept in the browser once, then forgets that list', () => {
    const storage = new MemoryStorage();
    storage.setItem('viche:alice:rooms', JSON.stringify({ rooms: ['lobby', 'bad room'], dms: ['dm:alice:bob'], active: 'lobby' }));
    storage.setItem('viche:alice:read', JSON.stringify({ lobby: 3 }));
    const { client, state } = makeClient({}, storage);
    client.start(session());
    expect(storage.getItem('viche:alice:read')).toBeNull();
    expect(state().roomOrder).toEqual(['lobby']);
    expect(state().active).toBe('lobby');
    const ws = connect();
    expect(ws.frames('join').map((f) => f.room)).toEqual(['lobby']);
    expect(storage.getItem('viche:alice:rooms')).not.toBeNull();
    joined(ws, 'lobby', 4);
    expect(storage.getItem('viche:alice:rooms')).toBeNull();
    // Not twice: the next session reads the list from the server.
    const again = makeClient({}, storage);
    again.client.start(session());
    expect(connect().frames('join')).toEqual([]);
  });

  it('paces the joins of many rooms under the server rate limit', () => {
    const { client } = makeClient();
    client.start(session());
    const ws = connect();
    ws.conversations(Array.from({ length: 40 }, (_, i) => conv(`room${i}`, 0, 0)));
    expect(ws.frames('join')).toHaveLength(18);
    vi.advanceTimersByTime(1000);
    expect(ws.frames('join').length).toBeGreaterThanOrEqual(26);
    expect(ws.frames('join').length).toBeLessThanOrEqual(28);
    vi.advanceTimersByTime(3000);
    expect(ws.frames('join')).toHaveLength(40);
  });
});

describe('read markers', () => {
  it('sends read as the user reads, coalesced, and only forward', () => {
    const { client, state, ws } = inLobby(3);
    expect(state().rooms.lobby.unread).toBe(1); // bob's 3 (alice's 2 moved her marker)
    client.markSeen('lobby', 1);
    client.markSeen('lobby', 3);
    client.markSeen('lobby', 2);
    expect(state().rooms.lobby.unread).toBe(0);
    expect(ws.frames('read')).toHaveLength(0);
    vi.advanceTimersByTime(300);
    expect(ws.frames('read')).toEqual([expect.objectContaining({ room: 'lobby', seq: 3 })]);
    ws.receive({ t: 'ok', ref: ws.lastFrame('read').ref });
    client.markSeen('lobby', 3);
    client.markSeen('lobby', 99); // past the end: capped at what is known
    vi.advanceTimersByTime(1000);
    expect(ws.frames('read')).toHaveLength(1);
  });

  it('applies read pushes from the user\'s other sessions', () => {
    const { state, ws } = inLobby(3);
    ws.receive(msg('lobby', 4, 'bob'));
    expect(state().rooms.lobby.unread).toBe(2);
    ws.receive({ t: 'read', room: 'lobby', seq: 3 });
    expect(state().rooms.lobby.unread).toBe(1);
    ws.receive({ t: 'read', room: 'lobby', seq: 1 }); // never backwards
    expect(state().rooms.lobby.unread).toBe(1);
    ws.receive({ t: 'read', room: 'lobby', seq: 4 });
    expect(state().rooms.lobby.unread).toBe(0);
    ws.receive({ t: 'read', room: 'nowhere', seq: 4 });
  });

  it('keeps under the read rate and sends what waited', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    ws.conversations(Array.from({ length: 40 }, (_, i) => conv(`dm:alice:user${i}`, 2, 0, { peer: `user${i}` })));
    for (let i = 0; i < 40; i++) client.markSeen(`dm:alice:user${i}`, 2);
    expect(totalUnread(state())).toBe(0);
    vi.advanceTimersByTime(300);
    expect(ws.frames('read')).toHaveLength(25);
    vi.advanceTimersByTime(2000);
    expect(ws.frames('read')).toHaveLength(40);
    // Refused for going too fast: sent again later.
    ws.receive({ t: 'error', ref: ws.frames('read')[39].ref, code: 'rate_limited', message: 'slow' });
    vi.advanceTimersByTime(1500);
    expect(ws.frames('read')).toHaveLength(41);
  });

  it('sends the markers read while offline after the next welcome', () => {
    const { client, ws } = inLobby(3);
    ws.serverClose(1006);
    client.markSeen('lobby', 3);
    vi.advanceTimersByTime(1000);
    const next = connect();
    vi.advanceTimersByTime(10);
    expect(next.lastFrame('read')).toMatchObject({ room: 'lobby', seq: 3 });
  });
});

describe('edits, deletions, reactions and replies', () => {
  it('applies live events to the message they name', () => {
    const { state, ws } = inLobby(3);
    ws.receive(event('lobby', 4, 'bob', 'edit', 3, { body: 'fixed' }));
    ws.receive(event('lobby', 5, 'alice', 'reaction', 3, { emoji: '👍' }));
    ws.receive(event('lobby', 6, 'cat', 'reaction', 3, { emoji: '👍' }));
    ws.receive(event('lobby', 7, 'bob', 'delete', 1));
    const room = state().rooms.lobby;
    expect(room.messages.map((m) => m.seq)).toEqual([1, 2, 3]);
    expect(room.messages[2]).toMatchObject({ body: 'fixed', edited_ts: NOW + 4000, reactions: { '👍': ['alice', 'cat'] } });
    expect(room.messages[0]).toMatchObject({ body: '', deleted: true });
    expect(room.lastSeq).toBe(7);
    expect(room.last).toMatchObject({ kind: 'delete' });
  });

  it('sends edit, delete and react like a send, and applies them on the ack', () => {
    const { client, state, ws } = inLobby(3);
    expect(client.edit('lobby', 2, 'better')).toBeNull();
    const edit = ws.lastFrame('edit');
    expect(edit).toMatchObject({ room: 'lobby', target: 2, body: 'better' });
    expect(state().rooms.lobby.messages[1].body).toBe('m2'); // not before it is stored
    ws.receive({ t: 'ack', ref: edit.ref, room: 'lobby', seq: 4, cid: edit.cid, ts: NOW + 4000 });
    expect(state().rooms.lobby.messages[1]).toMatchObject({ body: 'better', edited_ts: NOW + 4000 });
    // Its msg comes too: nothing changes twice.
    ws.receive({ ...event('lobby', 4, 'alice', 'edit', 2, { body: 'better' }), cid: edit.cid });
    expect(state().rooms.lobby.messages[1].body).toBe('better');

    client.react('lobby', 1, '🎉', true);
    const react = ws.lastFrame('react');
    expect(react).toMatchObject({ target: 1, emoji: '🎉', on: true });
    // A repeat of the current state is answered with the original ack (its cid, not ours).
    ws.receive({ t: 'ack', ref: react.ref, room: 'lobby', seq: 5, cid: 'the-original', ts: NOW });
    expect(state().rooms.lobby.messages[0].reactions).toEqual({ '🎉': ['alice'] });
    client.react('lobby', 1, '🎉', false);
    ws.receive({ t: 'ack', ref: ws.lastFrame('react').ref, room: 'lobby', seq: 6, cid: ws.lastFrame('react').cid, ts: NOW });
    expect(state().rooms.lobby.messages[0].reactions).toBeUndefined();

    client.deleteMessage('lobby', 2);
    const del = ws.lastFrame('delete');
    ws.receive({ t: 'ack', ref: del.ref, room: 'lobby', seq: 7, cid: del.cid, ts: NOW });
    expect(state().rooms.lobby.messages[1]).toMatchObject({ deleted: true, body: '' });
    expect(state().rooms.lobby.unread).toBe(0);
  });

  it('checks an edit before sending it', () => {
    const { client, ws } = inLobby(3);
    expect(client.edit('lobby', 2, '   ')).toMatch(/cannot be empty/);
    expect(client.edit('lobby', 2, 'x'.repeat(5000))).toMatch(/limit is 4096 bytes/);
    expect(client.edit('lobby', 2, 'm2')).toBeNull(); // unchanged: nothing to send
    expect(ws.frames('edit')).toHaveLength(0);
  });

  it('says why an edit was refused, and changes nothing', () => {
    const { client, state, ws } = inLobby(3);
    const before = state().rooms.lobby.messages;
    client.edit('lobby', 3, 'not mine');
    expect(state().rooms.lobby.saving).toEqual([3]);
    ws.receive({ t: 'error', ref: ws.lastFrame('edit').ref, code: 'forbidden', message: 'not the author' });
    expect(state().notice).toBe('You can only edit your own messages. Nothing was changed.');
    expect(state().rooms.lobby.saving).toEqual([]);
    client.edit('lobby', 2, 'gone meanwhile');
    ws.receive({ t: 'error', ref: ws.lastFrame('edit').ref, code: 'not_found', message: 'no such message' });
    expect(state().notice).toMatch(/can no longer be edited/);
    client.react('lobby', 2, '👍', true);
    ws.receive({ t: 'error', ref: ws.lastFrame('react').ref, code: 'not_found', message: 'no such message' });
    expect(state().notice).toMatch(/cannot react/);
    expect(state().rooms.lobby.messages).toBe(before);
  });

  it('sends a change made while offline after the reconnect, with the same cid', () => {
    const { client, state, ws } = inLobby(3);
    client.edit('lobby', 2, 'offline edit');
    const cid = ws.lastFrame('edit').cid;
    expect(state().rooms.lobby.saving).toEqual([2]);
    ws.serverClose(1006); // before the ack
    vi.advanceTimersByTime(1000);
    const next = connect();
    next.conversations([conv('lobby', 3, 3)]);
    expect(next.frames('edit')).toHaveLength(0); // not before the room is joined again
    joined(next, 'lobby', 3);
    const again = next.lastFrame('edit');
    expect(again.cid).toBe(cid);
    next.receive({ t: 'ack', ref: again.ref, room: 'lobby', seq: 4, cid, ts: NOW });
    expect(state().rooms.lobby.messages[1].body).toBe('offline edit');
    expect(state().rooms.lobby.saving).toEqual([]);
  });

  it('resumes with since and applies the events it missed, replayed or paged', () => {
    const { state, ws } = inLobby(3);
    ws.serverClose(1006);
    vi.advanceTimersByTime(1000);
    const next = connect();
    next.conversations([conv('lobby', 1205, 3)]);
    const join = next.lastFrame('join');
    expect(join).toMatchObject({ room: 'lobby', since: 3 });
    next.receive({ t: 'ok', ref: join.ref, room: 'lobby', seq: 1205, members: ['alice'], more: true });
    // The replay (the newest 1000 missed) comes live; the rest is paged in.
    next.receive(event('lobby', 1204, 'bob', 'edit', 3, { body: 'edited late' }));
    next.receive(event('lobby', 1205, 'bob', 'reaction', 1, { emoji: '👍', on: false }));
    const gap = next.lastFrame('history');
    expect(gap).toMatchObject({ before: 206, limit: 100 });
    // Older events from the gap: bob's reaction before he took it back, and an older edit.
    next.receive({
      t: 'history',
      ref: gap.ref,
      room: 'lobby',
      messages: [event('lobby', 205, 'bob', 'edit', 3, { body: 'edited early' }), event('lobby', 204, 'bob', 'reaction', 1, { emoji: '👍' })],
      more: false,
    });
    const room = state().rooms.lobby;
    expect(room.messages[2].body).toBe('edited late');
    expect(room.messages[0].reactions).toBeUndefined();
    expect(room.unread).toBe(1202);
  });

  it('keeps events whose target is not loaded yet, for when it is', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    ws.conversations([conv('lobby', 10, 10)]);
    joined(ws, 'lobby', 10);
    client.setActive('lobby');
    const h = ws.lastFrame('history');
    expect(h.before).toBe(11);
    // Live events for messages not in memory yet: the page is on its way.
    ws.receive(event('lobby', 11, 'bob', 'edit', 9, { body: 'new body' }));
    ws.receive(event('lobby', 12, 'cat', 'reaction', 9, { emoji: '🎉' }));
    // The page was read before the events were stored: they are applied on it.
    ws.receive({ t: 'history', ref: h.ref, room: 'lobby', messages: [msg('lobby', 10, 'bob'), msg('lobby', 9, 'bob', 'old body')], more: true });
    const m9 = state().rooms.lobby.messages.find((m) => m.seq === 9)!;
    expect(m9).toMatchObject({ body: 'new body', reactions: { '🎉': ['cat'] } });
    expect(state().rooms.lobby.messages.map((m) => m.seq)).toEqual([9, 10]);
  });

  it('answers a message: reply_to is sent, echoed and shown', () => {
    const { client, state, ws } = inLobby(3);
    client.setReplyTo('lobby', 1);
    expect(state().rooms.lobby.replyTo).toBe(1);
    client.send('lobby', 'an answer');
    expect(state().rooms.lobby.replyTo).toBeNull();
    const send = ws.lastFrame('send');
    expect(send).toMatchObject({ body: 'an answer', reply_to: 1 });
    ws.receive({ t: 'ack', ref: send.ref, room: 'lobby', seq: 4, cid: send.cid, ts: NOW });
    expect(state().rooms.lobby.messages[3]).toMatchObject({ seq: 4, reply_to: 1 });
    // A DM answer goes with dm.
    ws.receive(msg('dm:alice:bob', 1, 'bob', 'lunch?'));
    client.setReplyTo('dm:alice:bob', 1);
    client.send('dm:alice:bob', 'yes');
    expect(ws.lastFrame('dm')).toMatchObject({ to: 'bob', body: 'yes', reply_to: 1 });
    // The answered message is gone: said in words.
    client.setReplyTo('lobby', 2);
    client.send('lobby', 'too late');
    ws.receive({ t: 'error', ref: ws.lastFrame('send').ref, code: 'not_found', message: 'no such message' });
    expect(state().rooms.lobby.pending[0]).toMatchObject({ state: 'failed', error: expect.stringMatching(/answered is gone/) });
  });
});

describe('leaving', () => {
  it('leaves with forget, and removes the conversation', () => {
    const { client, state, ws } = inLobby(3);
    ws.receive(msg('dm:alice:bob', 1, 'bob', 'hi'));
    client.leaveRoom('lobby');
    expect(ws.lastFrame('leave')).toMatchObject({ room: 'lobby', forget: true });
    expect(state().roomOrder).toEqual([]);
    expect(state().active).toBeNull();
    // A DM too, joined or not.
    client.leaveRoom('dm:alice:bob');
    expect(ws.lastFrame('leave')).toMatchObject({ room: 'dm:alice:bob', forget: true });
    expect(state().dmOrder).toEqual([]);
    // Its next message brings it back.
    ws.receive(msg('dm:alice:bob', 2, 'bob', 'still there?'));
    expect(state().dmOrder).toEqual(['dm:alice:bob']);
  });

  it('a list answered before the server heard of the leave does not bring the room back', () => {
    const { client, state } = makeClient();
    client.start(session());
    const ws = connect();
    client.leaveRoom('lobby'); // not listed yet: nothing to do
    ws.conversations([conv('lobby', 3, 3), conv('dm:alice:bob', 2, 2)], false);
    expect(state().roomOrder).toEqual(['lobby']);
    client.leaveRoom('lobby');
    client.leaveRoom('dm:alice:bob');
    // A reconnect's list, asked before the leaves were handled.
    ws.serverClose(1006);
    vi.advanceTimersByTime(1000);
    const next = connect();
    next.conversations([conv('lobby', 3, 3), conv('dm:alice:bob', 3, 2)], false);
    expect(state().roomOrder).toEqual([]);
    // The DM has a newer message than when it was left: it is back.
    expect(state().dmOrder).toEqual(['dm:alice:bob']);
  });

  it('a conversation left for good on another device goes at the next reconnect, and is not joined again', () => {
    const { client, state } = makeClient();
    client.start(session());
    let ws = connect();
    ws.conversations([conv('lobby', 3, 3), conv('gone', 2, 2), conv('dm:alice:bob', 2, 2), conv('dm:alice:cat', 1, 1)]);
    joined(ws, 'lobby', 3);
    joined(ws, 'gone', 2);
    client.startDm('dave'); // started here, nothing written yet: the server does not list it
    client.setActive('gone');
    ws.serverClose(1006);
    vi.advanceTimersByTime(1000);
    ws = connect();
    // Nothing public is joined before the server says it is still one of hers.
    expect(ws.frames('join').map((f) => f.room)).toEqual(['dm:alice:dave']);
    ws.conversations([conv('lobby', 3, 3), conv('dm:alice:bob', 2, 2)]);
    expect(ws.frames('join').map((f) => f.room)).toEqual(['dm:alice:dave', 'lobby']);
    const s = state();
    expect(s.roomOrder).toEqual(['lobby']);
    expect(s.dmOrder.sort()).toEqual(['dm:alice:bob', 'dm:alice:dave']);
    expect(s.active).toBeNull();
  });

  it('removes nothing when the list could not be read to its end', () => {
    const { client, state } = makeClient();
    client.start(session());
    let ws = connect();
    ws.conversations([conv('a', 0, 0), conv('b', 0, 0)]);
    ws.serverClose(1006);
    vi.advanceTimersByTime(1000);
    ws = connect();
    // Two pages of the same last_ts: the second brings nothing new, paging stops.
    ws.conversations([conv('a', 0, 0)], true);
    ws.conversations([conv('a', 0, 0)], true);
    expect(state().roomOrder).toEqual(['a', 'b']);
    expect(ws.frames('join').map((f) => f.room).sort()).toEqual(['a', 'b']);
  });

  it('tells the server at the next welcome when it left while offline', () => {
    const { client, state, ws } = inLobby(3);
    ws.serverClose(1006);
    client.leaveRoom('lobby');
    expect(state().roomOrder).toEqual([]);
    vi.advanceTimersByTime(1000);
    const next = connect();
    const frames = next.sent.map((f) => f.t);
    expect(frames.indexOf('leave')).toBeLessThan(frames.indexOf('conversations'));
    expect(next.lastFrame('leave')).toMatchObject({ room: 'lobby', forget: true });
  });
});

describe('direct messages that arrive without a join', () => {
  it('drops the live messages of a DM not opened when the connection is lost, and reads them again when it is opened', () => {
    const { client, state, ws } = inLobby(0);
    ws.receive(msg('dm:alice:bob', 1, 'bob', 'one'));
    expect(state().rooms['dm:alice:bob'].messages).toHaveLength(1);
    ws.serverClose(1006);
    // What comes while offline is not replayed to a DM that is not joined…
    expect(state().rooms['dm:alice:bob'].messages).toHaveLength(0);
    vi.advanceTimersByTime(1000);
    const next = connect();
    next.conversations([conv('dm:alice:bob', 80, 0, { peer: 'bob' })]);
    expect(state().rooms['dm:alice:bob'].unread).toBe(80);
    // …so opening it reads the newest page, with no hole.
    client.setActive('dm:alice:bob');
    joined(next, 'dm:alice:bob', 80);
    expect(next.lastFrame('history')).toMatchObject({ room: 'dm:alice:bob', before: 81 });
  });
});
