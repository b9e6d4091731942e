import type { ChatClient, RoomView } from '../client';
import { indexOfSeq } from '../messages';
import { Composer } from './Composer';
import { MessageList } from './MessageList';
import { UserName } from './UserName';

interface Props {
  client: ChatClient;
  room: RoomView;
  me: string;
  features: string[];
  /** The conversation is on screen (not hidden behind the list). */
  visible: boolean;
  /** Unread messages in the other conversations (shown on the way back to the list). */
  unreadElsewhere: number;
  onBack: () => void;
  onLeave: () => void;
  onOpenDm: (user: string) => void;
}

export function typingText(users: string[]): string {
  if (users.length === 0) return '';
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}

export function ChatView({ client, room, me, features, visible, unreadElsewhere, onBack, onLeave, onOpenDm }: Props) {
  const title = room.kind === 'dm' ? `@ ${room.peer}` : `# ${room.id}`;
  const replyIndex = room.replyTo === null ? -1 : indexOfSeq(room.messages, room.replyTo);
  return (
    <section className="chat-view">
      <header className="chat-header">
        <button type="button" className="back secondary" onClick={onBack}>
          ← Back
          {unreadElsewhere > 0 && (
            <span className="badge" data-testid="unread-elsewhere">
              {unreadElsewhere}
              <span className="sr-only"> unread</span>
            </span>
          )}
        </button>
        <h2>{title}</h2>
        <button
          type="button"
          className="leave secondary"
          title={room.kind === 'dm' ? 'Remove this conversation from your list' : 'Leave this room and remove it from your list'}
          onClick={() => {
            client.leaveRoom(room.id);
            onLeave();
          }}
        >
          Leave
        </button>
      </header>
      <div className="chat-body">
        <MessageList client={client} room={room} me={me} features={features} visible={visible} onOpenDm={onOpenDm} />
        <aside className="online">
          <h3>Online ({room.members.length})</h3>
          <ul aria-label="Online">
            {room.members.map((u) => (
              <li key={u}>
                <span className="dot" aria-hidden="true" />
                {u === me ? `${u} (you)` : <UserName user={u} me={me} onOpenDm={onOpenDm} />}
              </li>
            ))}
          </ul>
        </aside>
      </div>
      <p className="typing" aria-live="polite">
        {typingText(room.typing)}
      </p>
      <Composer
        key={room.id}
        client={client}
        room={room.id}
        replyTo={room.replyTo}
        replyTarget={replyIndex >= 0 ? room.messages[replyIndex] : undefined}
      />
    </section>
  );
}
