//! Field rules of docs/protocol.md: usernames, passwords, rooms, cids, bodies.
//!
//! Pure functions, shared by the server (to reject bad input) and the
//! clients (to build valid DM room ids).

use crate::errors::ErrorCode;
use crate::limits::*;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// 3 to 32 characters of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_username(name: &str) -> bool {
    // All allowed characters are ASCII, so bytes == chars once the charset holds.
    (USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&name.len()) && name.chars().all(is_name_char)
}

/// 8 to 1024 bytes.
pub fn is_valid_password(password: &str) -> bool {
    (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len())
}

/// A room id, parsed: a public room or a direct-message room of two users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomKind<'a> {
    Public,
    /// The two users, in byte order.
    Dm(&'a str, &'a str),
}

/// Parses a room id. `dm:a:b` is valid only with two different valid
/// usernames in byte order, so every DM pair has exactly one room id.
pub fn parse_room(room: &str) -> Option<RoomKind<'_>> {
    if let Some(rest) = room.strip_prefix("dm:") {
        let (a, b) = rest.split_once(':')?;
        if is_valid_username(a) && is_valid_username(b) && a.as_bytes() < b.as_bytes() {
            return Some(RoomKind::Dm(a, b));
        }
        return None;
    }
    if (ROOM_CHARS_MIN..=ROOM_CHARS_MAX).contains(&room.len()) && room.chars().all(is_name_char) {
        Some(RoomKind::Public)
    } else {
        None
    }
}

/// The DM room id of two users, or `None` if they are the same user.
pub fn dm_room(a: &str, b: &str) -> Option<String> {
    match a.as_bytes().cmp(b.as_bytes()) {
        std::cmp::Ordering::Less => Some(format!("dm:{a}:{b}")),
        std::cmp::Ordering::Greater => Some(format!("dm:{b}:{a}")),
        std::cmp::Ordering::Equal => None,
    }
}

pub fn is_valid_cid(cid: &str) -> bool {
    (CID_BYTES_MIN..=CID_BYTES_MAX).contains(&cid.len())
}

/// `too_large` over the limit, `invalid` when empty.
pub fn check_body(body: &str, max_body_bytes: usize) -> Result<(), ErrorCode> {
    if body.len() > max_body_bytes {
        Err(ErrorCode::TooLarge)
    } else if body.len() < BODY_BYTES_MIN {
        Err(ErrorCode::Invalid)
    } else {
        Ok(())
    }
}

/// v1.1: 1 to 32 bytes of UTF-8.
pub fn is_valid_emoji(emoji: &str) -> bool {
    (EMOJI_BYTES_MIN..=EMOJI_BYTES_MAX).contains(&emoji.len())
}

/// v1.1: `limit` of a conversations request: absent means the default; 1..=200.
pub fn conversations_limit(limit: Option<u64>) -> Option<u64> {
    match limit {
        None => Some(CONVERSATIONS_LIMIT_DEFAULT),
        Some(n) if (CONVERSATIONS_LIMIT_MIN..=CONVERSATIONS_LIMIT_MAX).contains(&n) => Some(n),
        Some(_) => None,
    }
}

/// `limit` of a history request: absent means the default; 1..=100.
pub fn history_limit(limit: Option<u64>) -> Option<u64> {
    match limit {
        None => Some(HISTORY_LIMIT_DEFAULT),
        Some(n) if (HISTORY_LIMIT_MIN..=HISTORY_LIMIT_MAX).contains(&n) => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_at_and_past_bounds() {
        assert!(is_valid_username("abc"));
        assert!(!is_valid_username("ab"));
        assert!(is_valid_username(&"a".repeat(32)));
        assert!(!is_valid_username(&"a".repeat(33)));
        assert!(is_valid_username("A.b-c_9"));
        assert!(!is_valid_username("a b"));
        assert!(!is_valid_username("ünï"));
        assert!(!is_valid_username("a:bc"));
    }

    #[test]
    fn rooms_at_and_past_bounds() {
        assert_eq!(parse_room("a"), Some(RoomKind::Public));
        assert_eq!(parse_room(""), None);
        assert_eq!(parse_room(&"r".repeat(64)), Some(RoomKind::Public));
        assert_eq!(parse_room(&"r".repeat(65)), None);
        assert_eq!(parse_room("no/slash"), None);
        assert_eq!(parse_room("dm:alice:bob"), Some(RoomKind::Dm("alice", "bob")));
        assert_eq!(parse_room("dm:bob:alice"), None, "not in byte order");
        assert_eq!(parse_room("dm:bob:bob"), None);
        assert_eq!(parse_room("dm:al:bob"), None, "invalid username");
        assert_eq!(parse_room("dm:alice"), None);
        assert_eq!(dm_room("bob", "alice").as_deref(), Some("dm:alice:bob"));
        assert_eq!(dm_room("Bob", "alice").as_deref(), Some("dm:Bob:alice"), "byte order: uppercase first");
    }

    #[test]
    fn bodies_cids_limits() {
        assert_eq!(check_body("", 10), Err(ErrorCode::Invalid));
        assert_eq!(check_body(&"x".repeat(10), 10), Ok(()));
        assert_eq!(check_body(&"x".repeat(11), 10), Err(ErrorCode::TooLarge));
        assert!(is_valid_cid("c"));
        assert!(is_valid_cid(&"c".repeat(64)));
        assert!(!is_valid_cid(&"c".repeat(65)));
        assert!(!is_valid_cid(""));
        assert_eq!(history_limit(None), Some(50));
        assert_eq!(history_limit(Some(0)), None);
        assert_eq!(history_limit(Some(1)), Some(1));
        assert_eq!(history_limit(Some(100)), Some(100));
        assert_eq!(history_limit(Some(101)), None);
        assert!(is_valid_password("12345678"));
        assert!(!is_valid_password("1234567"));
        assert!(is_valid_password(&"p".repeat(1024)));
        assert!(!is_valid_password(&"p".repeat(1025)));
    }
}
