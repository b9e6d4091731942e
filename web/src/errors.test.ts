import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeClose, describeError, ERROR_TEXT } from './errors';
import { ERROR_CODES } from './protocol';

/** The protocol's own description, docs/protocol.md: the contract (v1) this client is written against. */
function contract(): string {
  const file = resolve(__dirname, '../../docs/protocol.md');
  if (!existsSync(file)) throw new Error(`${file} is missing: the error and close codes are checked against it`);
  return readFileSync(file, 'utf8');
}

/** The lines of one `## ` section of docs/protocol.md, by its title. */
function section(text: string, title: string): string {
  const start = text.indexOf(`\n## ${title}\n`);
  if (start < 0) throw new Error(`docs/protocol.md has no "## ${title}" section`);
  const end = text.indexOf('\n## ', start + 1);
  return text.slice(start, end < 0 ? undefined : end);
}

describe('error words', () => {
  it('has words for every error code of the contract', () => {
    // The first column of the "Error codes" table: | `code` | used for |
    const listed = [...section(contract(), 'Error codes').matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
    expect(listed.length).toBeGreaterThan(5);
    expect([...listed].sort()).toEqual([...ERROR_CODES].sort());
    for (const code of listed) {
      expect(ERROR_TEXT, code).toHaveProperty(code);
      const words = describeError(code);
      expect(words).not.toMatch(/unexpected/);
      expect(words).not.toContain(code);
      expect(words.length).toBeGreaterThan(15);
    }
  });

  it('has words for every close code of the contract', () => {
    // The first column of the "Close codes" table: | 4008 | reason |
    const codes = [...section(contract(), 'Close codes').matchAll(/^\| (\d{4}) \|/gm)].map((m) => Number(m[1]));
    for (const code of [1001, 1009, 4001, 4002, 4008, 1002, 4029]) expect(codes).toContain(code);
    const generic = describeClose(9999);
    for (const code of codes) expect(describeClose(code), String(code)).not.toBe(generic);
  });

  it('says more where the context allows', () => {
    expect(describeError('unauthorized', 'login')).toBe('Wrong username or password.');
    expect(describeError('conflict', 'register')).toMatch(/already taken/);
    expect(describeError('rate_limited', 'login', { retryAfter: 30 })).toMatch(/in 30 seconds/);
    expect(describeError('not_found', 'dm', { to: 'zed' })).toBe('There is no user called zed.');
    expect(describeError('something_new')).toMatch(/unexpected/);
  });
});
