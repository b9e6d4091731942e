import { useState, type FormEvent } from 'react';
import type { ChatClient, ChatState } from '../client';
import { previewText } from '../messages';

interface Props {
  client: ChatClient;
  state: ChatState;
  /** The open conversation is on screen (its badge is then not shown). */
  chatVisible: boolean;
  onOpen: (room: string) => void;
}

export function Sidebar({ client, state, chatVisible, onOpen }: Props) {
  const [room, setRoom] = useState('');
  const [peer, setPeer] = useState('');
  const [roomError, setRoomError] = useState<string | null>(null);
  const [dmError, setDmError] = useState<string | null>(null);

  function join(e: FormEvent) {
    e.preventDefault();
    if (!room.trim()) return;
    const error = client.joinRoom(room);
    setRoomError(error);
    if (!error) {
      onOpen(room.trim());
      setRoom('');
    }
  }

  function start(e: FormEvent) {
    e.preventDefault();
    if (!peer.trim()) return;
    const error = client.startDm(peer);
    setDmError(error);
    if (!error) {
      const id = client.getState().active;
      if (id) onOpen(id);
      setPeer('');
    }
  }

  return (
    <aside className="sidebar">
      <section className="side-section">
        <h2>Rooms</h2>
        <form className="inline-form" onSubmit={join}>
          <label htmlFor="join-room">Room</label>
          <div className="row">
            <input
              id="join-room"
              value={room}
              onChange={(e) => setRoom(e.target.value)}
              placeholder="e.g. lobby"
              autoCapitalize="none"
              spellCheck={false}
              maxLength={64}
            />
            <button type="submit">Join</button>
          </div>
        </form>
        {roomError && (
          <p role="alert" className="error">
            {roomError}
          </p>
        )}
        <ul className="conversations" aria-label="Rooms">
          {state.roomOrder.map((id) => (
            <ConversationItem key={id} id={id} title={`# ${id}`} state={state} chatVisible={chatVisible} onOpen={onOpen} />
          ))}
        </ul>
        {!state.listLoaded && state.roomOrder.length + state.dmOrder.length === 0 && <p className="muted">Loading your conversations…</p>}
      </section>
      <section className="side-section">
        <h2>Direct messages</h2>
        <form className="inline-form" onSubmit={start}>
          <label htmlFor="dm-to">Direct message to</label>
          <div className="row">
            <input
              id="dm-to"
              value={peer}
              onChange={(e) => setPeer(e.target.value)}
              placeholder="username"
              autoCapitalize="none"
              spellCheck={false}
              maxLength={32}
            />
            <button type="submit">Start</button>
          </div>
        </form>
        {dmError && (
          <p role="alert" className="error">
            {dmError}
          </p>
        )}
        <ul className="conversations" aria-label="Direct messages">
          {state.dmOrder.map((id) => (
            <ConversationItem
              key={id}
              id={id}
              title={`@ ${state.rooms[id]?.peer ?? id}`}
              state={state}
              chatVisible={chatVisible}
              onOpen={onOpen}
            />
          ))}
        </ul>
      </section>
    </aside>
  );
}

interface ItemProps {
  id: string;
  title: string;
  state: ChatState;
  chatVisible: boolean;
  onOpen: (room: string) => void;
}

function ConversationItem({ id, title, state, chatVisible, onOpen }: ItemProps) {
  const room = state.rooms[id];
  const unread = room?.unread ?? 0;
  const active = state.active === id;
  const preview = room?.last ? previewText(room.last, state.user) : '';
  return (
    <li>
      <button
        type="button"
        className="conversation"
        aria-current={active ? 'page' : undefined}
        onClick={() => {
          performance.mark(`viche:switch:${id}`);
          onOpen(id);
        }}
      >
        <span className="conversation-top">
          <span className="conversation-name">{title}</span>
          {unread > 0 && !(active && chatVisible) && (
            <span className="badge" data-testid={`unread-${id}`}>
              {unread}
              <span className="sr-only"> unread</span>
            </span>
          )}
        </span>
        {preview && <span className="conversation-preview">{preview}</span>}
      </button>
    </li>
  );
}
