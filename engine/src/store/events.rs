//! The rules of version 1.1's sequenced events (edit, delete, reaction, and
//! a message's `reply_to`), written once for both stores.
//!
//! An event is stored like a message, with its own seq, and it changes its
//! target: the target's row is what `history` and replays show (newest
//! body, `edited_ts`, `deleted`, `reactions`). A store, inside the commit
//! that stores the event, reads the row the event names, asks [`check`]
//! whether the event may be stored, numbers it, and [`apply`]s it to the
//! target. So the event and its effect are one commit (embedded store), or
//! an effect re-applied on every retry until it is acknowledged (MongoDB).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use viche_protocol::{ErrorCode, Msg, MsgKind};

use super::NewMessage;

/// Edits of one message; past it `edit` is refused `invalid`.
pub const MESSAGE_EDITS_MAX: usize = 100;
/// (user, emoji) reactions one message keeps; past it `react` is `invalid`.
pub const MESSAGE_REACTIONS_MAX: usize = 1024;
/// Different emoji one user keeps on one message (removed ones included,
/// the oldest removed one is forgotten first).
pub const USER_REACTIONS_PER_MESSAGE_MAX: usize = 16;

/// What a new row is (also what a node forwards to a room's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An ordinary message, possibly answering another one.
    Message {
        reply_to: Option<u64>,
    },
    Edit {
        target: u64,
    },
    Delete {
        target: u64,
    },
    React {
        target: u64,
        emoji: String,
        on: bool,
    },
}

impl Event {
    /// The seq of the row this one needs to see: the target, or the
    /// message answered.
    pub fn names(&self) -> Option<u64> {
        match self {
            Event::Message { reply_to } => *reply_to,
            Event::Edit { target } | Event::Delete { target } | Event::React { target, .. } => Some(*target),
        }
    }

    pub fn kind(&self) -> Option<MsgKind> {
        match self {
            Event::Message { .. } => None,
            Event::Edit { .. } => Some(MsgKind::Edit),
            Event::Delete { .. } => Some(MsgKind::Delete),
            Event::React { .. } => Some(MsgKind::Reaction),
        }
    }
}

/// One user's reaction with one emoji, and the event that set it; a
/// removed one is kept so that removing it again is answered with the
/// original ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub user: String,
    pub on: bool,
    pub seq: u64,
}

/// A stored row (a message or an event), with the state history shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub from: String,
    pub cid: String,
    pub body: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MsgKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// The seqs of this message's edits: a deletion erases their bodies too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<u64>,
}

impl Row {
    /// The row a new message or event is stored as.
    pub fn new(m: &NewMessage) -> Self {
        let (emoji, on) = match &m.event {
            Event::React { emoji, on, .. } => (Some(emoji.clone()), Some(*on)),
            _ => (None, None),
        };
        Self {
            from: m.from.to_string(),
            cid: m.cid.clone(),
            body: m.body.clone(),
            ts: m.ts_ms,
            kind: m.event.kind(),
            target: m.event.kind().and(m.event.names()),
            reply_to: match m.event {
                Event::Message { reply_to } => reply_to,
                _ => None,
            },
            emoji,
            on,
            ..Self::default()
        }
    }

    /// The `msg` frame of this row as stored at (room, seq).
    pub fn to_msg(&self, room: &str, seq: u64) -> Msg {
        let mut reactions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.reactions.iter().filter(|r| r.on) {
            reactions.entry(r.emoji.clone()).or_default().push(r.user.clone());
        }
        for users in reactions.values_mut() {
            users.sort_unstable();
        }
        Msg {
            room: room.to_owned(),
            seq,
            from: self.from.clone(),
            body: self.body.clone(),
            cid: self.cid.clone(),
            ts: self.ts,
            kind: self.kind,
            target: self.target,
            reply_to: self.reply_to,
            emoji: self.emoji.clone(),
            on: self.on,
            edited_ts: self.edited_ts,
            deleted: self.deleted.then_some(true),
            reactions: (!reactions.is_empty()).then_some(reactions),
        }
    }

    /// An event row as the `NewMessage` that stored it (a store that
    /// re-applies an event on a retry needs it); `None` for a message.
    pub fn as_event(&self, room: &str) -> Option<NewMessage> {
        let target = self.target?;
        let event = match (self.kind?, &self.emoji, self.on) {
            (MsgKind::Edit, _, _) => Event::Edit { target },
            (MsgKind::Delete, _, _) => Event::Delete { target },
            (MsgKind::Reaction, Some(emoji), Some(on)) => Event::React { target, emoji: emoji.clone(), on },
            (MsgKind::Reaction, _, _) => return None,
        };
        Some(NewMessage {
            room: room.into(),
            from: self.from.as_str().into(),
            cid: self.cid.clone(),
            body: self.body.clone(),
            ts_ms: self.ts,
            event,
            fence: None,
        })
    }

    /// Erases the row in place (a deleted user's message or event, or an
    /// event whose target retention removed): empty body, `deleted`, no
    /// reactions, no emoji. Its seq, author and kind stay, so seqs stay
    /// dense. False when it was erased already.
    pub fn erase(&mut self) -> bool {
        let erased = self.body.is_empty()
            && self.deleted
            && self.reactions.is_empty()
            && self.emoji.is_none()
            && self.on.is_none();
        self.body.clear();
        self.deleted = true;
        self.reactions.clear();
        self.emoji = None;
        self.on = None;
        !erased
    }

    fn is_live_message(&self) -> bool {
        self.kind.is_none() && !self.deleted
    }
}

/// Whether a new row may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Store,
    Refuse(ErrorCode, &'static str),
    /// A reaction repeating the current state: answered with the ack of
    /// the event at this seq; nothing is stored.
    Repeat(u64),
}

/// Whether `m` may be stored, given the row at the seq its event names
/// ([`Event::names`]; `None` when no row is stored there).
pub fn check(m: &NewMessage, named: Option<&Row>) -> Verdict {
    match &m.event {
        Event::Message { reply_to: None } => Verdict::Store,
        Event::Message { reply_to: Some(_) } => match named {
            Some(row) if row.kind.is_none() => Verdict::Store,
            _ => Verdict::Refuse(ErrorCode::NotFound, "reply_to names no message of this room"),
        },
        event => {
            let Some(target) = named.filter(|row| row.is_live_message()) else {
                return Verdict::Refuse(
                    ErrorCode::NotFound,
                    "target names no message of this room (or it was deleted)",
                );
            };
            match event {
                Event::Edit { .. } | Event::Delete { .. } if target.from != *m.from => {
                    Verdict::Refuse(ErrorCode::Forbidden, "only its author may change a message")
                }
                Event::Edit { .. } if target.edits.len() >= MESSAGE_EDITS_MAX => {
                    Verdict::Refuse(ErrorCode::Invalid, "this message was edited too many times")
                }
                Event::React { emoji, on, .. } => check_reaction(target, &m.from, emoji, *on),
                _ => Verdict::Store,
            }
        }
    }
}

fn check_reaction(target: &Row, user: &str, emoji: &str, on: bool) -> Verdict {
    match target.reactions.iter().find(|r| r.user == user && r.emoji == emoji) {
        Some(r) if r.on == on => Verdict::Repeat(r.seq),
        Some(_) => Verdict::Store,
        None if !on => Verdict::Refuse(ErrorCode::NotFound, "you have no such reaction to remove"),
        None => {
            let mine = target.reactions.iter().filter(|r| r.user == user).count();
            let mine_on = target.reactions.iter().filter(|r| r.user == user && r.on).count();
            if mine_on >= USER_REACTIONS_PER_MESSAGE_MAX {
                return Verdict::Refuse(ErrorCode::Invalid, "you have too many reactions on this message");
            }
            // A new entry, unless it replaces one of the user's removed ones.
            if mine < USER_REACTIONS_PER_MESSAGE_MAX && target.reactions.len() >= MESSAGE_REACTIONS_MAX {
                return Verdict::Refuse(ErrorCode::Invalid, "this message has too many reactions");
            }
            Verdict::Store
        }
    }
}

/// Applies the event `m`, stored at `seq`, to its target's row. Returns
/// the seqs of edit events whose bodies must be erased (a deletion).
pub fn apply(target: &mut Row, m: &NewMessage, seq: u64) -> Vec<u64> {
    match &m.event {
        Event::Message { .. } => Vec::new(),
        Event::Edit { .. } => {
            target.body = m.body.clone();
            target.edited_ts = Some(m.ts_ms);
            target.edits.push(seq);
            Vec::new()
        }
        Event::Delete { .. } => {
            target.body.clear();
            target.deleted = true;
            target.reactions.clear();
            std::mem::take(&mut target.edits)
        }
        Event::React { emoji, on, .. } => {
            let user = &*m.from;
            if let Some(r) = target.reactions.iter_mut().find(|r| r.user == user && r.emoji == *emoji) {
                r.on = *on;
                r.seq = seq;
            } else {
                if target.reactions.iter().filter(|r| r.user == user).count() >= USER_REACTIONS_PER_MESSAGE_MAX {
                    // `check` allowed it: one of the user's is a removed one.
                    let oldest_removed = target
                        .reactions
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.user == user && !r.on)
                        .min_by_key(|(_, r)| r.seq)
                        .map(|(i, _)| i)
                        .expect("a user at the bound has a removed reaction to forget");
                    target.reactions.remove(oldest_removed);
                }
                target.reactions.push(Reaction { emoji: emoji.clone(), user: user.to_owned(), on: *on, seq });
            }
            assert!(target.reactions.len() <= MESSAGE_REACTIONS_MAX);
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn new(from: &str, event: Event) -> NewMessage {
        NewMessage {
            room: Arc::from("r"),
            from: Arc::from(from),
            cid: "c".into(),
            body: "b".into(),
            ts_ms: 7,
            event,
            fence: None,
        }
    }

    fn message(from: &str) -> Row {
        Row::new(&new(from, Event::Message { reply_to: None }))
    }

    #[test]
    fn only_the_author_edits_or_deletes() {
        let row = message("ann");
        assert_eq!(check(&new("ann", Event::Edit { target: 1 }), Some(&row)), Verdict::Store);
        assert!(matches!(
            check(&new("bob", Event::Edit { target: 1 }), Some(&row)),
            Verdict::Refuse(ErrorCode::Forbidden, _)
        ));
        assert!(matches!(
            check(&new("bob", Event::Delete { target: 1 }), Some(&row)),
            Verdict::Refuse(ErrorCode::Forbidden, _)
        ));
        assert!(matches!(check(&new("ann", Event::Edit { target: 1 }), None), Verdict::Refuse(ErrorCode::NotFound, _)));
    }

    #[test]
    fn events_are_not_targets_and_deleted_messages_are_not_either() {
        let event = Row::new(&new("ann", Event::Edit { target: 1 }));
        for e in [Event::Edit { target: 2 }, Event::Delete { target: 2 }, Event::Message { reply_to: Some(2) }] {
            assert!(matches!(check(&new("ann", e), Some(&event)), Verdict::Refuse(ErrorCode::NotFound, _)));
        }
        let mut row = message("ann");
        apply(&mut row, &new("ann", Event::Delete { target: 1 }), 2);
        assert!(row.deleted && row.body.is_empty());
        assert!(matches!(
            check(&new("ann", Event::Edit { target: 1 }), Some(&row)),
            Verdict::Refuse(ErrorCode::NotFound, _)
        ));
        // A reply may still answer a deleted message.
        assert_eq!(check(&new("bob", Event::Message { reply_to: Some(1) }), Some(&row)), Verdict::Store);
    }

    #[test]
    fn an_edit_shows_in_the_target_and_a_delete_erases_every_body() {
        let mut row = message("ann");
        let mut edit = new("ann", Event::Edit { target: 1 });
        edit.body = "fixed".into();
        edit.ts_ms = 9;
        apply(&mut row, &edit, 2);
        let msg = row.to_msg("r", 1);
        assert_eq!((msg.body.as_str(), msg.edited_ts, msg.kind), ("fixed", Some(9), None));
        let erase = apply(&mut row, &new("ann", Event::Delete { target: 1 }), 3);
        assert_eq!(erase, vec![2]);
        assert_eq!(row.to_msg("r", 1).deleted, Some(true));
    }

    #[test]
    fn edits_are_bounded() {
        let mut row = message("ann");
        for seq in 0..MESSAGE_EDITS_MAX as u64 {
            let edit = new("ann", Event::Edit { target: 1 });
            assert_eq!(check(&edit, Some(&row)), Verdict::Store);
            apply(&mut row, &edit, seq + 2);
        }
        assert!(matches!(
            check(&new("ann", Event::Edit { target: 1 }), Some(&row)),
            Verdict::Refuse(ErrorCode::Invalid, _)
        ));
    }

    fn react(user: &str, emoji: &str, on: bool) -> NewMessage {
        new(user, Event::React { target: 1, emoji: emoji.into(), on })
    }

    #[test]
    fn a_repeated_reaction_is_answered_with_the_original() {
        let mut row = message("ann");
        assert_eq!(check(&react("bob", "👍", true), Some(&row)), Verdict::Store);
        apply(&mut row, &react("bob", "👍", true), 2);
        assert_eq!(check(&react("bob", "👍", true), Some(&row)), Verdict::Repeat(2));
        assert_eq!(row.to_msg("r", 1).reactions.unwrap()["👍"], vec!["bob".to_string()]);
        apply(&mut row, &react("bob", "👍", false), 3);
        assert_eq!(check(&react("bob", "👍", false), Some(&row)), Verdict::Repeat(3));
        assert_eq!(row.to_msg("r", 1).reactions, None);
        assert!(matches!(check(&react("bob", "🎉", false), Some(&row)), Verdict::Refuse(ErrorCode::NotFound, _)));
    }

    #[test]
    fn reactions_are_bounded_per_user_and_per_message() {
        let mut row = message("ann");
        let mut seq = 1;
        for i in 0..USER_REACTIONS_PER_MESSAGE_MAX {
            seq += 1;
            apply(&mut row, &react("bob", &format!("e{i}"), true), seq);
        }
        assert!(matches!(check(&react("bob", "new", true), Some(&row)), Verdict::Refuse(ErrorCode::Invalid, _)));
        // Removing one makes room: the removed entry is forgotten first.
        seq += 1;
        apply(&mut row, &react("bob", "e0", false), seq);
        assert_eq!(check(&react("bob", "new", true), Some(&row)), Verdict::Store);
        seq += 1;
        apply(&mut row, &react("bob", "new", true), seq);
        assert_eq!(row.reactions.iter().filter(|r| r.user == "bob").count(), USER_REACTIONS_PER_MESSAGE_MAX);
        assert!(!row.reactions.iter().any(|r| r.emoji == "e0"));

        let mut row = message("ann");
        for i in 0..MESSAGE_REACTIONS_MAX {
            apply(&mut row, &react(&format!("u{i}"), "👍", true), i as u64 + 2);
        }
        assert!(matches!(check(&react("late", "👍", true), Some(&row)), Verdict::Refuse(ErrorCode::Invalid, _)));
        // Changing an existing entry is always possible.
        assert_eq!(check(&react("u0", "👍", false), Some(&row)), Verdict::Store);
    }
}
