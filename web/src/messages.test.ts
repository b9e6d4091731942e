import { describe, expect, it } from 'vitest';
import { applyEvent, previewText, reactionSummary, toMessage, type Message } from './messages';
import type { Msg } from './protocol';
import { event, msg } from './test/fakes';

const original = () => toMessage(msg('r', 1, 'ann', 'typo'));

/** Applies events in the given order. */
function applyAll(m: Message, events: Msg[]): Message {
  return events.reduce((acc, e) => applyEvent(acc, e), m);
}

/** The part of a message a person sees. */
function visible(m: Message) {
  return { body: m.body, deleted: m.deleted ?? false, edited: m.edited_ts !== undefined, reactions: m.reactions ?? {} };
}

describe('applying events to their target', () => {
  it('edits, reacts, takes a reaction back and deletes', () => {
    let m = original();
    m = applyEvent(m, event('r', 2, 'ann', 'edit', 1, { body: 'fixed' }));
    expect(m).toMatchObject({ body: 'fixed', edited_ts: 1_700_000_002_000 });
    m = applyEvent(m, event('r', 3, 'bob', 'reaction', 1, { emoji: '👍' }));
    m = applyEvent(m, event('r', 4, 'cat', 'reaction', 1, { emoji: '👍' }));
    m = applyEvent(m, event('r', 5, 'cat', 'reaction', 1, { emoji: '🎉' }));
    expect(m.reactions).toEqual({ '👍': ['bob', 'cat'], '🎉': ['cat'] });
    expect(reactionSummary(m, 'cat')).toEqual([
      { emoji: '👍', count: 2, users: ['bob', 'cat'], mine: true },
      { emoji: '🎉', count: 1, users: ['cat'], mine: true },
    ]);
    expect(reactionSummary(m, 'ann').every((s) => !s.mine)).toBe(true);
    m = applyEvent(m, event('r', 6, 'cat', 'reaction', 1, { emoji: '🎉', on: false }));
    expect(m.reactions).toEqual({ '👍': ['bob', 'cat'] });
    m = applyEvent(m, event('r', 7, 'ann', 'delete', 1));
    expect(visible(m)).toMatchObject({ body: '', deleted: true });
    expect(reactionSummary(m, 'bob')).toEqual([]);
    // Nothing edits a deleted message.
    expect(applyEvent(m, event('r', 8, 'ann', 'edit', 1, { body: 'back' }))).toBe(m);
  });

  it('ignores events for another message, and ones a snapshot already holds', () => {
    const m = original();
    expect(applyEvent(m, event('r', 2, 'ann', 'edit', 9, { body: 'x' }))).toBe(m);
    // A history page asked before seq 11: every event up to 10 is in it.
    const snapshot = toMessage({ ...msg('r', 1, 'ann', 'second edit'), edited_ts: 5, reactions: { '👍': ['bob'] } }, 10);
    expect(applyEvent(snapshot, event('r', 4, 'ann', 'edit', 1, { body: 'first edit' }))).toBe(snapshot);
    expect(applyEvent(snapshot, event('r', 6, 'bob', 'reaction', 1, { emoji: '👍', on: false }))).toBe(snapshot);
    // Newer events apply.
    expect(applyEvent(snapshot, event('r', 12, 'bob', 'reaction', 1, { emoji: '👍', on: false })).reactions).toBeUndefined();
  });

  it('a late, older event does not undo a newer one', () => {
    let m = original();
    m = applyEvent(m, event('r', 5, 'ann', 'edit', 1, { body: 'newest' }));
    m = applyEvent(m, event('r', 3, 'ann', 'edit', 1, { body: 'older' }));
    expect(m.body).toBe('newest');
    m = applyEvent(m, event('r', 7, 'bob', 'reaction', 1, { emoji: '👍', on: false }));
    m = applyEvent(m, event('r', 6, 'bob', 'reaction', 1, { emoji: '👍', on: true }));
    expect(m.reactions).toBeUndefined();
  });

  it('converges on the same state whatever the order and repeats', () => {
    const events = [
      event('r', 2, 'ann', 'edit', 1, { body: 'one' }),
      event('r', 3, 'bob', 'reaction', 1, { emoji: '👍' }),
      event('r', 4, 'cat', 'reaction', 1, { emoji: '👍' }),
      event('r', 5, 'bob', 'reaction', 1, { emoji: '👍', on: false }),
      event('r', 6, 'ann', 'edit', 1, { body: 'two' }),
      event('r', 7, 'bob', 'reaction', 1, { emoji: '❤️' }),
      event('r', 8, 'cat', 'reaction', 1, { emoji: '👍', on: false }),
      event('r', 9, 'cat', 'reaction', 1, { emoji: '👍' }),
    ];
    const expected = visible(applyAll(original(), events));
    expect(expected).toEqual({ body: 'two', deleted: false, edited: true, reactions: { '👍': ['cat'], '❤️': ['bob'] } });
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    for (let round = 0; round < 200; round++) {
      const shuffled = [...events, ...events.filter(() => random() < 0.3)].sort(() => random() - 0.5);
      expect(visible(applyAll(original(), shuffled)), `round ${round}`).toEqual(expected);
    }
  });

  it('reads a target as history shows it', () => {
    const m = toMessage({ ...msg('r', 3, 'ann', ''), deleted: true, reactions: { '👍': ['bob'] }, reply_to: 1 });
    expect(m).toMatchObject({ body: '', deleted: true, reply_to: 1 });
    expect(reactionSummary(m, 'bob')).toEqual([]);
  });
});

describe('previews', () => {
  it('says what a message or event is, in one line', () => {
    expect(previewText(msg('r', 1, 'bob', 'hello\n  there'), 'ann')).toBe('bob: hello there');
    expect(previewText(msg('r', 1, 'ann', 'hi'), 'ann')).toBe('You: hi');
    expect(previewText(event('r', 2, 'bob', 'reaction', 1, { emoji: '🎉' }), 'ann')).toBe('bob reacted 🎉');
    expect(previewText(event('r', 2, 'bob', 'edit', 1, { body: 'x' }), 'ann')).toBe('bob edited a message');
    expect(previewText(event('r', 2, 'ann', 'delete', 1), 'ann')).toBe('You deleted a message');
    expect(previewText({ ...msg('r', 1, 'bob', ''), deleted: true }, 'ann')).toBe('bob: message deleted');
    expect(previewText(msg('r', 1, 'bob', 'x'.repeat(200)), 'ann')).toHaveLength(85);
  });
});
