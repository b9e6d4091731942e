import { useState, type FormEvent, type KeyboardEvent } from 'react';
import type { ChatClient } from '../client';

export function Composer({ client, room }: { client: ChatClient; room: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);

  function send(e?: FormEvent) {
    e?.preventDefault();
    if (!text.trim()) return;
    const problem = client.send(room, text);
    setError(problem);
    if (!problem) setText('');
  }

  function onKeyDown(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    }
  }

  return (
    <form className="composer" onSubmit={send}>
      <label htmlFor="composer-input" className="sr-only">
        Message
      </label>
      <textarea
        id="composer-input"
        rows={1}
        value={text}
        placeholder="Write a message"
        title="Enter sends; Shift+Enter starts a new line"
        onChange={(e) => {
          setText(e.target.value);
          if (e.target.value) client.typing(room);
        }}
        onKeyDown={onKeyDown}
        autoFocus
      />
      <button type="submit">Send</button>
      {error && (
        <p role="alert" className="error composer-error">
          {error}
        </p>
      )}
    </form>
  );
}
