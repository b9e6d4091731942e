import { useEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import type { ChatClient, Message } from '../client';
import { excerpt } from './excerpt';

interface Props {
  client: ChatClient;
  room: string;
  /** The seq the next message answers, if any. */
  replyTo: number | null;
  /** That message, when it is in memory. */
  replyTarget?: Message;
}

export function Composer({ client, room, replyTo, replyTarget }: Props) {
  const [text, setText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);

  // Choosing a message to answer puts the cursor here.
  useEffect(() => {
    if (replyTo !== null) input.current?.focus();
  }, [replyTo]);

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
    } else if (e.key === 'Escape' && replyTo !== null) {
      e.preventDefault();
      client.setReplyTo(room, null);
    }
  }

  return (
    <form className="composer" onSubmit={send}>
      {replyTo !== null && (
        <div className="replying">
          <span className="replying-text">
            Replying to{' '}
            {replyTarget ? (
              <>
                <strong>{replyTarget.from}</strong>: {replyTarget.deleted ? 'message deleted' : excerpt(replyTarget.body)}
              </>
            ) : (
              'an earlier message'
            )}
          </span>
          <button type="button" className="secondary small" onClick={() => client.setReplyTo(room, null)}>
            Cancel reply
          </button>
        </div>
      )}
      <label htmlFor="composer-input" className="sr-only">
        Message
      </label>
      <textarea
        id="composer-input"
        ref={input}
        rows={1}
        value={text}
        placeholder={replyTo !== null ? 'Write a reply' : 'Write a message'}
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
