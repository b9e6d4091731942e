import { memo, useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import type { ChatClient, Message, Pending, RoomView } from '../client';
import { indexOfSeq, reactionSummary } from '../messages';
import { excerpt } from './excerpt';
import { UserName } from './UserName';

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** The reactions offered by "React", with their names. */
export const REACTIONS: [string, string][] = [
  ['👍', 'thumbs up'],
  ['❤️', 'heart'],
  ['😂', 'laughing'],
  ['🎉', 'party'],
  ['😮', 'surprised'],
  ['😢', 'sad'],
];

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
  features: string[];
  /** On screen: what shows counts as read. */
  visible: boolean;
  onOpenDm: (user: string) => void;
}

interface Abilities {
  edits: boolean;
  reactions: boolean;
  replies: boolean;
}

export function MessageList({ client, room, me, features, visible, onOpenDm }: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const prev = useRef<{ room: string; first: number; height: number; top: number }>({ room: '', first: 0, height: 0, top: 0 });
  const latest = useRef({ room, visible });
  latest.current = { room, visible };

  const first = room.messages.length ? room.messages[0].seq : 0;
  const edits = features.includes('edits');
  const reactions = features.includes('reactions');
  const replies = features.includes('replies');
  // One object per combination, so that memoized items stay memoized.
  const abilities = useAbilities(edits, reactions, replies);

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

  /** Moves the read marker to the newest message on screen. */
  function reportSeen() {
    const { room: r, visible: shown } = latest.current;
    const el = scroller.current;
    if (!el || !shown || !r.loaded || r.readSeq >= r.lastSeq) return;
    if (typeof document !== 'undefined' && document.visibilityState === 'hidden') return;
    let seen = 0;
    if (atBottom.current) {
      seen = r.lastSeq;
    } else {
      const bottom = el.getBoundingClientRect().bottom;
      const items = el.querySelectorAll<HTMLElement>('li[data-seq]');
      for (let i = items.length - 1; i >= 0; i--) {
        if (items[i].getBoundingClientRect().top < bottom) {
          seen = Number(items[i].dataset.seq);
          break;
        }
      }
    }
    if (seen > r.readSeq) client.markSeen(r.id, seen);
  }

  useEffect(reportSeen);
  useEffect(() => {
    const again = () => reportSeen();
    document.addEventListener('visibilitychange', again);
    window.addEventListener('focus', again);
    return () => {
      document.removeEventListener('visibilitychange', again);
      window.removeEventListener('focus', again);
    };
  }, []);

  function onScroll() {
    const el = scroller.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    prev.current = { ...prev.current, height: el.scrollHeight, top: el.scrollTop };
    if (el.scrollTop < 120 && room.more && !room.loadingHistory) client.loadOlder(room.id);
    reportSeen();
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
        <p className="empty">{room.loaded ? 'No messages yet. Say hello!' : 'Loading…'}</p>
      )}
      <ol role="list" aria-label="Conversation" className="message-list">
        {room.messages.map((m) => {
          const i = m.reply_to === undefined ? -1 : indexOfSeq(room.messages, m.reply_to);
          return (
            <MessageItem
              key={m.seq}
              message={m}
              saving={room.saving.includes(m.seq)}
              replied={i >= 0 ? room.messages[i] : null}
              me={me}
              client={client}
              abilities={abilities}
              onOpenDm={onOpenDm}
            />
          );
        })}
        {room.pending.map((p) => {
          const i = p.replyTo === undefined ? -1 : indexOfSeq(room.messages, p.replyTo);
          return <PendingItem key={p.cid} pending={p} replied={i >= 0 ? room.messages[i] : null} me={me} client={client} />;
        })}
      </ol>
    </div>
  );
}

const abilityCache = new Map<string, Abilities>();
function useAbilities(edits: boolean, reactions: boolean, replies: boolean): Abilities {
  const key = `${edits}${reactions}${replies}`;
  let a = abilityCache.get(key);
  if (!a) {
    a = { edits, reactions, replies };
    abilityCache.set(key, a);
  }
  return a;
}

interface ItemProps {
  message: Message;
  /** An edit or deletion of it is on its way. */
  saving: boolean;
  /** The message this one answers, when it is in memory. */
  replied: Message | null;
  me: string;
  client: ChatClient;
  abilities: Abilities;
  onOpenDm: (user: string) => void;
}

/** What a reply answers, quoted above it. */
function ReplyQuote({ replied }: { replied: Message | null }) {
  return (
    <div className="reply-quote">
      <span className="sr-only">In reply to </span>
      <span aria-hidden="true">↪ </span>
      {replied ? (
        <>
          <strong>{replied.from}</strong>: {replied.deleted ? 'message deleted' : excerpt(replied.body)}
        </>
      ) : (
        'an earlier message'
      )}
    </div>
  );
}

const MessageItem = memo(function MessageItem({ message, saving, replied, me, client, abilities, onOpenDm }: ItemProps) {
  const [mode, setMode] = useState<'read' | 'edit' | 'react' | 'delete'>('read');
  const reactButton = useRef<HTMLButtonElement>(null);
  const deleteButton = useRef<HTMLButtonElement>(null);
  const editButton = useRef<HTMLButtonElement>(null);
  const date = new Date(message.ts);
  const mine = message.from === me;
  const deleted = message.deleted === true;
  const summary = reactionSummary(message, me);
  const room = message.room;

  function close(focus?: HTMLButtonElement | null) {
    setMode('read');
    if (focus) requestAnimationFrame(() => focus.focus());
  }

  let className = mine ? 'message mine' : 'message';
  if (deleted) className += ' deleted';
  return (
    <li className={className} data-seq={message.seq}>
      {message.reply_to !== undefined && <ReplyQuote replied={replied} />}
      <div className="meta">
        <UserName user={message.from} me={me} onOpenDm={onOpenDm} className="author" />{' '}
        <time dateTime={date.toISOString()} title={fullFormat.format(date)}>
          {timeFormat.format(date)}
        </time>
        {message.edited_ts !== undefined && !deleted && (
          <span className="edited" title={`Edited ${fullFormat.format(new Date(message.edited_ts))}`}>
            {' '}
            (edited)
          </span>
        )}
        {saving && <span className="pending-state"> Saving…</span>}
        {!deleted && (
          <span className="actions">
            {abilities.replies && (
              <button type="button" className="action" onClick={() => client.setReplyTo(room, message.seq)}>
                Reply
              </button>
            )}
            {abilities.reactions && (
              <button
                type="button"
                className="action"
                ref={reactButton}
                aria-expanded={mode === 'react'}
                onClick={() => setMode(mode === 'react' ? 'read' : 'react')}
              >
                React
              </button>
            )}
            {abilities.edits && mine && (
              <button type="button" className="action" ref={editButton} aria-expanded={mode === 'edit'} onClick={() => setMode('edit')}>
                Edit
              </button>
            )}
            {abilities.edits && mine && (
              <button
                type="button"
                className="action"
                ref={deleteButton}
                aria-expanded={mode === 'delete'}
                onClick={() => setMode(mode === 'delete' ? 'read' : 'delete')}
              >
                Delete
              </button>
            )}
          </span>
        )}
      </div>
      {mode === 'edit' ? (
        <EditForm client={client} message={message} onDone={() => close(editButton.current)} />
      ) : (
        <p className="body">{deleted ? <em>message deleted</em> : message.body}</p>
      )}
      {mode === 'delete' && (
        <ConfirmDelete
          onConfirm={() => {
            client.deleteMessage(room, message.seq);
            close(deleteButton.current);
          }}
          onCancel={() => close(deleteButton.current)}
        />
      )}
      {mode === 'react' && (
        <ReactionPicker
          onPick={(emoji) => {
            const current = summary.find((s) => s.emoji === emoji);
            client.react(room, message.seq, emoji, !current?.mine);
            close(reactButton.current);
          }}
          onCancel={() => close(reactButton.current)}
        />
      )}
      {summary.length > 0 && (
        <div className="reactions" role="group" aria-label="Reactions">
          {summary.map((s) => (
            <button
              key={s.emoji}
              type="button"
              className="reaction"
              aria-pressed={s.mine}
              aria-label={`${s.emoji} ${s.count}`}
              title={`${s.users.join(', ')}${s.mine ? ' (click to take yours back)' : ''}`}
              onClick={() => client.react(room, message.seq, s.emoji, !s.mine)}
            >
              {s.emoji} <span className="count">{s.count}</span>
            </button>
          ))}
        </div>
      )}
    </li>
  );
});

function EditForm({ client, message, onDone }: { client: ChatClient; message: Message; onDone: () => void }) {
  const [text, setText] = useState(message.body);
  const [error, setError] = useState<string | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    const el = input.current;
    if (!el) return;
    el.focus();
    el.setSelectionRange(el.value.length, el.value.length);
  }, []);

  function save(e?: FormEvent) {
    e?.preventDefault();
    const problem = client.edit(message.room, message.seq, text);
    if (problem) setError(problem);
    else onDone();
  }

  function onKeyDown(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      save();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      onDone();
    }
  }

  return (
    <form className="edit-form" onSubmit={save}>
      <textarea ref={input} aria-label="Edit message" value={text} rows={2} onChange={(e) => setText(e.target.value)} onKeyDown={onKeyDown} />
      <div className="edit-buttons">
        <button type="submit" className="small">
          Save
        </button>
        <button type="button" className="secondary small" onClick={onDone}>
          Cancel
        </button>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
    </form>
  );
}

function ConfirmDelete({ onConfirm, onCancel }: { onConfirm: () => void; onCancel: () => void }) {
  const yes = useRef<HTMLButtonElement>(null);
  useEffect(() => yes.current?.focus(), []);
  return (
    <div
      className="confirm"
      role="group"
      aria-label="Delete this message?"
      onKeyDown={(e) => {
        if (e.key === 'Escape') onCancel();
      }}
    >
      <span>Delete this message for everyone?</span>
      <button type="button" className="small danger" ref={yes} onClick={onConfirm}>
        Yes, delete
      </button>
      <button type="button" className="secondary small" onClick={onCancel}>
        Keep it
      </button>
    </div>
  );
}

function ReactionPicker({ onPick, onCancel }: { onPick: (emoji: string) => void; onCancel: () => void }) {
  const firstButton = useRef<HTMLButtonElement>(null);
  useEffect(() => firstButton.current?.focus(), []);
  return (
    <div
      className="picker"
      role="group"
      aria-label="Choose a reaction"
      onKeyDown={(e) => {
        if (e.key === 'Escape') onCancel();
      }}
    >
      {REACTIONS.map(([emoji, name], i) => (
        <button key={emoji} type="button" className="secondary small" ref={i === 0 ? firstButton : undefined} aria-label={`${emoji} ${name}`} title={name} onClick={() => onPick(emoji)}>
          {emoji}
        </button>
      ))}
      <button type="button" className="secondary small" onClick={onCancel}>
        Cancel
      </button>
    </div>
  );
}

function PendingItem({ pending, replied, me, client }: { pending: Pending; replied: Message | null; me: string; client: ChatClient }) {
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
      {pending.replyTo !== undefined && <ReplyQuote replied={replied} />}
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
