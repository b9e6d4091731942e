import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeClose, describeError, ERROR_TEXT } from './errors';
import { ERROR_CODES } from './protocol';

/** The contract, when this checkout sits beside shared/ (as in CI). */
function contract(): string | null {
  for (const p of ['../../shared/PROTOCOL.md', '../../../shared/PROTOCOL.md']) {
    const file = resolve(__dirname, p);
    if (existsSync(file)) return readFileSync(file, 'utf8');
  }
  return null;
}

describe('error words', () => {
  it('has words for every error code of the contract', () => {
    const text = contract();
    const codes = new Set<string>(ERROR_CODES);
    if (text) {
      const section = text.split('## 5. Error codes')[1].split('## 6.')[0];
      const listed = [...section.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]);
      expect(listed.length).toBeGreaterThan(5);
      for (const code of listed) codes.add(code);
    }
    for (const code of codes) {
      expect(ERROR_TEXT, code).toHaveProperty(code);
      const words = describeError(code);
      expect(words).not.toMatch(/unexpected/);
      expect(words).not.toContain(code);
      expect(words.length).toBeGreaterThan(15);
    }
  });

  it('has words for every close code of the contract', () => {
    const text = contract();
    const codes = [1001, 1009, 4001, 4002, 4008, 1002, 4029];
    if (text) {
      const section = text.split('## 6. Close codes')[1].split('## 7.')[0];
      codes.push(...[...section.matchAll(/^\| (\d{4}) \|/gm)].map((m) => Number(m[1])));
    }
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
