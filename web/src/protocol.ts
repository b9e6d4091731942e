// Frames of the Viche wire protocol v1 (docs/protocol.md) with the
// compatible additions of v1.1 (conversations, read markers, edits,
// deletions, reactions, replies), as this client speaks them: MessagePack
// maps over binary WebSocket messages.
import { decode, encode } from '@msgpack/msgpack';

export const PROTOCOL_VERSION = 1;

/** Every error code of docs/protocol.md, "Error codes". */
export const ERROR_CODES = [
  'bad_frame',
  'unauthorized',
  'forbidden',
  'not_found',
  'not_joined',
  'invalid',
  'too_large',
  'rate_limited',
  'conflict',
  'overloaded',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** What kind of event a `msg` is (v1.1); absent for an ordinary message. */
export type MsgKind = 'edit' | 'delete' | 'reaction';

export interface Msg {
  t?: 'msg';
  room: string;
  seq: number;
  from: string;
  body: string;
  cid: string;
  ts: number;
  /** v1.1: an edit, deletion or reaction of `target`. */
  kind?: MsgKind;
  target?: number;
  /** v1.1: the seq of the ordinary message this one answers. */
  reply_to?: number;
  emoji?: string;
  on?: boolean;
  /** v1.1, in history and replays: the target's current state. */
  edited_ts?: number;
  deleted?: boolean;
  reactions?: Record<string, string[]>;
}

/** v1.1: one of the user's conversations, as `conversations` lists them. */
export interface Conversation {
  room: string;
  kind: 'room' | 'dm';
  peer?: string;
  last_seq: number;
  last_ts: number;
  last: Msg | null;
  read_seq: number;
  unread: number;
}

export type ClientFrame =
  | { t: 'hello'; v: number; token: string }
  | { t: 'auth'; ref: number; token: string }
  | { t: 'join'; ref: number; room: string; since?: number }
  | { t: 'leave'; ref: number; room: string; forget?: boolean }
  | { t: 'send'; ref: number; room: string; body: string; cid: string; reply_to?: number }
  | { t: 'dm'; ref: number; to: string; body: string; cid: string; reply_to?: number }
  | { t: 'edit'; ref: number; room: string; target: number; body: string; cid: string }
  | { t: 'delete'; ref: number; room: string; target: number; cid: string }
  | { t: 'react'; ref: number; room: string; target: number; emoji: string; on: boolean; cid: string }
  | { t: 'read'; ref: number; room: string; seq: number }
  | { t: 'conversations'; ref: number; before?: number; limit?: number }
  | { t: 'typing'; room: string }
  | { t: 'history'; ref: number; room: string; before?: number; limit?: number }
  | { t: 'ping'; ref: number };

export type ServerFrame =
  | { t: 'welcome'; v: number; session: string; user: string; heartbeat_ms: number; max_frame: number; max_body: number; features?: string[] }
  | { t: 'ok'; ref: number; room?: string; seq?: number; members?: string[]; more?: boolean }
  | { t: 'ack'; ref: number; room: string; seq: number; cid: string; ts: number }
  | ({ t: 'msg' } & Msg)
  | { t: 'presence'; room: string; user: string; online: boolean }
  | { t: 'typing'; room: string; user: string }
  | { t: 'history'; ref: number; room: string; messages: Msg[]; more: boolean }
  | { t: 'error'; ref?: number; code: string; message: string }
  | { t: 'pong'; ref: number }
  | { t: 'read'; room: string; seq: number }
  | { t: 'conversations'; ref: number; items: Conversation[]; more: boolean };

export function encodeFrame(frame: ClientFrame): Uint8Array {
  return encode(frame, { ignoreUndefined: true });
}

/** Decodes one server frame (binary MessagePack or JSON text); `null` when it is not a frame. */
export function decodeFrame(data: ArrayBuffer | Uint8Array | string): ServerFrame | null {
  try {
    const value: unknown = typeof data === 'string' ? JSON.parse(data) : decode(data instanceof Uint8Array ? data : new Uint8Array(data));
    if (value && typeof value === 'object' && typeof (value as { t?: unknown }).t === 'string') {
      return value as ServerFrame;
    }
  } catch {
    // fall through
  }
  return null;
}

const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;
const ROOM = /^[A-Za-z0-9_.-]{1,64}$/;

export function isValidUsername(name: string): boolean {
  return USERNAME.test(name);
}

export function isValidRoomName(name: string): boolean {
  return ROOM.test(name);
}

export function isDmRoom(room: string): boolean {
  return room.startsWith('dm:');
}

/** The DM room id of two users: `dm:` + both usernames in byte order. */
export function dmRoomId(a: string, b: string): string {
  // Usernames are ASCII, so UTF-16 order is byte order.
  const [x, y] = a < b ? [a, b] : [b, a];
  return `dm:${x}:${y}`;
}

/** The other user of a DM room, seen by `me`. */
export function dmPeer(room: string, me: string): string {
  const [, a, b] = room.split(':');
  return a === me ? b : a;
}

export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}
