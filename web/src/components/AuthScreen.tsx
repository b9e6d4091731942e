import { useState, type FormEvent } from 'react';
import { ApiError, login, register, type Session } from '../api';
import { isValidUsername, utf8Length } from '../protocol';

interface Props {
  onSession: (session: Session, password: string) => void;
  /** Why the previous session ended, if it did. */
  reason: string | null;
}

export function AuthScreen({ onSession, reason }: Props) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(kind: 'login' | 'register') {
    if (busy) return;
    const name = username.trim();
    if (kind === 'register') {
      if (!isValidUsername(name)) {
        setError('Usernames are 3 to 32 letters, digits, "_", "." or "-".');
        return;
      }
      if (utf8Length(password) < 8) {
        setError('Passwords are at least 8 characters.');
        return;
      }
    } else if (!name || !password) {
      setError('Enter your username and password.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const session = kind === 'login' ? await login(name, password) : await register(name, password);
      onSession(session, password);
    } catch (e) {
      setError(e instanceof ApiError ? e.message : 'Something unexpected went wrong. Please try again.');
      setBusy(false);
    }
  }

  function onSubmit(e: FormEvent) {
    e.preventDefault();
    void submit('login');
  }

  return (
    <main className="auth">
      <h1>Viche</h1>
      <p className="tagline">Chat rooms and direct messages.</p>
      {reason && <p className="auth-reason">{reason}</p>}
      <form onSubmit={onSubmit} className="auth-form" aria-busy={busy}>
        <label htmlFor="auth-username">Username</label>
        <input
          id="auth-username"
          name="username"
          autoComplete="username"
          autoCapitalize="none"
          spellCheck={false}
          value={username}
          onChange={(e) => setUsername(e.target.value)}
          autoFocus
        />
        <label htmlFor="auth-password">Password</label>
        <input
          id="auth-password"
          name="password"
          type="password"
          autoComplete="current-password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <div className="auth-buttons">
          <button type="submit" disabled={busy}>
            Log in
          </button>
          <button type="button" className="secondary" disabled={busy} onClick={() => void submit('register')}>
            Register
          </button>
        </div>
      </form>
    </main>
  );
}
