// Messages as the client keeps them, and how v1.1's events (edits,
// deletions, reactions) change them.
//
// An event is a row of its own in the room (its own seq) that names a
// `target`. History pages and replays show each target in its current
// state; live events are applied to the copy in memory. The two can arrive
// in any order (a history page is a snapshot taken while live events keep
// coming), so each message remembers what it already reflects:
// - `base`: every event with a seq up to `base` is in it (a live message:
//   its own seq; a history page: the page's newest seq, or the seq it was
//   asked before, whichever is higher);
// - per change (the body; each user's reaction with each emoji), the seq of
//   the last event applied to it.
// An event is applied only when it is newer than both, so applying events
// twice, late or out of order converges on the server's state.
import type { Msg } from './protocol';

export interface Message {
  room: string;
  seq: number;
  from: string;
  body: string;
  cid: string;
  ts: number;
  /** The seq of the message this one answers. */
  reply_to?: number;
  /** When the body was last edited (ms since the epoch). */
  edited_ts?: number;
  deleted?: boolean;
  /** The users reacting, by emoji, in the order they reacted. */
  reactions?: Record<string, string[]>;
  /** Events up to this seq are reflected (see above). */
  readonly base: number;
  /** The seq of the edit or deletion that set the body. */
  readonly bodySeq?: number;
  /** The seq of the last event for each `emoji + "\n" + user`. */
  readonly reactionSeqs?: Record<string, number>;
}

export function isEvent(m: Msg): boolean {
  return m.kind === 'edit' || m.kind === 'delete' || m.kind === 'reaction';
}

/** An ordinary message as kept in memory; `base` as above. */
export function toMessage(m: Msg, base = m.seq): Message {
  const out: Message = { room: m.room, seq: m.seq, from: m.from, body: m.body, cid: m.cid, ts: m.ts, base: Math.max(base, m.seq) };
  if (typeof m.reply_to === 'number') out.reply_to = m.reply_to;
  if (typeof m.edited_ts === 'number') out.edited_ts = m.edited_ts;
  if (m.deleted) {
    out.deleted = true;
    out.body = '';
  }
  if (m.reactions && typeof m.reactions === 'object') {
    const reactions: Record<string, string[]> = {};
    for (const [emoji, users] of Object.entries(m.reactions)) {
      if (Array.isArray(users) && users.length > 0) reactions[emoji] = users.filter((u) => typeof u === 'string');
    }
    if (Object.keys(reactions).length) out.reactions = reactions;
  }
  return out;
}

/** `target` with the event `e` applied, or `target` itself when `e` changes nothing. */
export function applyEvent(target: Message, e: Msg): Message {
  if (e.target !== target.seq || e.seq <= target.base) return target;
  switch (e.kind) {
    case 'edit':
      if (target.deleted || e.seq <= (target.bodySeq ?? 0)) return target;
      return { ...target, body: e.body, edited_ts: e.ts, bodySeq: e.seq };
    case 'delete':
      if (target.deleted) return target;
      return { ...target, body: '', deleted: true, bodySeq: e.seq };
    case 'reaction': {
      if (typeof e.emoji !== 'string' || e.emoji === '') return target;
      const key = `${e.emoji}\n${e.from}`;
      if (e.seq <= (target.reactionSeqs?.[key] ?? 0)) return target;
      const users = target.reactions?.[e.emoji] ?? [];
      const on = e.on !== false;
      const next = on ? (users.includes(e.from) ? users : [...users, e.from]) : users.filter((u) => u !== e.from);
      const reactions = { ...target.reactions, [e.emoji]: next };
      if (next.length === 0) delete reactions[e.emoji];
      return {
        ...target,
        reactions: Object.keys(reactions).length ? reactions : undefined,
        reactionSeqs: { ...target.reactionSeqs, [key]: e.seq },
      };
    }
    default:
      return target;
  }
}

/** Merges messages into a seq-ordered list, keeping each seq once (the copy already there wins). */
export function mergeMessages(list: Message[], incoming: Message[]): Message[] {
  if (incoming.length === 0) return list;
  if (incoming.length === 1) {
    const m = incoming[0];
    const last = list[list.length - 1];
    if (!last || m.seq > last.seq) return [...list, m];
  }
  const bySeq = new Map<number, Message>();
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

/** Replaces the message with `seq` (binary search: the list is in seq order). */
export function replaceMessage(list: Message[], next: Message): Message[] {
  const i = indexOfSeq(list, next.seq);
  if (i < 0 || list[i] === next) return list;
  const copy = list.slice();
  copy[i] = next;
  return copy;
}

export function indexOfSeq(list: Message[], seq: number): number {
  let lo = 0;
  let hi = list.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = list[mid].seq;
    if (s === seq) return mid;
    if (s < seq) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export interface ReactionSummary {
  emoji: string;
  count: number;
  users: string[];
  mine: boolean;
}

export function reactionSummary(m: Message, me: string | null): ReactionSummary[] {
  if (!m.reactions || m.deleted) return [];
  return Object.entries(m.reactions)
    .filter(([, users]) => users.length > 0)
    .map(([emoji, users]) => ({ emoji, count: users.length, users, mine: me !== null && users.includes(me) }));
}

/** One line about a message or event, for the conversation list and notices. */
export function previewText(m: Msg, me: string | null): string {
  const who = m.from === me ? 'You' : m.from;
  switch (m.kind) {
    case 'edit':
      return `${who} edited a message`;
    case 'delete':
      return `${who} deleted a message`;
    case 'reaction':
      return m.on === false ? `${who} took back a reaction` : `${who} reacted ${m.emoji ?? ''}`.trim();
  }
  if (m.deleted) return `${who}: message deleted`;
  const body = m.body.replace(/\s+/g, ' ').trim();
  return `${who}: ${body.length > 80 ? `${body.slice(0, 79)}…` : body}`;
}
