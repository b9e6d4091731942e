// Every error the server can send, in words a person understands.
import type { ErrorCode } from './protocol';

/** What went wrong, for each error code of docs/protocol.md, "Error codes". */
export const ERROR_TEXT: Record<ErrorCode, string> = {
  bad_frame: 'The server could not understand what this app sent. Reload the page; if it keeps happening, the app is out of date.',
  unauthorized: 'You are not signed in any more. Please log in again.',
  forbidden: 'You are not allowed to do that: this conversation belongs to other people.',
  not_found: 'There is no such user or room.',
  not_joined: 'You are not in that room right now. Rejoining it…',
  invalid: 'That was not accepted: a name or text is not in the allowed form.',
  too_large: 'That message is too long.',
  rate_limited: 'You are going too fast. Wait a moment, then try again.',
  conflict: 'That username is already taken. Choose another one.',
  overloaded: 'The server is busy right now. Trying again shortly…',
  internal: 'Something went wrong on the server. Please try again.',
};

/** Where an error happened, to say it more precisely. */
export type ErrorContext =
  | 'login'
  | 'register'
  | 'join'
  | 'send'
  | 'dm'
  | 'history'
  | 'session'
  /** A send that answers a message (`reply_to`). */
  | 'reply'
  | 'edit'
  | 'delete'
  | 'react';

export interface ErrorDetail {
  /** Seconds from a `Retry-After` header. */
  retryAfter?: number;
  /** The largest message body, in bytes. */
  maxBody?: number;
  /** The user a DM was meant for. */
  to?: string;
}

export function describeError(code: string, context?: ErrorContext, detail: ErrorDetail = {}): string {
  switch (code) {
    case 'forbidden':
      if (context === 'edit') return 'You can only edit your own messages. Nothing was changed.';
      if (context === 'delete') return 'You can only delete your own messages. Nothing was changed.';
      break;
    case 'unauthorized':
      if (context === 'login') return 'Wrong username or password.';
      break;
    case 'invalid':
      if (context === 'login' || context === 'register') {
        return 'Usernames are 3 to 32 letters, digits, "_", "." or "-", and passwords are at least 8 characters.';
      }
      if (context === 'join') return 'Room names are 1 to 64 letters, digits, "_", "." or "-".';
      if (context === 'dm') return detail.to ? `You cannot start a conversation with ${detail.to}.` : ERROR_TEXT.invalid;
      if (context === 'send' || context === 'reply') return 'That message was not accepted (it is empty or malformed).';
      if (context === 'edit') return 'That edit was not accepted (it is empty or malformed). Nothing was changed.';
      if (context === 'react') return 'That reaction was not accepted: a reaction is 1 to 32 bytes.';
      break;
    case 'not_found':
      if (context === 'edit') return 'That message can no longer be edited: it was deleted, or it is not a message. Nothing was changed.';
      if (context === 'delete') return 'That message is already gone: it was deleted, or it is not a message.';
      if (context === 'react') return 'You cannot react to that: the message was deleted, or it is not a message.';
      if (context === 'reply') return 'The message you answered is gone: it was deleted, or it is not a message.';
      if (context === 'dm' || context === 'join') return detail.to ? `There is no user called ${detail.to}.` : 'There is no such user.';
      break;
    case 'too_large':
      if (detail.maxBody) return `That message is too long: the limit is ${detail.maxBody} bytes.`;
      break;
    case 'rate_limited':
      if (context === 'login') {
        return `Too many failed attempts. Try again${detail.retryAfter ? ` in ${detail.retryAfter} seconds` : ' later'}.`;
      }
      if (context === 'register') {
        return `Too many registrations from here. Try again${detail.retryAfter ? ` in ${detail.retryAfter} seconds` : ' later'}.`;
      }
      break;
  }
  if (code in ERROR_TEXT) return ERROR_TEXT[code as ErrorCode];
  return 'Something unexpected went wrong. Please try again.';
}

/** Why the connection closed, from its WebSocket close code. */
export function describeClose(code: number): string {
  switch (code) {
    case 1000:
      return 'The connection was closed.';
    case 1001:
      return 'The server is restarting.';
    case 1002:
      return 'The server does not speak this version of the app. Reload the page.';
    case 1006:
      return 'The connection to the server was lost.';
    case 1009:
      return 'Something sent was too large for the server.';
    case 1011:
      return 'The server could not replay missed messages.';
    case 4001:
      return 'Your sign-in has expired. Please log in again.';
    case 4002:
      return 'The server did not hear from this app in time.';
    case 4009:
      return 'You have too many tabs or devices open. Close one, then reload this page.';
    case 4008:
      return 'Messages arrived faster than this device could read them.';
    case 4029:
      return 'Too many requests were refused for going too fast.';
    default:
      return 'The connection to the server was lost.';
  }
}
