import { useCallback, useEffect, useState, useSyncExternalStore } from 'react';
import { totalUnread, type ChatClient, type ChatState } from './client';
import { AuthScreen } from './components/AuthScreen';
import { ChatView } from './components/ChatView';
import { Sidebar } from './components/Sidebar';

export function App({ client }: { client: ChatClient }) {
  const state = useSyncExternalStore(client.subscribe, client.getState);

  useEffect(() => {
    const saved = client.savedSession();
    if (saved && client.getState().status === 'signed-out') client.start(saved);
    const online = () => client.reconnectNow();
    window.addEventListener('online', online);
    return () => window.removeEventListener('online', online);
  }, [client]);

  if (state.status === 'signed-out' || !state.user) {
    return <AuthScreen reason={state.signedOutReason} onSession={(session, password) => client.start(session, password)} />;
  }
  return <ChatScreen client={client} state={state} />;
}

/** Below this width one pane shows at a time (styles.css says the same). */
const NARROW = '(max-width: 700px)';

function useMediaQuery(query: string): boolean {
  const get = () => typeof window !== 'undefined' && typeof window.matchMedia === 'function' && window.matchMedia(query).matches;
  const [matches, setMatches] = useState(get);
  useEffect(() => {
    if (typeof window.matchMedia !== 'function') return;
    const list = window.matchMedia(query);
    const update = () => setMatches(list.matches);
    update();
    list.addEventListener('change', update);
    return () => list.removeEventListener('change', update);
  }, [query]);
  return matches;
}

function ChatScreen({ client, state }: { client: ChatClient; state: ChatState }) {
  // On a narrow screen only one pane shows: the list, or the open conversation.
  const [pane, setPane] = useState<'list' | 'chat'>(state.active ? 'chat' : 'list');
  const narrow = useMediaQuery(NARROW);
  const room = state.active ? state.rooms[state.active] : undefined;
  const user = state.user!;
  const chatVisible = room !== undefined && (!narrow || pane === 'chat');
  const elsewhere = totalUnread(state, chatVisible ? state.active : null);

  useEffect(() => {
    document.title = elsewhere > 0 ? `(${elsewhere}) Viche` : 'Viche';
  }, [elsewhere]);

  const open = useCallback(
    (id: string) => {
      client.setActive(id);
      setPane('chat');
    },
    [client],
  );
  const openDm = useCallback(
    (peer: string) => {
      if (client.startDm(peer) === null) setPane('chat');
    },
    [client],
  );

  // A message in another conversation, while the list is hidden: say who wrote.
  const incoming = state.incoming;
  const showIncoming = incoming !== null && narrow && chatVisible && incoming.room !== state.active && state.rooms[incoming.room] !== undefined;
  useEffect(() => {
    if (!incoming) return;
    const timer = setTimeout(() => client.dismissIncoming(), 8000);
    return () => clearTimeout(timer);
  }, [client, incoming]);

  return (
    <div className="app" data-pane={room && pane === 'chat' ? 'chat' : 'list'}>
      <header className="topbar">
        <span className="brand">Viche</span>
        <ConnectionStatus client={client} state={state} />
        <span className="whoami">
          Signed in as <strong>{user}</strong>
        </span>
        <button type="button" className="secondary" onClick={() => client.signOut()}>
          Log out
        </button>
      </header>
      {state.notice && (
        <div role="alert" className="notice">
          <span>{state.notice}</span>
          <button type="button" className="secondary" onClick={() => client.dismissNotice()}>
            Dismiss
          </button>
        </div>
      )}
      <div className="incoming-area" aria-live="polite">
        {showIncoming && (
          <div className="incoming" data-testid="incoming">
            <span className="incoming-text">
              <strong>
                New message from {incoming.from}
                {state.rooms[incoming.room].kind === 'room' ? ` in # ${incoming.room}` : ''}
              </strong>
              <span className="incoming-body">{incoming.body}</span>
            </span>
            <button
              type="button"
              className="small"
              onClick={() => {
                client.dismissIncoming();
                open(incoming.room);
              }}
            >
              Open
            </button>
            <button type="button" className="secondary small" onClick={() => client.dismissIncoming()}>
              Close
            </button>
          </div>
        )}
      </div>
      <div className="panes">
        <Sidebar client={client} state={state} chatVisible={chatVisible} onOpen={open} />
        <main className="chat">
          {room ? (
            <ChatView
              client={client}
              room={room}
              me={user}
              features={state.features}
              visible={chatVisible}
              unreadElsewhere={elsewhere}
              onBack={() => setPane('list')}
              onLeave={() => setPane('list')}
              onOpenDm={openDm}
            />
          ) : (
            <div className="no-room">
              <h2>Welcome, {user}</h2>
              <p>Join a room by name, or start a direct message with someone by their username.</p>
            </div>
          )}
        </main>
      </div>
    </div>
  );
}

function ConnectionStatus({ client, state }: { client: ChatClient; state: ChatState }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (state.status !== 'reconnecting') return;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [state.status]);

  let text = '';
  if (state.status === 'connecting') text = 'Connecting…';
  if (state.status === 'reconnecting') {
    const wait = state.reconnectAt ? Math.max(0, Math.ceil((state.reconnectAt - now) / 1000)) : 0;
    text = `Reconnecting…${state.disconnectReason ? ` ${state.disconnectReason}` : ''}${wait > 0 ? ` Next try in ${wait} s.` : ''}`;
  }
  return (
    <div className={`connection is-${state.status}`} role="status">
      {text && <span>{text}</span>}
      {state.status === 'reconnecting' && (
        <button type="button" className="secondary small" onClick={() => client.reconnectNow()}>
          Try now
        </button>
      )}
    </div>
  );
}
