import { useEffect, useState, useSyncExternalStore } from 'react';
import type { ChatClient, ChatState } from './client';
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

function ChatScreen({ client, state }: { client: ChatClient; state: ChatState }) {
  // On a narrow screen only one pane shows: the list, or the open conversation.
  const [pane, setPane] = useState<'list' | 'chat'>(state.active ? 'chat' : 'list');
  const room = state.active ? state.rooms[state.active] : undefined;
  const user = state.user!;

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
      <div className="panes">
        <Sidebar
          client={client}
          state={state}
          onOpen={(id) => {
            client.setActive(id);
            setPane('chat');
          }}
        />
        <main className="chat">
          {room ? (
            <ChatView client={client} room={room} me={user} onBack={() => setPane('list')} />
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
