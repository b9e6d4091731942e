// The chat client: one WebSocket to viche, kept honest across reconnects.
//
// - The conversation list comes from the server (`conversations`, paged,
//   protocol v1.1) after each welcome; public rooms in it are joined so that
//   their messages arrive, DMs arrive without a join (a DM is joined once it
//   is opened, for its presence, typing and resumes).
// - Unread counts are the server's: last seq minus the user's read marker
//   (events count). `read` moves the marker as the user reads (debounced and
//   paced); `read` pushes from the user's other sessions move it here.
// - Reconnects with exponential backoff and jitter; each joined room is
//   resumed with `join since` = the last seq seen on that room's stream, so
//   the server replays exactly what was missed, events included.
// - Edits, deletions and reactions are events applied to their target in
//   memory (messages.ts); history and replays carry the targets' state.
// - A send is pending until its `ack`; after a reconnect it is sent again
//   with the same `cid`, which the server deduplicates. Edits, deletions
//   and reactions too (in memory only).
// - The token is refreshed (log in again, then `auth`) before it expires.
//
// React reads it through `subscribe` / `getState` (useSyncExternalStore).
import { login, refreshTime, type Session } from './api';
import { describeClose, describeError, type ErrorContext } from './errors';
import { applyEvent, indexOfSeq, isEvent, mergeMessages, replaceMessage, toMessage, type Message } from './messages';
import { Bucket, Pacer, type Rate } from './pacer';
import {
  decodeFrame,
  dmPeer,
  dmRoomId,
  encodeFrame,
  isDmRoom,
  isValidRoomName,
  isValidUsername,
  PROTOCOL_VERSION,
  utf8Length,
  type ClientFrame,
  type Conversation,
  type Msg,
  type ServerFrame,
} from './protocol';

export type { Message } from './messages';
export { mergeMessages } from './messages';

export type PendingState = 'waiting' | 'sending' | 'failed';

export interface Pending {
  cid: string;
  room: string;
  /** Set for a direct message: sent with `dm` to this user. */
  to?: string;
  body: string;
  /** The seq of the message this one answers. */
  replyTo?: number;
  state: PendingState;
  error?: string;
  createdAt: number;
}

export interface RoomView {
  id: string;
  kind: 'room' | 'dm';
  /** The other user of a DM. */
  peer?: string;
  /** Ordinary messages, in seq order, each seq once, with their edits,
   *  deletion and reactions applied. */
  messages: Message[];
  /** Sends not yet acknowledged, oldest first. */
  pending: Pending[];
  members: string[];
  typing: string[];
  /** As the server counts it: `lastSeq - readSeq` (events count). */
  unread: number;
  /** The newest seq known in the room (messages and events). */
  lastSeq: number;
  /** This user's read marker. */
  readSeq: number;
  /** When the newest message or event was stored (0: none). */
  lastTs: number;
  /** The newest message or event known, for the conversation list. */
  last: Msg | null;
  /** Older messages can be loaded with `history`. */
  more: boolean;
  loadingHistory: boolean;
  /** The newest page of messages is in memory (or the room is empty). */
  loaded: boolean;
  /** Subscribed on the current connection. */
  joined: boolean;
  /** The message the next send answers. */
  replyTo: number | null;
  /** Messages with an edit or deletion not yet acknowledged (seqs). */
  saving: number[];
}

export type Status = 'signed-out' | 'connecting' | 'online' | 'reconnecting';

/** A message that arrived in a conversation, for a notice. */
export interface Incoming {
  id: number;
  room: string;
  from: string;
  body: string;
}

export interface ChatState {
  status: Status;
  user: string | null;
  rooms: Record<string, RoomView>;
  /** Public rooms, newest activity first. */
  roomOrder: string[];
  /** DM rooms, newest activity first. */
  dmOrder: string[];
  active: string | null;
  /** The server's conversation list has been read since the last welcome. */
  listLoaded: boolean;
  /** What the server speaks beyond v1 (`welcome.features`). */
  features: string[];
  /** The latest message from someone else, for a notice. */
  incoming: Incoming | null;
  /** The latest error, in words. */
  notice: string | null;
  /** Why the connection was lost, while reconnecting. */
  disconnectReason: string | null;
  /** When the next connection attempt starts (ms since the epoch). */
  reconnectAt: number | null;
  /** Why the session ended (shown on the login screen). */
  signedOutReason: string | null;
  maxBody: number;
}

export interface SocketLike {
  binaryType: string;
  readyState: number;
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface ClientOptions {
  /** WebSocket URL of `/ws`. */
  url: string;
  createSocket?: (url: string) => SocketLike;
  fetch?: typeof fetch;
  /** Base URL of the HTTP API ('' = same origin). */
  apiBase?: string;
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  random?: () => number;
  /** Reconnect backoff: first delay and cap, in ms. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  helloTimeoutMs?: number;
  /** How long a read marker waits before it is sent (coalescing). */
  readDelayMs?: number;
}

interface RoomInternal {
  view: RoomView;
  /** Highest seq received on this room's stream: the `since` of a resume. */
  streamSeq: number;
  /** Joined at least once, so `streamSeq` is meaningful. */
  resumable: boolean;
  /** Joined on every connection: public rooms, and DMs once opened. */
  follow: boolean;
  /** The server has it among the user's conversations (listed, or a public room joined). */
  confirmed: boolean;
  /** The listing (`listGen`) in which it was last listed, joined or added here. */
  seenGen: number;
  /** A join is on its way. */
  joining: boolean;
  /** Events whose target is not in memory (yet), by target. */
  orphans: Map<number, Msg[]>;
  orphanCount: number;
  typingUntil: Map<string, number>;
  typingTimer: ReturnType<typeof setTimeout> | null;
  lastTypingSent: number;
  joinRetry: ReturnType<typeof setTimeout> | null;
  joinTries: number;
}

type ChangeFrame =
  | { t: 'edit'; room: string; target: number; body: string; cid: string }
  | { t: 'delete'; room: string; target: number; cid: string }
  | { t: 'react'; room: string; target: number; emoji: string; on: boolean; cid: string };

interface Change {
  frame: ChangeFrame;
  state: 'waiting' | 'sending';
  tries: number;
  timer: ReturnType<typeof setTimeout> | null;
}

type Inflight =
  | { kind: 'join'; room: string; since?: number }
  | { kind: 'leave'; room: string }
  | { kind: 'send'; cid: string }
  | { kind: 'change'; cid: string }
  | { kind: 'history'; room: string; purpose: 'initial' | 'older' | 'gap'; downTo: number; before: number }
  | { kind: 'read'; room: string; seq: number }
  | { kind: 'conversations' }
  | { kind: 'auth'; token: Session }
  | { kind: 'other' };

const SESSION_KEY = 'viche:session';
const HISTORY_PAGE = 50;
// The largest page: fewer round trips, and the widest tie of `last_ts` a page can get past.
const CONVERSATIONS_PAGE = 200;
const TYPING_SHOW_MS = 5000;
const TYPING_SEND_EVERY_MS = 2500;
const REPLAY_MAX = 1000;
const ORPHANS_MAX = 2000;
const OPEN = 1;
// A little under the server's defaults (docs/protocol.md, "Limits").
const JOIN_RATE: Rate = { perSecond: 9, burst: 18 };
const REPLAY_RATE: Rate = { perSecond: 1.8, burst: 18 };
const HISTORY_RATE: Rate = { perSecond: 9, burst: 18 };
const READ_RATE: Rate = { perSecond: 8, burst: 25 };

const RETRYABLE = new Set(['rate_limited', 'overloaded', 'internal']);

export class ChatClient {
  private readonly opts: Required<Omit<ClientOptions, 'storage'>> & { storage: ClientOptions['storage'] };
  private listeners = new Set<() => void>();
  private state: ChatState;
  private rooms = new Map<string, RoomInternal>();
  private dirty = false;
  private orderDirty = false;
  private flushQueued = false;

  private session: Session | null = null;
  private password: string | null = null;
  private ws: SocketLike | null = null;
  private welcomed = false;
  private nextRef = 1;
  private inflight = new Map<number, Inflight>();
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private helloTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private sendRetryTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private sendTries = new Map<string, number>();

  private changes = new Map<string, Change>();
  /** Read markers to send, by room. */
  private readQueue = new Map<string, number>();
  private readTimer: ReturnType<typeof setTimeout> | null = null;
  /** Rooms left with `forget` while offline: told to the server at the next welcome. */
  private forgetQueue = new Set<string>();
  /** Rooms left with `forget`, with their last seq then: a list answered
   *  before the server heard of it must not bring them back. */
  private left = new Map<string, number>();
  /** Rooms of the pre-1.1 saved list still to be joined once. */
  private migrating = new Set<string>();
  /** The conversation to open once the list is in (the last one open). */
  private wantedActive: string | null = null;
  /** Rooms seen in the current listing (to stop paging when a page has nothing new). */
  private listed = new Set<string>();
  private listRetry: ReturnType<typeof setTimeout> | null = null;
  /** Counts the listings (one per welcome). */
  private listGen = 0;
  private listTries = 0;
  private incomingId = 0;

  private joinBucket = new Bucket(JOIN_RATE, 0);
  private replayBucket = new Bucket(REPLAY_RATE, 0);
  private historyBucket = new Bucket(HISTORY_RATE, 0);
  private readBucket = new Bucket(READ_RATE, 0);
  private joinPacer = new Pacer();
  private historyPacer = new Pacer();

  constructor(options: ClientOptions) {
    this.opts = {
      createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
      fetch: (...args) => fetch(...args),
      apiBase: '',
      random: Math.random,
      backoffBaseMs: 500,
      backoffMaxMs: 15_000,
      helloTimeoutMs: 10_000,
      readDelayMs: 300,
      ...options,
      storage: options.storage === undefined ? (typeof localStorage === 'undefined' ? null : localStorage) : options.storage,
    };
    this.state = this.emptyState(null);
  }

  // ---- reading -------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getState = (): ChatState => this.state;

  /** The saved session, when its token is still valid. */
  savedSession(): Session | null {
    const raw = this.load<Session>(SESSION_KEY);
    if (!raw || typeof raw.token !== 'string' || typeof raw.user !== 'string') return null;
    if (!(raw.expiresAt > Date.now() + 5_000)) return null;
    return raw;
  }

  /** Whether the server speaks a v1.1 feature ("edits", "reactions", "replies", "conversations"). */
  speaks(feature: string): boolean {
    return this.state.features.includes(feature);
  }

  // ---- session -------------------------------------------------------

  /** Starts a session: connects, reads the user's conversations and joins
   *  their rooms. `password` (kept in memory only) lets the client renew
   *  the token by itself. */
  start(session: Session, password?: string): void {
    this.stop();
    this.session = session;
    this.password = password ?? null;
    this.save(SESSION_KEY, session);
    this.rooms.clear();
    this.changes.clear();
    this.readQueue.clear();
    this.forgetQueue.clear();
    this.left.clear();
    this.migrating.clear();
    this.wantedActive = null;
    this.state = { ...this.emptyState(session.user), status: 'connecting' };

    // Before v1.1 the room list lived here; its rooms are joined once (which
    // adds them to the user's conversations on the server), then it goes.
    const legacy = this.load<{ rooms?: unknown; active?: unknown }>(this.key('rooms'));
    if (legacy) {
      for (const id of Array.isArray(legacy.rooms) ? legacy.rooms : []) {
        if (typeof id === 'string' && !isDmRoom(id) && isValidRoomName(id) && !this.rooms.has(id)) {
          this.addRoom(id);
          this.migrating.add(id);
        }
      }
      if (typeof legacy.active === 'string') this.wantedActive = legacy.active;
      if (this.migrating.size === 0) this.opts.storage?.removeItem(this.key('rooms'));
    }
    this.opts.storage?.removeItem(this.key('read'));

    for (const p of this.load<Pending[]>(this.key('pending')) ?? []) {
      if (!p || typeof p.room !== 'string' || typeof p.cid !== 'string' || typeof p.body !== 'string') continue;
      if (!this.roomIdAllowed(p.room)) continue;
      const r = this.addRoom(p.room);
      r.view = { ...r.view, pending: [...r.view.pending, { ...p, state: p.state === 'failed' ? 'failed' : 'waiting' }] };
    }
    const active = this.load<string>(this.key('active'));
    if (typeof active === 'string') this.wantedActive = active;
    if (this.wantedActive && this.rooms.has(this.wantedActive)) this.setActive(this.wantedActive);
    this.markDirty();
    this.scheduleRefresh();
    this.connect();
  }

  /** Ends the session; `reason` is shown on the login screen. */
  signOut(reason: string | null = null): void {
    this.stop();
    this.opts.storage?.removeItem(SESSION_KEY);
    this.session = null;
    this.password = null;
    this.rooms.clear();
    this.changes.clear();
    this.readQueue.clear();
    this.state = { ...this.emptyState(null), signedOutReason: reason };
    this.markDirty();
  }

  /** Connects now instead of waiting for the backoff. */
  reconnectNow(): void {
    if (this.state.status !== 'reconnecting') return;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.connect();
  }

  dismissNotice(): void {
    this.setState({ notice: null });
  }

  dismissIncoming(): void {
    this.setState({ incoming: null });
  }

  // ---- rooms ---------------------------------------------------------

  /** Joins a public room (and shows it). Returns an error to show, or null. */
  joinRoom(name: string): string | null {
    const room = name.trim();
    if (!isValidRoomName(room)) return describeError('invalid', 'join');
    this.open(room);
    return null;
  }

  /** Opens the direct conversation with `username`. Returns an error to show, or null. */
  startDm(username: string): string | null {
    const me = this.state.user;
    const peer = username.trim();
    if (!me) return null;
    if (!isValidUsername(peer)) return 'Usernames are 3 to 32 letters, digits, "_", "." or "-".';
    if (peer === me) return 'That is you. Choose someone else to write to.';
    this.open(dmRoomId(me, peer));
    return null;
  }

  /** Shows `room`, adding it first if it is new. */
  private open(room: string): void {
    if (!this.rooms.has(room)) this.addRoom(room);
    this.setActive(room);
  }

  /** Leaves a conversation for good (`leave` with `forget`): it goes from
   *  the list on every device, until a DM's next message brings it back. */
  leaveRoom(id: string): void {
    const r = this.rooms.get(id);
    if (!r) return;
    if (this.welcomed) this.request({ t: 'leave', ref: 0, room: id, forget: true }, { kind: 'leave', room: id });
    else this.forgetQueue.add(id);
    this.left.set(id, r.view.lastSeq);
    this.removeRoom(id);
  }

  setActive(id: string | null): void {
    if (id !== null && !this.rooms.has(id)) return;
    this.state = { ...this.state, active: id };
    this.wantedActive = null;
    if (this.state.user) {
      if (id) this.save(this.key('active'), id);
      else this.opts.storage?.removeItem(this.key('active'));
    }
    if (id) {
      const r = this.rooms.get(id)!;
      // An opened DM is followed: joined now and after each reconnect.
      r.follow = true;
      if (!r.view.joined) this.queueJoin(r, true);
      else this.requestInitial(r);
    }
    this.markDirty();
  }

  /** Pages in older messages of a room. */
  loadOlder(id: string): void {
    const r = this.rooms.get(id);
    if (!r || !r.view.loaded || !r.view.more || r.view.loadingHistory || !this.welcomed) return;
    const before = r.view.messages.length ? r.view.messages[0].seq : r.streamSeq + 1;
    if (before <= 1) {
      this.updateView(r, { more: false });
      return;
    }
    this.requestHistory(r, before, HISTORY_PAGE, 'older', 0);
  }

  /** The user has seen `room` up to `seq`: moves the read marker here at
   *  once and on the server shortly (coalesced, paced). */
  markSeen(id: string, seq: number): void {
    const r = this.rooms.get(id);
    if (!r) return;
    const upto = Math.min(seq, r.view.lastSeq);
    if (upto <= r.view.readSeq) return;
    this.updateView(r, { readSeq: upto });
    this.readQueue.set(id, Math.max(upto, this.readQueue.get(id) ?? 0));
    this.scheduleReads(this.opts.readDelayMs);
  }

  // ---- messages ------------------------------------------------------

  /** Sends `body` to a room (answering the message chosen with
   *  `setReplyTo`, if any); it shows as pending until acknowledged.
   *  Returns an error to show, or null. */
  send(id: string, body: string): string | null {
    const r = this.rooms.get(id);
    if (!r || !this.state.user) return null;
    if (body.trim() === '') return null;
    const size = utf8Length(body);
    if (size > this.state.maxBody) return describeError('too_large', 'send', { maxBody: this.state.maxBody });
    const p: Pending = {
      cid: this.newCid(),
      room: id,
      to: r.view.kind === 'dm' ? r.view.peer : undefined,
      body,
      state: 'waiting',
      createdAt: Date.now(),
    };
    if (r.view.replyTo !== null) p.replyTo = r.view.replyTo;
    this.updateView(r, { pending: [...r.view.pending, p], replyTo: null });
    this.persistPending();
    if (this.canTransmit(r, p)) this.transmit(p);
    return null;
  }

  /** Chooses the message the next send in `room` answers (null: none). */
  setReplyTo(id: string, seq: number | null): void {
    const r = this.rooms.get(id);
    if (r && r.view.replyTo !== seq) this.updateView(r, { replyTo: seq });
  }

  /** Tries a failed send again (same cid). */
  retry(cid: string): void {
    const p = this.findPending(cid);
    if (!p) return;
    this.setPending(p.cid, { state: 'waiting', error: undefined });
    const r = this.rooms.get(p.room);
    if (r && this.canTransmit(r, p)) this.transmit(p);
  }

  discard(cid: string): void {
    const p = this.findPending(cid);
    if (!p) return;
    const r = this.rooms.get(p.room)!;
    this.updateView(r, { pending: r.view.pending.filter((q) => q.cid !== cid) });
    this.persistPending();
  }

  /** A new body for one of the user's own messages. Returns an error to show, or null. */
  edit(id: string, target: number, body: string): string | null {
    const r = this.rooms.get(id);
    if (!r) return null;
    if (body.trim() === '') return 'A message cannot be empty. To remove it, delete it.';
    if (utf8Length(body) > this.state.maxBody) return describeError('too_large', 'edit', { maxBody: this.state.maxBody });
    const m = this.findMessage(r, target);
    if (m && m.body === body) return null;
    this.change({ t: 'edit', room: id, target, body, cid: this.newCid() });
    return null;
  }

  /** Deletes one of the user's own messages. */
  deleteMessage(id: string, target: number): void {
    if (!this.rooms.has(id)) return;
    this.change({ t: 'delete', room: id, target, cid: this.newCid() });
  }

  /** Adds (`on`) or takes back this user's reaction `emoji` to a message. */
  react(id: string, target: number, emoji: string, on: boolean): void {
    if (!this.rooms.has(id) || emoji === '' || utf8Length(emoji) > 32) return;
    this.change({ t: 'react', room: id, target, emoji, on, cid: this.newCid() });
  }

  /** Tells the room this user is typing (throttled). */
  typing(id: string): void {
    const r = this.rooms.get(id);
    if (!r || !this.welcomed || !r.view.joined) return;
    const now = Date.now();
    if (now - r.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    r.lastTypingSent = now;
    this.sendFrame({ t: 'typing', room: id });
  }

  // ---- connection ----------------------------------------------------

  private connect(): void {
    if (!this.session) return;
    this.reconnectTimer = null;
    let ws: SocketLike;
    try {
      ws = this.opts.createSocket(this.opts.url);
    } catch {
      this.scheduleReconnect('The connection to the server was lost.');
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.welcomed = false;
    if (this.state.status !== 'reconnecting') this.setState({ status: 'connecting' });
    ws.onopen = () => {
      if (this.ws !== ws || !this.session) return;
      ws.send(encodeFrame({ t: 'hello', v: PROTOCOL_VERSION, token: this.session.token }));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      const frame = decodeFrame(ev.data as ArrayBuffer | string);
      if (frame) this.handle(frame);
    };
    ws.onclose = (ev) => this.onClose(ws, ev.code);
    ws.onerror = () => {};
    this.helloTimer = setTimeout(() => {
      if (this.ws === ws && !this.welcomed) ws.close(4000, 'no welcome');
    }, this.opts.helloTimeoutMs);
  }

  private onClose(ws: SocketLike, code: number): void {
    if (this.ws !== ws) return;
    this.dropConnection();
    if (!this.session) return;
    if (code === 4001) {
      if (this.password) {
        void this.renewToken().then((ok) => {
          if (ok) this.connect();
          else if (this.session) this.scheduleReconnect(describeClose(code));
        });
        this.setState({ status: 'reconnecting', disconnectReason: describeClose(code), reconnectAt: Date.now() });
        return;
      }
      this.signOut(describeClose(4001));
      return;
    }
    this.scheduleReconnect(describeClose(code));
  }

  /** Forgets the socket and everything tied to it. */
  private dropConnection(): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.ws = null;
    this.welcomed = false;
    this.inflight.clear();
    this.joinPacer.clear();
    this.historyPacer.clear();
    if (this.listRetry) clearTimeout(this.listRetry);
    this.listRetry = null;
    if (this.readTimer) clearTimeout(this.readTimer);
    this.readTimer = null;
    for (const t of this.sendRetryTimers.values()) clearTimeout(t);
    this.sendRetryTimers.clear();
    for (const ch of this.changes.values()) {
      if (ch.timer) clearTimeout(ch.timer);
      ch.timer = null;
      ch.state = 'waiting';
    }
    for (const r of this.rooms.values()) {
      if (r.joinRetry) clearTimeout(r.joinRetry);
      r.joinRetry = null;
      r.joining = false;
      r.typingUntil.clear();
      const changes: Partial<RoomView> = {
        joined: false,
        loadingHistory: false,
        typing: [],
        pending: r.view.pending.map((p) => (p.state === 'sending' ? { ...p, state: 'waiting' as const } : p)),
      };
      if (!r.resumable) {
        // Messages that arrived live on a stream that cannot be resumed (a
        // DM not opened): what comes while offline would leave a hole, so
        // they are read again when the conversation is opened.
        Object.assign(changes, { messages: [], loaded: false, more: true });
        r.orphans.clear();
        r.orphanCount = 0;
      }
      this.updateView(r, changes);
    }
  }

  private scheduleReconnect(reason: string): void {
    this.attempt += 1;
    const cap = Math.min(this.opts.backoffMaxMs, this.opts.backoffBaseMs * 2 ** (this.attempt - 1));
    // "Equal jitter": half the backoff, plus a random share of the other half.
    const delay = Math.round(cap / 2 + this.opts.random() * (cap / 2));
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
    this.setState({ status: 'reconnecting', disconnectReason: reason, reconnectAt: Date.now() + delay });
  }

  /** Clears every timer and closes the socket. */
  private stop(): void {
    const ws = this.ws;
    this.dropConnection();
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close(1000, 'bye');
      } catch {
        // already closed
      }
    }
    for (const timer of [this.reconnectTimer, this.refreshTimer]) if (timer) clearTimeout(timer);
    for (const r of this.rooms.values()) if (r.typingTimer) clearTimeout(r.typingTimer);
    this.reconnectTimer = null;
    this.refreshTimer = null;
    this.attempt = 0;
  }

  private sendFrame(frame: ClientFrame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(encodeFrame(frame));
    return true;
  }

  private request(frame: Extract<ClientFrame, { ref: number }>, ctx: Inflight): boolean {
    const ref = this.nextRef++;
    if (!this.sendFrame({ ...frame, ref } as ClientFrame)) return false;
    this.inflight.set(ref, ctx);
    return true;
  }

  // ---- server frames -------------------------------------------------

  private handle(frame: ServerFrame): void {
    switch (frame.t) {
      case 'welcome':
        this.onWelcome(frame.max_body, Array.isArray(frame.features) ? frame.features : []);
        return;
      case 'msg':
        this.onMsg(frame);
        return;
      case 'presence':
        this.onPresence(frame.room, frame.user, frame.online);
        return;
      case 'typing':
        this.onTyping(frame.room, frame.user);
        return;
      case 'read':
        this.onReadPush(frame.room, frame.seq);
        return;
      case 'ok':
      case 'ack':
      case 'history':
      case 'conversations':
      case 'error':
      case 'pong': {
        const ctx = frame.ref !== undefined ? this.inflight.get(frame.ref) : undefined;
        if (frame.ref !== undefined) this.inflight.delete(frame.ref);
        if (frame.t === 'ack') this.onAck(frame, ctx);
        else if (frame.t === 'error') this.onError(frame.code, ctx);
        else if (ctx && frame.t === 'ok') this.onOk(frame, ctx);
        else if (ctx && frame.t === 'history' && ctx.kind === 'history') this.onHistory(frame.messages ?? [], frame.more, ctx);
        else if (ctx && frame.t === 'conversations' && ctx.kind === 'conversations') this.onConversations(frame.items ?? [], frame.more);
        return;
      }
    }
  }

  private onWelcome(maxBody: number, features: string[]): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.welcomed = true;
    this.attempt = 0;
    // A new session: the server's buckets are full again.
    const now = Date.now();
    this.joinBucket = new Bucket(JOIN_RATE, now);
    this.replayBucket = new Bucket(REPLAY_RATE, now);
    this.historyBucket = new Bucket(HISTORY_RATE, now);
    this.readBucket = new Bucket(READ_RATE, now);
    this.setState({
      status: 'online',
      disconnectReason: null,
      reconnectAt: null,
      maxBody: maxBody || this.state.maxBody,
      features,
      listLoaded: !features.includes('conversations'),
    });
    for (const room of this.forgetQueue) this.request({ t: 'leave', ref: 0, room, forget: true }, { kind: 'leave', room });
    this.forgetQueue.clear();
    if (features.includes('conversations')) {
      this.listed.clear();
      this.listTries = 0;
      this.requestConversations(undefined);
    }
    // Public rooms the server lists are joined as the list comes: a room
    // left for good on another device must not be joined (and so added)
    // again from here. Joined now: DMs (a join adds nothing), and rooms the
    // server may not know yet (the pre-1.1 list, a join that never went).
    this.listGen += 1;
    const joinNow = (r: RoomInternal) => r.follow && (!features.includes('conversations') || r.view.kind === 'dm' || !r.confirmed);
    const active = this.state.active ? this.rooms.get(this.state.active) : undefined;
    if (active && joinNow(active)) this.queueJoin(active);
    for (const r of this.rooms.values()) {
      if (!joinNow(r)) continue;
      r.seenGen = this.listGen;
      this.queueJoin(r);
    }
    // Direct messages need no join: send what is waiting right away.
    for (const r of this.rooms.values()) {
      for (const p of r.view.pending) if (p.to && p.state === 'waiting') this.transmit(p);
      if (r.view.kind === 'dm') this.transmitChanges(r);
    }
    if (this.readQueue.size) this.scheduleReads(0);
  }

  private queueJoin(r: RoomInternal, first = false): void {
    if (!this.welcomed || r.view.joined || r.joining) return;
    const id = r.view.id;
    const costs = r.resumable ? [this.joinBucket, this.replayBucket] : [this.joinBucket];
    this.joinPacer.add(
      id,
      costs,
      () => {
        if (this.welcomed && this.rooms.get(id) === r && !r.view.joined && !r.joining) this.sendJoin(r);
      },
      first,
    );
  }

  private sendJoin(r: RoomInternal): void {
    const since = r.resumable ? r.streamSeq : undefined;
    if (this.request({ t: 'join', ref: 0, room: r.view.id, since }, { kind: 'join', room: r.view.id, since })) r.joining = true;
  }

  private requestConversations(before: number | undefined): void {
    this.historyPacer.add('conversations', [this.historyBucket], () => {
      if (this.welcomed) this.request({ t: 'conversations', ref: 0, before, limit: CONVERSATIONS_PAGE }, { kind: 'conversations' });
    });
  }

  private onConversations(items: Conversation[], more: boolean): void {
    this.listTries = 0;
    let fresh = 0;
    let oldest = Number.MAX_SAFE_INTEGER;
    for (const c of items) {
      if (!c || typeof c.room !== 'string' || !this.roomIdAllowed(c.room)) continue;
      oldest = Math.min(oldest, Number(c.last_ts) || 0);
      if (!this.listed.has(c.room)) fresh++;
      this.listed.add(c.room);
      const leftAt = this.left.get(c.room);
      if (leftAt !== undefined && !this.rooms.has(c.room) && (c.last_seq || 0) <= leftAt) continue;
      const r = this.rooms.get(c.room) ?? this.addRoom(c.room);
      r.confirmed = true;
      r.seenGen = this.listGen;
      if (r.follow) this.queueJoin(r);
      const last = c.last && typeof c.last.seq === 'number' ? c.last : null;
      this.updateView(r, {
        lastSeq: Math.max(r.view.lastSeq, c.last_seq || 0),
        readSeq: Math.max(r.view.readSeq, c.read_seq || 0),
        lastTs: Math.max(r.view.lastTs, c.last_ts || 0),
        last: last && last.seq >= (r.view.last?.seq ?? 0) ? last : r.view.last,
      });
      this.orderDirty = true;
    }
    // `before` is a last_ts, and conversations can share one: ask from one
    // past it (the page may repeat a few) and stop when nothing is new.
    if (more && fresh > 0 && oldest !== Number.MAX_SAFE_INTEGER) {
      this.requestConversations(oldest + 1);
      return;
    }
    if (!more) {
      // The whole list: what it no longer holds was left for good elsewhere.
      for (const r of [...this.rooms.values()]) if (r.confirmed && r.seenGen < this.listGen) this.removeRoom(r.view.id);
    }
    this.listDone();
  }

  /** The listing is over (or failed): join what is left to join. */
  private listDone(): void {
    for (const r of this.rooms.values()) if (r.follow) this.queueJoin(r);
    this.setState({ listLoaded: true });
    const wanted = this.wantedActive;
    if (wanted && this.state.active === null && this.rooms.has(wanted)) this.setActive(wanted);
  }

  private onOk(frame: Extract<ServerFrame, { t: 'ok' }>, ctx: Inflight): void {
    if (ctx.kind === 'join') {
      const r = this.rooms.get(ctx.room);
      if (!r) return;
      r.joining = false;
      r.joinTries = 0;
      const seq = frame.seq ?? 0;
      if (r.view.kind === 'room') {
        // Joining added it to the user's conversations.
        r.confirmed = true;
        r.seenGen = this.listGen;
      }
      this.updateView(r, { joined: true, members: [...(frame.members ?? [])].sort() });
      if (ctx.since === undefined) {
        // A first join: live messages start after `seq`; the page before
        // it comes from history when the conversation is opened.
        r.resumable = true;
        r.streamSeq = Math.max(r.streamSeq, seq);
        this.updateView(r, { lastSeq: Math.max(r.view.lastSeq, seq) });
        if (r.streamSeq === 0) this.updateView(r, { loaded: true, more: false });
      } else if (frame.more) {
        // The replay holds only the newest 1000 missed; page in the rest.
        this.requestHistory(r, seq - REPLAY_MAX + 1, 100, 'gap', ctx.since);
      }
      if (this.state.active === r.view.id) this.requestInitial(r);
      for (const p of r.view.pending) if (!p.to && p.state === 'waiting') this.transmit(p);
      this.transmitChanges(r);
      this.migrated(r.view.id);
    } else if (ctx.kind === 'auth') {
      this.session = ctx.token;
      this.save(SESSION_KEY, ctx.token);
      this.scheduleRefresh();
    }
  }

  /** A room of the pre-1.1 list was joined (or cannot be): drop the list when all were. */
  private migrated(id: string): void {
    if (this.migrating.delete(id) && this.migrating.size === 0 && this.state.user) {
      this.opts.storage?.removeItem(this.key('rooms'));
    }
  }

  /** Loads the newest page of a joined room, once. */
  private requestInitial(r: RoomInternal): void {
    if (r.view.loaded || r.view.loadingHistory || !r.view.joined) return;
    if (r.streamSeq === 0) {
      this.updateView(r, { loaded: true, more: false });
      return;
    }
    this.requestHistory(r, r.streamSeq + 1, HISTORY_PAGE, 'initial', 0);
  }

  private onMsg(m: Msg): void {
    if (typeof m.room !== 'string' || typeof m.seq !== 'number') return;
    let r = this.rooms.get(m.room);
    if (!r) {
      if (!isDmRoom(m.room) || !this.roomIdAllowed(m.room)) return;
      // Someone wrote to us: the DM is one of our conversations now.
      r = this.addRoom(m.room);
    }
    if (r.view.kind === 'dm') {
      r.confirmed = true;
      r.seenGen = this.listGen;
    }
    if (r.view.joined && m.seq > r.streamSeq) r.streamSeq = m.seq;
    this.note(r, [m]);
    if (isEvent(m)) {
      this.applyEvents(r, [m]);
      return;
    }
    const changes: Partial<RoomView> = { messages: this.withOrphans(r, mergeMessages(r.view.messages, [toMessage(m)]), [m.seq]) };
    if (m.from === this.state.user && r.view.pending.some((p) => p.cid === m.cid)) {
      changes.pending = r.view.pending.filter((p) => p.cid !== m.cid);
    }
    if (r.typingUntil.delete(m.from)) changes.typing = [...r.typingUntil.keys()];
    this.updateView(r, changes);
    if (changes.pending) this.persistPending();
    if (m.from !== this.state.user) {
      this.setState({ incoming: { id: ++this.incomingId, room: m.room, from: m.from, body: m.body } });
    }
  }

  /** What rows tell about the room: its newest seq, and the user's marker
   *  (the server moves it past every row the user stored). */
  private note(r: RoomInternal, rows: Msg[]): void {
    const me = this.state.user;
    let { lastSeq, readSeq, lastTs, last } = r.view;
    for (const m of rows) {
      if (m.seq >= lastSeq) {
        lastSeq = m.seq;
        if (!last || m.seq >= last.seq) last = m;
      }
      if (typeof m.ts === 'number' && m.ts > lastTs) lastTs = m.ts;
      if (m.from === me && m.seq > readSeq) readSeq = m.seq;
    }
    if (lastTs !== r.view.lastTs) this.orderDirty = true;
    if (lastSeq !== r.view.lastSeq || readSeq !== r.view.readSeq || lastTs !== r.view.lastTs || last !== r.view.last) {
      this.updateView(r, { lastSeq, readSeq, lastTs, last });
    }
  }

  /** Applies events (in seq order) to their targets in memory; keeps the
   *  others for when their target is loaded. */
  private applyEvents(r: RoomInternal, events: Msg[]): void {
    let messages = r.view.messages;
    for (const e of [...events].sort((a, b) => a.seq - b.seq)) {
      if (typeof e.target !== 'number') continue;
      const i = indexOfSeq(messages, e.target);
      if (i >= 0) {
        messages = replaceMessage(messages, applyEvent(messages[i], e));
        continue;
      }
      const list = r.orphans.get(e.target) ?? [];
      if (list.some((o) => o.seq === e.seq)) continue;
      list.push(e);
      r.orphans.set(e.target, list);
      if (++r.orphanCount > ORPHANS_MAX) {
        // Drop the events of the oldest target.
        const oldest = Math.min(...r.orphans.keys());
        r.orphanCount -= r.orphans.get(oldest)!.length;
        r.orphans.delete(oldest);
      }
    }
    if (messages !== r.view.messages) this.updateView(r, { messages });
  }

  /** Applies the kept events of messages just added. */
  private withOrphans(r: RoomInternal, messages: Message[], seqs: number[]): Message[] {
    if (r.orphanCount === 0) return messages;
    let out = messages;
    for (const seq of seqs) {
      const events = r.orphans.get(seq);
      if (!events) continue;
      r.orphans.delete(seq);
      r.orphanCount -= events.length;
      const i = indexOfSeq(out, seq);
      if (i < 0) continue;
      let m = out[i];
      for (const e of events.sort((a, b) => a.seq - b.seq)) m = applyEvent(m, e);
      out = replaceMessage(out, m);
    }
    return out;
  }

  private onAck(ack: Extract<ServerFrame, { t: 'ack' }>, ctx: Inflight | undefined): void {
    if (ctx?.kind === 'change') {
      this.onChangeAck(ctx.cid, ack);
      return;
    }
    const p = this.findPending(ack.cid);
    const user = this.state.user;
    if (!p || !user) return;
    this.sendTries.delete(p.cid);
    const r = this.rooms.get(p.room)!;
    const target = this.rooms.get(ack.room) ?? r;
    const stored: Msg = { room: ack.room, seq: ack.seq, from: user, body: p.body, cid: ack.cid, ts: ack.ts };
    if (p.replyTo !== undefined) stored.reply_to = p.replyTo;
    this.updateView(r, { pending: r.view.pending.filter((q) => q.cid !== p.cid) });
    if (target.view.id === ack.room) {
      this.note(target, [stored]);
      this.updateView(target, { messages: this.withOrphans(target, mergeMessages(target.view.messages, [toMessage(stored)]), [ack.seq]) });
    }
    this.persistPending();
  }

  private onHistory(rows: Msg[], more: boolean, ctx: Extract<Inflight, { kind: 'history' }>): void {
    const r = this.rooms.get(ctx.room);
    if (!r) return;
    if (ctx.purpose === 'initial' && typeof performance !== 'undefined') performance.mark(`viche:history:${ctx.room}`);
    const valid = rows.filter((m) => m && typeof m.seq === 'number');
    // The page is a snapshot: its messages reflect every event up to its
    // newest row (and up to `before - 1`, all stored before it was asked).
    const base = Math.max(ctx.before - 1, ...valid.map((m) => m.seq));
    const ordinary = valid.filter((m) => !isEvent(m));
    const events = valid.filter(isEvent);
    const added = ordinary.filter((m) => indexOfSeq(r.view.messages, m.seq) < 0);
    const merged = mergeMessages(r.view.messages, added.map((m) => toMessage({ ...m, room: ctx.room }, base)));
    this.updateView(r, { messages: this.withOrphans(r, merged, added.map((m) => m.seq)) });
    this.applyEvents(r, events);
    this.note(r, valid);
    if (ctx.purpose === 'gap') {
      const lowest = valid.length ? Math.min(...valid.map((m) => m.seq)) : 0;
      if (more && lowest > ctx.downTo + 1) this.requestHistory(r, lowest, 100, 'gap', ctx.downTo);
      return;
    }
    this.updateView(r, { more, loadingHistory: false, loaded: true });
  }

  private onError(code: string, ctx: Inflight | undefined): void {
    if (!ctx || ctx.kind === 'other') {
      this.setState({ notice: describeError(code, 'session') });
      return;
    }
    switch (ctx.kind) {
      case 'send':
        this.onSendError(ctx.cid, code);
        return;
      case 'change':
        this.onChangeError(ctx.cid, code);
        return;
      case 'auth':
        this.setState({ notice: describeError(code, 'session') });
        return;
      case 'leave':
        // The conversation is gone here; at worst it comes back with the next list.
        return;
      case 'read':
        if (code === 'rate_limited' || code === 'overloaded') {
          this.readQueue.set(ctx.room, Math.max(ctx.seq, this.readQueue.get(ctx.room) ?? 0));
          this.scheduleReads(1000);
        }
        return;
      case 'conversations':
        if (RETRYABLE.has(code)) {
          const delay = Math.min(10_000, 500 * 2 ** ++this.listTries) * (0.5 + this.opts.random() / 2);
          this.listRetry = setTimeout(() => {
            this.listRetry = null;
            if (this.welcomed) this.requestConversations(undefined);
          }, delay);
          return;
        }
        this.listDone();
        this.setState({ notice: describeError(code, 'session') });
        return;
    }
    const r = this.rooms.get(ctx.room);
    if (!r) return;
    if (ctx.kind === 'history') {
      if (RETRYABLE.has(code)) {
        // Asked again a little later (a gap must not stay a gap).
        setTimeout(() => {
          if (this.welcomed && this.rooms.get(r.view.id) === r) {
            if (ctx.purpose !== 'gap') this.updateView(r, { loadingHistory: false });
            this.requestHistory(r, ctx.before, ctx.purpose === 'gap' ? 100 : HISTORY_PAGE, ctx.purpose, ctx.downTo);
          }
        }, 1000);
        return;
      }
      this.updateView(r, { loadingHistory: false });
      this.setState({ notice: describeError(code, 'history') });
      return;
    }
    // A join failed.
    r.joining = false;
    if (RETRYABLE.has(code)) {
      r.joinTries += 1;
      const delay = Math.min(10_000, 500 * 2 ** r.joinTries) * (0.5 + this.opts.random() / 2);
      r.joinRetry = setTimeout(() => {
        r.joinRetry = null;
        if (this.welcomed && this.rooms.get(r.view.id) === r) this.queueJoin(r);
      }, delay);
      if (code !== 'rate_limited') this.setState({ notice: describeError(code, 'join') });
      return;
    }
    // The room cannot be joined at all (bad name, unknown user, someone else's DM).
    const to = r.view.peer;
    this.migrated(r.view.id);
    this.removeRoom(r.view.id);
    this.setState({ notice: describeError(code, 'join', { to }) });
  }

  private onSendError(cid: string, code: string): void {
    const p = this.findPending(cid);
    if (!p) return;
    const r = this.rooms.get(p.room);
    if (code === 'not_joined' && r && !p.to) {
      // Rejoin; the send goes out again after the join's ok.
      this.setPending(cid, { state: 'waiting' });
      this.updateView(r, { joined: false });
      this.queueJoin(r);
      return;
    }
    if (RETRYABLE.has(code)) {
      const tries = (this.sendTries.get(cid) ?? 0) + 1;
      this.sendTries.set(cid, tries);
      this.setPending(cid, { state: 'waiting', error: describeError(code, 'send') });
      const delay = Math.min(10_000, 500 * 2 ** tries) * (0.5 + this.opts.random() / 2);
      this.sendRetryTimers.set(
        cid,
        setTimeout(() => {
          this.sendRetryTimers.delete(cid);
          const again = this.findPending(cid);
          const room = again && this.rooms.get(again.room);
          if (again && room && again.state === 'waiting' && this.canTransmit(room, again)) this.transmit(again);
        }, delay),
      );
      return;
    }
    const context: ErrorContext = code === 'not_found' && p.replyTo !== undefined ? 'reply' : p.to ? 'dm' : 'send';
    this.setPending(cid, {
      state: 'failed',
      error: describeError(code, context, { maxBody: this.state.maxBody, to: p.to }),
    });
  }

  private onReadPush(room: string, seq: number): void {
    const r = this.rooms.get(room);
    if (!r || typeof seq !== 'number') return;
    if (seq > r.view.readSeq) this.updateView(r, { readSeq: seq, lastSeq: Math.max(r.view.lastSeq, seq) });
  }

  private onPresence(room: string, user: string, online: boolean): void {
    const r = this.rooms.get(room);
    if (!r) return;
    const others = r.view.members.filter((u) => u !== user);
    this.updateView(r, { members: online ? [...others, user].sort() : others });
    if (!online && r.typingUntil.delete(user)) this.updateView(r, { typing: [...r.typingUntil.keys()] });
  }

  private onTyping(room: string, user: string): void {
    const r = this.rooms.get(room);
    if (!r || user === this.state.user) return;
    r.typingUntil.set(user, Date.now() + TYPING_SHOW_MS);
    this.updateView(r, { typing: [...r.typingUntil.keys()] });
    if (r.typingTimer) clearTimeout(r.typingTimer);
    const expire = () => {
      const now = Date.now();
      for (const [u, until] of r.typingUntil) if (until <= now) r.typingUntil.delete(u);
      this.updateView(r, { typing: [...r.typingUntil.keys()] });
      const next = Math.min(...r.typingUntil.values());
      r.typingTimer = Number.isFinite(next) ? setTimeout(expire, next - now) : null;
    };
    r.typingTimer = setTimeout(expire, TYPING_SHOW_MS);
  }

  // ---- sending -------------------------------------------------------

  private canTransmit(r: RoomInternal, p: Pending): boolean {
    return this.welcomed && (p.to !== undefined || r.view.joined);
  }

  private transmit(p: Pending): void {
    const frame: ClientFrame = p.to
      ? { t: 'dm', ref: 0, to: p.to, body: p.body, cid: p.cid, reply_to: p.replyTo }
      : { t: 'send', ref: 0, room: p.room, body: p.body, cid: p.cid, reply_to: p.replyTo };
    if (this.request(frame, { kind: 'send', cid: p.cid })) this.setPending(p.cid, { state: 'sending' });
  }

  private change(frame: ChangeFrame): void {
    this.changes.set(frame.cid, { frame, state: 'waiting', tries: 0, timer: null });
    const r = this.rooms.get(frame.room);
    if (!r) return;
    this.refreshSaving(r);
    this.transmitChanges(r);
  }

  /** Which messages show "Saving…": an edit or deletion on its way. */
  private refreshSaving(r: RoomInternal): void {
    const seqs = new Set<number>();
    for (const ch of this.changes.values()) if (ch.frame.room === r.view.id && ch.frame.t !== 'react') seqs.add(ch.frame.target);
    const saving = [...seqs].sort((a, b) => a - b);
    if (!sameList(saving.map(String), r.view.saving.map(String))) this.updateView(r, { saving });
  }

  /** Sends the waiting edits, deletions and reactions of a room, if it can. */
  private transmitChanges(r: RoomInternal): void {
    if (!this.welcomed || (r.view.kind !== 'dm' && !r.view.joined)) return;
    for (const [cid, ch] of this.changes) {
      if (ch.frame.room !== r.view.id || ch.state !== 'waiting' || ch.timer) continue;
      if (this.request({ ...ch.frame, ref: 0 }, { kind: 'change', cid })) ch.state = 'sending';
    }
  }

  private onChangeAck(cid: string, ack: Extract<ServerFrame, { t: 'ack' }>): void {
    const ch = this.changes.get(cid);
    const me = this.state.user;
    if (!ch || !me) return;
    this.changes.delete(cid);
    const r = this.rooms.get(ch.frame.room);
    if (!r) return;
    this.refreshSaving(r);
    // The event as stored (its msg comes too; applying it twice is harmless).
    const f = ch.frame;
    const event: Msg = {
      room: f.room,
      seq: ack.seq,
      from: me,
      body: f.t === 'edit' ? f.body : '',
      cid: ack.cid,
      ts: ack.ts,
      kind: f.t === 'react' ? 'reaction' : f.t,
      target: f.target,
    };
    if (f.t === 'react') Object.assign(event, { emoji: f.emoji, on: f.on });
    this.note(r, [event]);
    this.applyEvents(r, [event]);
  }

  private onChangeError(cid: string, code: string): void {
    const ch = this.changes.get(cid);
    if (!ch) return;
    const r = this.rooms.get(ch.frame.room);
    if (!r) {
      this.changes.delete(cid);
      return;
    }
    ch.state = 'waiting';
    if (code === 'not_joined' && r.view.kind !== 'dm') {
      this.updateView(r, { joined: false });
      this.queueJoin(r);
      return;
    }
    if (RETRYABLE.has(code) && ch.tries < 6) {
      ch.tries += 1;
      const delay = Math.min(10_000, 500 * 2 ** ch.tries) * (0.5 + this.opts.random() / 2);
      ch.timer = setTimeout(() => {
        ch.timer = null;
        this.transmitChanges(r);
      }, delay);
      return;
    }
    this.changes.delete(cid);
    this.refreshSaving(r);
    const context: ErrorContext = ch.frame.t;
    this.setState({ notice: describeError(code, context, { maxBody: this.state.maxBody }) });
  }

  private requestHistory(r: RoomInternal, before: number, limit: number, purpose: 'initial' | 'older' | 'gap', downTo: number): void {
    if (purpose !== 'gap') this.updateView(r, { loadingHistory: true });
    const id = r.view.id;
    this.historyPacer.add(`history:${id}:${purpose}:${before}`, [this.historyBucket], () => {
      if (!this.welcomed || this.rooms.get(id) !== r) return;
      this.request({ t: 'history', ref: 0, room: id, before, limit }, { kind: 'history', room: id, purpose, downTo, before });
    });
  }

  private scheduleReads(delay: number): void {
    if (this.readTimer) return;
    this.readTimer = setTimeout(() => this.flushReads(), delay);
  }

  private flushReads(): void {
    this.readTimer = null;
    if (!this.welcomed) return;
    for (const [room, seq] of this.readQueue) {
      const wait = this.readBucket.waitMs(Date.now());
      if (wait > 0) {
        this.scheduleReads(wait);
        return;
      }
      this.readQueue.delete(room);
      if (!this.rooms.has(room) || seq <= 0) continue;
      this.readBucket.take(Date.now());
      this.request({ t: 'read', ref: 0, room, seq }, { kind: 'read', room, seq });
    }
  }

  // ---- token ---------------------------------------------------------

  private scheduleRefresh(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (!this.session) return;
    // At least a second apart, so a token that is already short-lived cannot cause a loop.
    const delay = Math.max(1000, refreshTime(this.session) - Date.now());
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.min(delay, 2 ** 31 - 1));
  }

  private async refresh(): Promise<void> {
    this.refreshTimer = null;
    if (!this.session) return;
    if (!this.password) {
      const at = new Date(this.session.expiresAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      this.setState({ notice: `Your sign-in ends at ${at}. Log out and in again to stay connected.` });
      return;
    }
    const fresh = await this.renewToken();
    if (!fresh) {
      // Try again shortly, while the old token still works.
      this.refreshTimer = setTimeout(() => void this.refresh(), 10_000);
    }
  }

  /** Logs in again with the remembered password; on success the new token
   *  is used for the next `hello` and, when connected, sent with `auth`. */
  private async renewToken(): Promise<boolean> {
    const session = this.session;
    if (!session || !this.password) return false;
    try {
      const fresh = await login(session.user, this.password, this.opts.fetch, this.opts.apiBase);
      if (this.session !== session) return false;
      this.session = fresh;
      this.save(SESSION_KEY, fresh);
      if (this.welcomed) this.request({ t: 'auth', ref: 0, token: fresh.token }, { kind: 'auth', token: fresh });
      this.scheduleRefresh();
      return true;
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'unauthorized') {
        this.signOut('Your password has changed or your account is gone. Please log in again.');
      }
      return false;
    }
  }

  // ---- state ---------------------------------------------------------

  private emptyState(user: string | null): ChatState {
    return {
      status: 'signed-out',
      user,
      rooms: {},
      roomOrder: [],
      dmOrder: [],
      active: null,
      listLoaded: false,
      features: [],
      incoming: null,
      notice: null,
      disconnectReason: null,
      reconnectAt: null,
      signedOutReason: null,
      maxBody: 4096,
    };
  }

  private roomIdAllowed(id: string): boolean {
    const me = this.state.user;
    if (!isDmRoom(id)) return isValidRoomName(id);
    const parts = id.split(':');
    return parts.length === 3 && me !== null && (parts[1] === me || parts[2] === me) && parts[1] !== parts[2];
  }

  private addRoom(id: string): RoomInternal {
    const existing = this.rooms.get(id);
    if (existing) return existing;
    const dm = isDmRoom(id);
    const r: RoomInternal = {
      view: {
        id,
        kind: dm ? 'dm' : 'room',
        peer: dm && this.state.user ? dmPeer(id, this.state.user) : undefined,
        messages: [],
        pending: [],
        members: [],
        typing: [],
        unread: 0,
        lastSeq: 0,
        readSeq: 0,
        lastTs: 0,
        last: null,
        more: true,
        loadingHistory: false,
        loaded: false,
        joined: false,
        replyTo: null,
        saving: [],
      },
      streamSeq: 0,
      resumable: false,
      follow: !dm,
      confirmed: false,
      seenGen: this.listGen,
      joining: false,
      orphans: new Map(),
      orphanCount: 0,
      typingUntil: new Map(),
      typingTimer: null,
      lastTypingSent: 0,
      joinRetry: null,
      joinTries: 0,
    };
    this.rooms.set(id, r);
    this.orderDirty = true;
    this.markDirty();
    if (r.follow) this.queueJoin(r);
    return r;
  }

  private removeRoom(id: string): void {
    const r = this.rooms.get(id);
    if (!r) return;
    if (r.typingTimer) clearTimeout(r.typingTimer);
    if (r.joinRetry) clearTimeout(r.joinRetry);
    this.rooms.delete(id);
    this.readQueue.delete(id);
    for (const [cid, ch] of this.changes) {
      if (ch.frame.room !== id) continue;
      if (ch.timer) clearTimeout(ch.timer);
      this.changes.delete(cid);
    }
    this.orderDirty = true;
    if (this.state.active === id) this.setActive(null);
    this.persistPending();
    this.markDirty();
  }

  private findMessage(r: RoomInternal, seq: number): Message | undefined {
    const i = indexOfSeq(r.view.messages, seq);
    return i >= 0 ? r.view.messages[i] : undefined;
  }

  private findPending(cid: string): Pending | undefined {
    for (const r of this.rooms.values()) {
      const p = r.view.pending.find((q) => q.cid === cid);
      if (p) return p;
    }
    return undefined;
  }

  private setPending(cid: string, changes: Partial<Pending>): void {
    const p = this.findPending(cid);
    if (!p) return;
    const r = this.rooms.get(p.room)!;
    this.updateView(r, { pending: r.view.pending.map((q) => (q.cid === cid ? { ...q, ...changes } : q)) });
  }

  private updateView(r: RoomInternal, changes: Partial<RoomView>): void {
    const view = { ...r.view, ...changes };
    view.unread = Math.max(0, view.lastSeq - view.readSeq);
    r.view = view;
    this.markDirty();
  }

  private setState(changes: Partial<ChatState>): void {
    this.state = { ...this.state, ...changes };
    this.markDirty();
  }

  private markDirty(): void {
    this.dirty = true;
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => this.flush());
  }

  /** Publishes the state once per burst of frames. */
  flush(): void {
    this.flushQueued = false;
    if (!this.dirty) return;
    this.dirty = false;
    const rooms: Record<string, RoomView> = {};
    for (const [id, r] of this.rooms) rooms[id] = r.view;
    let { roomOrder, dmOrder } = this.state;
    if (this.orderDirty) {
      this.orderDirty = false;
      const views = [...this.rooms.values()].map((r) => r.view).sort(byActivity);
      roomOrder = views.filter((v) => v.kind === 'room').map((v) => v.id);
      dmOrder = views.filter((v) => v.kind === 'dm').map((v) => v.id);
      if (sameList(roomOrder, this.state.roomOrder)) roomOrder = this.state.roomOrder;
      if (sameList(dmOrder, this.state.dmOrder)) dmOrder = this.state.dmOrder;
    }
    this.state = { ...this.state, rooms, roomOrder, dmOrder };
    for (const listener of this.listeners) listener();
  }

  // ---- storage -------------------------------------------------------

  private newCid(): string {
    const rand = Math.floor(this.opts.random() * 2 ** 48).toString(36);
    return `${Date.now().toString(36)}-${rand}-${(this.nextRef++).toString(36)}`;
  }

  private key(what: string): string {
    return `viche:${this.state.user}:${what}`;
  }

  private persistPending(): void {
    if (!this.state.user) return;
    const all: Pending[] = [];
    for (const r of this.rooms.values()) all.push(...r.view.pending);
    this.save(this.key('pending'), all);
  }

  private load<T>(key: string): T | null {
    try {
      const raw = this.opts.storage?.getItem(key);
      return raw ? (JSON.parse(raw) as T) : null;
    } catch {
      return null;
    }
  }

  private save(key: string, value: unknown): void {
    try {
      this.opts.storage?.setItem(key, JSON.stringify(value));
    } catch {
      // storage full or disabled: the session still works, it just is not remembered
    }
  }
}

/** Newest activity first; rooms without any by name. */
function byActivity(a: RoomView, b: RoomView): number {
  return b.lastTs - a.lastTs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The total unread of every conversation but `except`. */
export function totalUnread(state: ChatState, except: string | null = null): number {
  let n = 0;
  for (const [id, r] of Object.entries(state.rooms)) if (id !== except) n += r.unread;
  return n;
}

/** The `/ws` URL of the page's own server. */
export function defaultSocketUrl(loc: Location = location): string {
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
}
