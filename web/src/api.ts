// The HTTP half of the protocol: register and log in.
import { describeError, type ErrorContext } from './errors';

export interface Session {
  user: string;
  token: string;
  /** `exp` of the token, in milliseconds since the epoch. */
  expiresAt: number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

async function post(fetchImpl: typeof fetch, base: string, path: string, body: unknown, context: ErrorContext): Promise<Session> {
  let response: Response;
  try {
    response = await fetchImpl(`${base}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection and try again.');
  }
  let json: Record<string, unknown> = {};
  try {
    json = (await response.json()) as Record<string, unknown>;
  } catch {
    // not JSON: handled below
  }
  if (response.ok && typeof json.token === 'string' && typeof json.user === 'string') {
    return { user: json.user, token: json.token, expiresAt: Number(json.expires_at) };
  }
  const code = typeof json.error === 'string' ? json.error : response.status >= 500 ? 'internal' : 'invalid';
  const retry = Number(response.headers.get('Retry-After'));
  const retryAfter = Number.isFinite(retry) && retry > 0 ? retry : undefined;
  throw new ApiError(response.status, code, describeError(code, context, { retryAfter }), retryAfter);
}

export function login(username: string, password: string, fetchImpl: typeof fetch = fetch, base = ''): Promise<Session> {
  return post(fetchImpl, base, '/api/login', { username, password }, 'login');
}

export function register(username: string, password: string, fetchImpl: typeof fetch = fetch, base = ''): Promise<Session> {
  return post(fetchImpl, base, '/api/register', { username, password }, 'register');
}

/** `iat` and `exp` of a JWT, in milliseconds, or null when it does not parse. */
export function tokenTimes(token: string): { iat: number; exp: number } | null {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    const claims = JSON.parse(json) as { iat?: number; exp?: number };
    if (typeof claims.exp !== 'number') return null;
    return { iat: (claims.iat ?? claims.exp - 86_400) * 1000, exp: claims.exp * 1000 };
  } catch {
    return null;
  }
}

/** When to refresh a token: a quarter of its lifetime (at most 5 minutes) before it expires. */
export function refreshTime(session: Session, now = Date.now()): number {
  const times = tokenTimes(session.token);
  const exp = session.expiresAt || times?.exp || 0;
  const lifetime = times ? times.exp - times.iat : exp - now;
  return exp - Math.min(300_000, lifetime / 4);
}
