// Frames of the Viche wire protocol v1 (docs/protocol.md), as this client
// speaks them: MessagePack maps over binary WebSocket messages.
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

export interface Msg {
  t?: 'msg';
  room: string;
  seq: number;
  from: string;
  body: string;
  cid: string;
  ts: number;
}

export type ClientFrame =
  | { t: 'hello'; v: number; token: string }
  | { t: 'auth'; ref: number; token: string }
  | { t: 'join'; ref: number; room: string; since?: number }
  | { t: 'leave'; ref: number; room: string }
  | { t: 'send'; ref: number; room: string; body: string; cid: string }
  | { t: 'dm'; ref: number; to: string; body: string; cid: string }
  | { t: 'typing'; room: string }
  | { t: 'history'; ref: number; room: string; before?: number; limit?: number }
  | { t: 'ping'; ref: number };

export type ServerFrame =
  | { t: 'welcome'; v: number; session: string; user: string; heartbeat_ms: number; max_frame: number; max_body: number }
  | { t: 'ok'; ref: number; room?: string; seq?: number; members?: string[]; more?: boolean }
  | { t: 'ack'; ref: number; room: string; seq: number; cid: string; ts: number }
  | ({ t: 'msg' } & Msg)
  | { t: 'presence'; room: string; user: string; online: boolean }
  | { t: 'typing'; room: string; user: string }
  | { t: 'history'; ref: number; room: string; messages: Msg[]; more: boolean }
  | { t: 'error'; ref?: number; code: string; message: string }
  | { t: 'pong'; ref: number };

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
