import type { ChatClient, RoomView } from '../client';
import { Composer } from './Composer';
import { MessageList } from './MessageList';

interface Props {
  client: ChatClient;
  room: RoomView;
  me: string;
  onBack: () => void;
}

export function typingText(users: string[]): string {
  if (users.length === 0) return '';
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}

export function ChatView({ client, room, me, onBack }: Props) {
  const title = room.kind === 'dm' ? `@ ${room.peer}` : `# ${room.id}`;
  return (
    <section className="chat-view">
      <header className="chat-header">
        <button type="button" className="back secondary" onClick={onBack}>
          ← Back
        </button>
        <h2>{title}</h2>
        <button type="button" className="leave secondary" onClick={() => client.leaveRoom(room.id)}>
          Leave
        </button>
      </header>
      <div className="chat-body">
        <MessageList client={client} room={room} me={me} />
        <aside className="online">
          <h3>Online ({room.members.length})</h3>
          <ul aria-label="Online">
            {room.members.map((u) => (
              <li key={u}>
                <span className="dot" aria-hidden="true" />
                {u}
                {u === me ? ' (you)' : ''}
              </li>
            ))}
          </ul>
        </aside>
      </div>
      <p className="typing" aria-live="polite">
        {typingText(room.typing)}
      </p>
      <Composer key={room.id} client={client} room={room.id} />
    </section>
  );
}
