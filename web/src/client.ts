// The chat client: one WebSocket to viche, kept honest across reconnects.
//
// - Reconnects with exponential backoff and jitter; each room is resumed
//   with `join since` = the last seq seen on that room's stream, so the
//   server replays exactly what was missed (messages are kept by seq, so a
//   message is never shown twice).
// - A send is pending until its `ack`; after a reconnect it is sent again
//   with the same `cid`, which the server deduplicates.
// - The token is refreshed (log in again, then `auth`) before it expires.
//
// React reads it through `subscribe` / `getState` (useSyncExternalStore).
import { login, refreshTime, type Session } from './api';
import { describeClose, describeError } from './errors';
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
  type Msg,
  type ServerFrame,
} from './protocol';

export type Message = Msg;

export type PendingState = 'waiting' | 'sending' | 'failed';

export interface Pending {
  cid: string;
  room: string;
  /** Set for a direct message: sent with `dm` to this user. */
  to?: string;
  body: string;
  state: PendingState;
  error?: string;
  createdAt: number;
}

export interface RoomView {
  id: string;
  kind: 'room' | 'dm';
  /** The other user of a DM. */
  peer?: string;
  /** Stored messages, in seq order, each seq once. */
  messages: Message[];
  /** Sends not yet acknowledged, oldest first. */
  pending: Pending[];
  members: string[];
  typing: string[];
  unread: number;
  /** Older messages can be loaded with `history`. */
  more: boolean;
  loadingHistory: boolean;
  /** Subscribed on the current connection. */
  joined: boolean;
}

export type Status = 'signed-out' | 'connecting' | 'online' | 'reconnecting';

export interface ChatState {
  status: Status;
  user: string | null;
  rooms: Record<string, RoomView>;
  /** Public rooms, in the order they were joined. */
  roomOrder: string[];
  /** DM rooms, most recently active first. */
  dmOrder: string[];
  active: string | null;
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
}

interface RoomInternal {
  view: RoomView;
  /** Highest seq received on this room's stream: the `since` of a resume. */
  lastSeq: number;
  /** Joined at least once, so `lastSeq` is meaningful. */
  resumable: boolean;
  lastRead: number | null;
  typingUntil: Map<string, number>;
  typingTimer: ReturnType<typeof setTimeout> | null;
  lastTypingSent: number;
  joinRetry: ReturnType<typeof setTimeout> | null;
  joinTries: number;
}

type Inflight =
  | { kind: 'join'; room: string; since?: number }
  | { kind: 'leave'; room: string }
  | { kind: 'send'; cid: string }
  | { kind: 'history'; room: string; purpose: 'initial' | 'older' | 'gap'; downTo: number }
  | { kind: 'auth'; token: Session }
  | { kind: 'other' };

const SESSION_KEY = 'viche:session';
const HISTORY_PAGE = 50;
const TYPING_SHOW_MS = 5000;
const TYPING_SEND_EVERY_MS = 2500;
const REPLAY_MAX = 1000;
const OPEN = 1;

export class ChatClient {
  private readonly opts: Required<Omit<ClientOptions, 'storage'>> & { storage: ClientOptions['storage'] };
  private listeners = new Set<() => void>();
  private state: ChatState;
  private rooms = new Map<string, RoomInternal>();
  private dirty = false;
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

  constructor(options: ClientOptions) {
    this.opts = {
      createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
      fetch: (...args) => fetch(...args),
      apiBase: '',
      random: Math.random,
      backoffBaseMs: 500,
      backoffMaxMs: 15_000,
      helloTimeoutMs: 10_000,
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

  // ---- session -------------------------------------------------------

  /** Starts a session: connects and rejoins the user's rooms. `password`
   *  (kept in memory only) lets the client renew the token by itself. */
  start(session: Session, password?: string): void {
    this.stop();
    this.session = session;
    this.password = password ?? null;
    this.save(SESSION_KEY, session);
    this.rooms.clear();
    this.state = { ...this.emptyState(session.user), status: 'connecting' };
    const saved = this.load<{ rooms?: string[]; dms?: string[]; active?: string }>(this.key('rooms')) ?? {};
    const read = this.load<Record<string, number>>(this.key('read')) ?? {};
    for (const id of [...(saved.rooms ?? []), ...(saved.dms ?? [])]) {
      if (this.roomIdAllowed(id)) this.addRoom(id, read[id] ?? null);
    }
    for (const p of this.load<Pending[]>(this.key('pending')) ?? []) {
      const r = this.rooms.get(p.room);
      if (r && typeof p.cid === 'string' && typeof p.body === 'string') {
        r.view.pending = [...r.view.pending, { ...p, state: p.state === 'failed' ? 'failed' : 'waiting' }];
      }
    }
    const active = saved.active && this.rooms.has(saved.active) ? saved.active : (this.state.roomOrder[0] ?? this.state.dmOrder[0] ?? null);
    this.state = { ...this.state, active };
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

  /** Shows `room`, adding (and joining) it first if it is new. */
  private open(room: string): void {
    if (!this.rooms.has(room)) {
      this.addRoom(room, null);
      this.persistRooms();
      if (this.welcomed) this.sendJoin(this.rooms.get(room)!);
    }
    this.setActive(room);
  }

  leaveRoom(id: string): void {
    const r = this.rooms.get(id);
    if (!r) return;
    if (this.welcomed && r.view.joined) this.request({ t: 'leave', ref: 0, room: id }, { kind: 'leave', room: id });
    this.removeRoom(id);
  }

  setActive(id: string | null): void {
    if (id !== null && !this.rooms.has(id)) return;
    this.state = { ...this.state, active: id };
    if (id) this.markRead(this.rooms.get(id)!);
    this.persistRooms();
    this.markDirty();
  }

  /** Pages in older messages of a room. */
  loadOlder(id: string): void {
    const r = this.rooms.get(id);
    if (!r || !r.view.more || r.view.loadingHistory || !this.welcomed) return;
    const before = r.view.messages.length ? r.view.messages[0].seq : r.lastSeq + 1;
    if (before <= 1) {
      this.updateView(r, { more: false });
      return;
    }
    this.requestHistory(r, before, HISTORY_PAGE, 'older', 0);
  }

  // ---- messages ------------------------------------------------------

  /** Sends `body` to a room; it shows as pending until acknowledged.
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
    this.updateView(r, { pending: [...r.view.pending, p] });
    this.persistPending();
    if (this.canTransmit(r, p)) this.transmit(p);
    this.bumpDm(r);
    return null;
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
    for (const t of this.sendRetryTimers.values()) clearTimeout(t);
    this.sendRetryTimers.clear();
    for (const r of this.rooms.values()) {
      if (r.joinRetry) clearTimeout(r.joinRetry);
      r.joinRetry = null;
      r.typingUntil.clear();
      this.updateView(r, {
        joined: false,
        loadingHistory: false,
        typing: [],
        pending: r.view.pending.map((p) => (p.state === 'sending' ? { ...p, state: 'waiting' as const } : p)),
      });
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
        this.onWelcome(frame.max_body);
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
      case 'ok':
      case 'ack':
      case 'history':
      case 'error':
      case 'pong': {
        const ctx = frame.ref !== undefined ? this.inflight.get(frame.ref) : undefined;
        if (frame.ref !== undefined) this.inflight.delete(frame.ref);
        if (frame.t === 'ack') this.onAck(frame);
        else if (frame.t === 'error') this.onError(frame.code, ctx);
        else if (ctx && frame.t === 'ok') this.onOk(frame, ctx);
        else if (ctx && frame.t === 'history' && ctx.kind === 'history') this.onHistory(frame.messages, frame.more, ctx);
        return;
      }
    }
  }

  private onWelcome(maxBody: number): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.welcomed = true;
    this.attempt = 0;
    this.setState({ status: 'online', disconnectReason: null, reconnectAt: null, maxBody: maxBody || this.state.maxBody });
    for (const r of this.rooms.values()) this.sendJoin(r);
    // Direct messages need no join: send what is waiting right away.
    for (const r of this.rooms.values()) for (const p of r.view.pending) if (p.to && p.state === 'waiting') this.transmit(p);
  }

  private sendJoin(r: RoomInternal): void {
    const since = r.resumable ? r.lastSeq : undefined;
    this.request({ t: 'join', ref: 0, room: r.view.id, since }, { kind: 'join', room: r.view.id, since });
  }

  private onOk(frame: Extract<ServerFrame, { t: 'ok' }>, ctx: Inflight): void {
    if (ctx.kind === 'join') {
      const r = this.rooms.get(ctx.room);
      if (!r) return;
      r.joinTries = 0;
      const seq = frame.seq ?? 0;
      this.updateView(r, { joined: true, members: [...(frame.members ?? [])].sort() });
      if (ctx.since === undefined) {
        // A first join: live messages start after `seq`; the page before it comes from history.
        r.resumable = true;
        r.lastSeq = Math.max(r.lastSeq, seq);
        if (r.lastRead === null) {
          r.lastRead = seq;
          this.persistRead();
        }
        if (seq > 0) this.requestHistory(r, seq + 1, HISTORY_PAGE, 'initial', 0);
        else this.updateView(r, { more: false });
      } else if (frame.more) {
        // The replay holds only the newest 1000 missed; page in the rest.
        this.requestHistory(r, seq - REPLAY_MAX + 1, 100, 'gap', ctx.since);
      }
      for (const p of r.view.pending) if (!p.to && p.state === 'waiting') this.transmit(p);
    } else if (ctx.kind === 'auth') {
      this.session = ctx.token;
      this.save(SESSION_KEY, ctx.token);
      this.scheduleRefresh();
    }
  }

  private onMsg(m: Msg): void {
    let r = this.rooms.get(m.room);
    if (!r) {
      if (!isDmRoom(m.room) || !this.roomIdAllowed(m.room)) return;
      // Someone started a conversation with us: list it and follow it.
      r = this.addRoom(m.room, 0);
      this.persistRooms();
      if (this.welcomed) this.sendJoin(r);
    }
    if (r.view.joined && m.seq > r.lastSeq) r.lastSeq = m.seq;
    const message: Msg = { room: m.room, seq: m.seq, from: m.from, body: m.body, cid: m.cid, ts: m.ts };
    const changes: Partial<RoomView> = { messages: mergeMessages(r.view.messages, [message]) };
    if (m.from === this.state.user && r.view.pending.some((p) => p.cid === m.cid)) {
      changes.pending = r.view.pending.filter((p) => p.cid !== m.cid);
    }
    if (r.typingUntil.delete(m.from)) changes.typing = [...r.typingUntil.keys()];
    this.updateView(r, changes);
    if (changes.pending) this.persistPending();
    if (this.state.active === r.view.id) this.markRead(r);
    this.bumpDm(r);
  }

  private onAck(ack: Extract<ServerFrame, { t: 'ack' }>): void {
    const p = this.findPending(ack.cid);
    const user = this.state.user;
    if (!p || !user) return;
    this.sendTries.delete(p.cid);
    const r = this.rooms.get(p.room)!;
    const target = this.rooms.get(ack.room) ?? r;
    const stored: Msg = { room: ack.room, seq: ack.seq, from: user, body: p.body, cid: ack.cid, ts: ack.ts };
    this.updateView(r, { pending: r.view.pending.filter((q) => q.cid !== p.cid) });
    if (target.view.id === ack.room) {
      this.updateView(target, { messages: mergeMessages(target.view.messages, [stored]) });
      if (this.state.active === target.view.id) this.markRead(target);
    }
    this.persistPending();
  }

  private onHistory(messages: Msg[], more: boolean, ctx: Extract<Inflight, { kind: 'history' }>): void {
    const r = this.rooms.get(ctx.room);
    if (!r) return;
    if (ctx.purpose === 'initial' && typeof performance !== 'undefined') performance.mark(`viche:history:${ctx.room}`);
    const page = messages.map((m) => ({ room: m.room, seq: m.seq, from: m.from, body: m.body, cid: m.cid, ts: m.ts }));
    const merged = mergeMessages(r.view.messages, page);
    if (ctx.purpose === 'gap') {
      this.updateView(r, { messages: merged });
      const lowest = page.length ? Math.min(...page.map((m) => m.seq)) : 0;
      if (more && lowest > ctx.downTo + 1) this.requestHistory(r, lowest, 100, 'gap', ctx.downTo);
      return;
    }
    this.updateView(r, { messages: merged, more, loadingHistory: false });
    if (this.state.active === r.view.id) this.markRead(r);
  }

  private onError(code: string, ctx: Inflight | undefined): void {
    if (!ctx || ctx.kind === 'other' || ctx.kind === 'leave') {
      this.setState({ notice: describeError(code, 'session') });
      return;
    }
    if (ctx.kind === 'send') {
      this.onSendError(ctx.cid, code);
      return;
    }
    if (ctx.kind === 'auth') {
      this.setState({ notice: describeError(code, 'session') });
      return;
    }
    const r = this.rooms.get(ctx.room);
    if (!r) return;
    if (ctx.kind === 'history') {
      this.updateView(r, { loadingHistory: false });
      this.setState({ notice: describeError(code, 'history') });
      return;
    }
    // A join failed.
    if (code === 'rate_limited' || code === 'overloaded' || code === 'internal') {
      r.joinTries += 1;
      const delay = Math.min(10_000, 500 * 2 ** r.joinTries) * (0.5 + this.opts.random() / 2);
      r.joinRetry = setTimeout(() => {
        r.joinRetry = null;
        if (this.welcomed && this.rooms.get(r.view.id) === r) this.sendJoin(r);
      }, delay);
      this.setState({ notice: describeError(code, 'join') });
      return;
    }
    // The room cannot be joined at all (bad name, unknown user, someone else's DM).
    const to = r.view.peer;
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
      if (this.welcomed) this.sendJoin(r);
      return;
    }
    if (code === 'rate_limited' || code === 'overloaded' || code === 'internal') {
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
    this.setPending(cid, {
      state: 'failed',
      error: describeError(code, p.to ? 'dm' : 'send', { maxBody: this.state.maxBody, to: p.to }),
    });
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
      ? { t: 'dm', ref: 0, to: p.to, body: p.body, cid: p.cid }
      : { t: 'send', ref: 0, room: p.room, body: p.body, cid: p.cid };
    if (this.request(frame, { kind: 'send', cid: p.cid })) this.setPending(p.cid, { state: 'sending' });
  }

  private requestHistory(r: RoomInternal, before: number, limit: number, purpose: 'initial' | 'older' | 'gap', downTo: number): void {
    if (purpose !== 'gap') this.updateView(r, { loadingHistory: true });
    this.request({ t: 'history', ref: 0, room: r.view.id, before, limit }, { kind: 'history', room: r.view.id, purpose, downTo });
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

  private addRoom(id: string, lastRead: number | null): RoomInternal {
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
        more: true,
        loadingHistory: false,
        joined: false,
      },
      lastSeq: 0,
      resumable: false,
      lastRead,
      typingUntil: new Map(),
      typingTimer: null,
      lastTypingSent: 0,
      joinRetry: null,
      joinTries: 0,
    };
    this.rooms.set(id, r);
    if (dm) this.state = { ...this.state, dmOrder: [id, ...this.state.dmOrder] };
    else this.state = { ...this.state, roomOrder: [...this.state.roomOrder, id] };
    this.markDirty();
    return r;
  }

  private removeRoom(id: string): void {
    const r = this.rooms.get(id);
    if (!r) return;
    if (r.typingTimer) clearTimeout(r.typingTimer);
    if (r.joinRetry) clearTimeout(r.joinRetry);
    this.rooms.delete(id);
    const roomOrder = this.state.roomOrder.filter((x) => x !== id);
    const dmOrder = this.state.dmOrder.filter((x) => x !== id);
    const active = this.state.active === id ? (roomOrder[0] ?? dmOrder[0] ?? null) : this.state.active;
    this.state = { ...this.state, roomOrder, dmOrder, active };
    this.persistRooms();
    this.persistPending();
    this.markDirty();
  }

  /** Moves a DM conversation to the top of the list. */
  private bumpDm(r: RoomInternal): void {
    if (r.view.kind !== 'dm' || this.state.dmOrder[0] === r.view.id) return;
    this.state = { ...this.state, dmOrder: [r.view.id, ...this.state.dmOrder.filter((x) => x !== r.view.id)] };
    this.persistRooms();
    this.markDirty();
  }

  private markRead(r: RoomInternal): void {
    const last = r.view.messages.length ? r.view.messages[r.view.messages.length - 1].seq : 0;
    if (r.lastRead === null || last > r.lastRead) {
      r.lastRead = Math.max(last, r.lastRead ?? 0);
      this.persistRead();
      this.updateView(r, {});
    }
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
    const me = this.state.user;
    const lastRead = r.lastRead ?? Number.MAX_SAFE_INTEGER;
    let unread = 0;
    for (let i = view.messages.length - 1; i >= 0 && view.messages[i].seq > lastRead; i--) {
      if (view.messages[i].from !== me) unread++;
    }
    view.unread = unread;
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
    this.state = { ...this.state, rooms };
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

  private persistRooms(): void {
    if (!this.state.user) return;
    this.save(this.key('rooms'), { rooms: this.state.roomOrder, dms: this.state.dmOrder, active: this.state.active });
  }

  private persistRead(): void {
    if (!this.state.user) return;
    const read: Record<string, number> = {};
    for (const [id, r] of this.rooms) if (r.lastRead !== null) read[id] = r.lastRead;
    this.save(this.key('read'), read);
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

/** Merges messages into a seq-ordered list, keeping each seq once. */
export function mergeMessages(list: Msg[], incoming: Msg[]): Msg[] {
  if (incoming.length === 0) return list;
  if (incoming.length === 1) {
    const m = incoming[0];
    const last = list[list.length - 1];
    if (!last || m.seq > last.seq) return [...list, m];
  }
  const bySeq = new Map<number, Msg>();
  for (const m of list) bySeq.set(m.seq, m);
  let added = false;
  for (const m of incoming) {
    if (!bySeq.has(m.seq)) {
      bySeq.set(m.seq, m);
      added = true;
    }
  }
  if (!added) return list;
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/** The `/ws` URL of the page's own server. */
export function defaultSocketUrl(loc: Location = location): string {
  return `${loc.protocol === 'https:' ? 'wss:' : 'ws:'}//${loc.host}/ws`;
}
