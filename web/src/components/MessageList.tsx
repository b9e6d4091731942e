import { memo, useLayoutEffect, useRef } from 'react';
import type { ChatClient, Message, Pending, RoomView } from '../client';

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** Rooms whose first render with messages was measured already. */
const measured = new Set<string>();

function measureFirstRender(room: string) {
  if (measured.has(room) || typeof performance === 'undefined') return;
  const start = `viche:history:${room}`;
  if (performance.getEntriesByName(start, 'mark').length === 0) return;
  measured.add(room);
  performance.measure(`viche:first-render:${room}`, start);
  requestAnimationFrame(() => performance.measure(`viche:first-paint:${room}`, start));
}

function measureSwitch(room: string) {
  if (typeof performance === 'undefined') return;
  const start = `viche:switch:${room}`;
  if (performance.getEntriesByName(start, 'mark').length === 0) return;
  performance.measure(`viche:switch-render:${room}`, start);
  performance.clearMarks(start);
}

interface Props {
  client: ChatClient;
  room: RoomView;
  me: string;
}

export function MessageList({ client, room, me }: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const prev = useRef<{ room: string; first: number; height: number; top: number }>({ room: '', first: 0, height: 0, top: 0 });

  const first = room.messages.length ? room.messages[0].seq : 0;

  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const before = prev.current;
    if (before.room !== room.id) {
      el.scrollTop = el.scrollHeight;
      atBottom.current = true;
      measureSwitch(room.id);
    } else if (before.first && first < before.first) {
      // Older messages were added above: keep what the reader sees in place.
      el.scrollTop = el.scrollHeight - before.height + before.top;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    if (room.messages.length) measureFirstRender(room.id);
    prev.current = { room: room.id, first, height: el.scrollHeight, top: el.scrollTop };
  });

  function onScroll() {
    const el = scroller.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    prev.current = { ...prev.current, height: el.scrollHeight, top: el.scrollTop };
    if (el.scrollTop < 120 && room.more && !room.loadingHistory) client.loadOlder(room.id);
  }

  return (
    <div className="messages" ref={scroller} onScroll={onScroll}>
      {room.more && room.messages.length > 0 && (
        <button type="button" className="older" disabled={room.loadingHistory} onClick={() => client.loadOlder(room.id)}>
          {room.loadingHistory ? 'Loading…' : 'Load older'}
        </button>
      )}
      {!room.more && room.messages.length > 0 && <p className="start-of-room">This is the start of the conversation.</p>}
      {room.messages.length === 0 && room.pending.length === 0 && (
        <p className="empty">{room.loadingHistory || (!room.joined && room.more) ? 'Loading…' : 'No messages yet. Say hello!'}</p>
      )}
      <ol role="list" aria-label="Conversation" className="message-list">
        {room.messages.map((m) => (
          <MessageItem key={m.seq} message={m} mine={m.from === me} />
        ))}
        {room.pending.map((p) => (
          <PendingItem key={p.cid} pending={p} me={me} client={client} />
        ))}
      </ol>
    </div>
  );
}

const MessageItem = memo(function MessageItem({ message, mine }: { message: Message; mine: boolean }) {
  const date = new Date(message.ts);
  return (
    <li className={mine ? 'message mine' : 'message'} data-seq={message.seq}>
      <div className="meta">
        <span className="author">{message.from}</span>{' '}
        <time dateTime={date.toISOString()} title={fullFormat.format(date)}>
          {timeFormat.format(date)}
        </time>
      </div>
      <p className="body">{message.body}</p>
    </li>
  );
});

function PendingItem({ pending, me, client }: { pending: Pending; me: string; client: ChatClient }) {
  const label =
    pending.state === 'failed'
      ? `Not sent: ${pending.error ?? 'it was refused.'}`
      : pending.state === 'sending'
        ? 'Sending…'
        : pending.error
          ? `Waiting: ${pending.error}`
          : 'Waiting for the connection…';
  return (
    <li className={`message mine pending ${pending.state}`} data-cid={pending.cid} data-pending={pending.state}>
      <div className="meta">
        <span className="author">{me}</span> <span className="pending-state">{label}</span>
      </div>
      <p className="body">{pending.body}</p>
      {pending.state === 'failed' && (
        <div className="pending-actions">
          <button type="button" onClick={() => client.retry(pending.cid)}>
            Retry
          </button>
          <button type="button" className="secondary" onClick={() => client.discard(pending.cid)}>
            Discard
          </button>
        </div>
      )}
    </li>
  );
}
