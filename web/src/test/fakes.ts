// Test doubles: a scripted WebSocket and an in-memory Storage.
import { decode, encode } from '@msgpack/msgpack';
import type { SocketLike } from '../client';

export type Frame = Record<string, unknown> & { t: string };

export class FakeSocket implements SocketLike {
  static all: FakeSocket[] = [];
  static last(): FakeSocket {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  binaryType = '';
  readyState = 0;
  sent: Frame[] = [];
  onopen: SocketLike['onopen'] = null;
  onmessage: SocketLike['onmessage'] = null;
  onclose: SocketLike['onclose'] = null;
  onerror: SocketLike['onerror'] = null;

  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  send(data: Uint8Array | string): void {
    this.sent.push((typeof data === 'string' ? JSON.parse(data) : decode(data)) as Frame);
  }
  close(code = 1000): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code });
  }

  // ---- the server's side ----
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame: Frame): void {
    this.onmessage?.({ data: encode(frame).slice().buffer });
  }
  welcome(user = 'alice', maxBody = 4096, features: string[] = ['conversations', 'edits', 'reactions', 'replies']): void {
    this.receive({ t: 'welcome', v: 1, session: 's1', user, heartbeat_ms: 30000, max_frame: 65536, max_body: maxBody, features });
  }
  /** Answers the latest `conversations` request with `items` (one page). */
  conversations(items: Frame[] | Record<string, unknown>[] = [], more = false): void {
    this.receive({ t: 'conversations', ref: this.lastFrame('conversations').ref, items, more });
  }
  /** The frames of type `t` sent so far. */
  frames(t: string): Frame[] {
    return this.sent.filter((f) => f.t === t);
  }
  lastFrame(t: string): Frame {
    const list = this.frames(t);
    if (!list.length) throw new Error(`no ${t} frame sent; sent: ${JSON.stringify(this.sent)}`);
    return list[list.length - 1];
  }
  serverClose(code: number): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }
}

export class MemoryStorage {
  data = new Map<string, string>();
  getItem(key: string): string | null {
    return this.data.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.data.set(key, value);
  }
  removeItem(key: string): void {
    this.data.delete(key);
  }
}

/** A JWT-shaped token (unsigned) with the given times in seconds. */
export function fakeToken(user: string, iat: number, exp: number): string {
  const b64 = (v: unknown) => btoa(JSON.stringify(v)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, iat, exp })}.sig`;
}

export function msg(room: string, seq: number, from: string, body = `m${seq}`, cid = `c-${from}-${seq}`) {
  return { t: 'msg' as const, room, seq, from, body, cid, ts: 1_700_000_000_000 + seq * 1000 };
}

/** A v1.1 event: an edit, deletion or reaction of `target`. */
export function event(
  room: string,
  seq: number,
  from: string,
  kind: 'edit' | 'delete' | 'reaction',
  target: number,
  extra: { body?: string; emoji?: string; on?: boolean } = {},
) {
  return { ...msg(room, seq, from, extra.body ?? '', `e-${from}-${seq}`), kind, target, ...(extra.emoji ? { emoji: extra.emoji, on: extra.on ?? true } : {}) };
}

/** One item of a `conversations` page. */
export function conv(room: string, lastSeq: number, readSeq: number, extra: Record<string, unknown> = {}) {
  const dm = room.startsWith('dm:');
  return {
    room,
    kind: dm ? 'dm' : 'room',
    ...(dm ? { peer: 'bob' } : {}),
    last_seq: lastSeq,
    last_ts: lastSeq ? 1_700_000_000_000 + lastSeq * 1000 : 0,
    last: lastSeq ? msg(room, lastSeq, 'bob') : null,
    read_seq: readSeq,
    unread: lastSeq - readSeq,
    ...extra,
  };
}
