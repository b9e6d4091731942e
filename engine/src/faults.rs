//! Failpoints: the named places where tests inject a panic, an error or a
//! delay into the running engine (feature `failpoints`, the `fail` crate).
//! Without the feature every macro and function here compiles to nothing.
//!
//! With the feature, the `FAILPOINTS` environment variable configures them
//! at the server's start, e.g. `FAILPOINTS="room.publish=2%panic;store.append=5%return"`
//! (actions: `panic`, `return`, `sleep(ms)`, with `N%` and `N*` prefixes;
//! see the `fail` crate). The places:
//!
//! | name | where | `return` means |
//! |---|---|---|
//! | `session.handle` | a session handling a client frame | the frame is refused with `internal` |
//! | `room.join` | a room's actor handling a join | (not used: `panic` or `sleep`) |
//! | `room.publish` | a room's actor publishing stored messages | (not used: `panic` or `sleep`) |
//! | `writer.commit` | the writer, before and after one batch's commit | (not used: `panic` or `sleep`) |
//! | `store.append` | every `append_batch` | the call fails (transient); `return(TEXT)`: only a batch holding a message whose body contains TEXT fails (a poison message) |
//! | `store.last_seq` | every `last_seq` | the call fails (transient) |
//! | `store.range` | every `range` (replays) | the call fails (transient) |
//! | `store.trim` | every `trim_room` (retention, purges) | the call fails (the pass is counted `failed` and retried next interval) |
//! | `cluster.owner` | a node of a cluster choosing a room's owner | this node believes it owns every room (two would-be owners, for the store to fence) |
//! | `embedded.io` | the embedded store's commit | the commit meets an I/O error (the store reopens its file) |
//!
//! Async places (`writer.commit`, `store.*`) evaluate their failpoint on
//! the blocking pool, so `sleep(ms)` delays that call without blocking a
//! runtime worker, which is what a hung store looks like; a `panic` there
//! is resumed in the calling task.

/// A failpoint in synchronous code: `panic` panics here, `sleep(ms)`
/// blocks this thread. Nothing without the feature.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if fail::has_failpoints() {
                fail::fail_point!($name, |_| { panic!("failpoint {}: `return` is not supported here", $name) });
            }
        }
    };
}
pub(crate) use failpoint;

/// Evaluates a failpoint in synchronous code that can answer `return`:
/// `Some(arg)` when it returned; `panic` panics and `sleep(ms)` blocks here.
#[cfg(feature = "failpoints")]
pub(crate) fn eval_sync(name: &'static str) -> Option<Option<String>> {
    if !fail::has_failpoints() {
        return None;
    }
    fail::eval(name, |arg| arg)
}

/// Evaluates a failpoint in async code, on the blocking pool: `None` when
/// it did not fire (or sleeping was all it did), `Some(arg)` for `return`
/// (with its argument, if any). A `panic` is resumed here.
#[cfg(feature = "failpoints")]
pub(crate) async fn eval(name: &'static str) -> Option<Option<String>> {
    if !fail::has_failpoints() {
        return None;
    }
    match tokio::task::spawn_blocking(move || fail::eval(name, |arg| arg)).await {
        Ok(fired) => fired,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Without the feature: never fires, costs nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) async fn eval(_name: &'static str) -> Option<Option<String>> {
    None
}
