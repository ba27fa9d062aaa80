//! The Lua scripts. Every step that touches more than one key, or reads and
//! then writes, is one script: Redis runs a script atomically, so no other
//! client sees it half done. Each script is `common.lua` (key names, the
//! store's clock, the due/delayed placement of a queue, the fencing rule)
//! followed by its own file in `src/lua/`; `common.lua` also describes the
//! key layout.
//!
//! Scripts are sent with `EVALSHA`; after a `SCRIPT FLUSH` or a server
//! restart, `redis::Script` loads them again on `NOSCRIPT` and retries.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/common.lua"),
                "\n",
                include_str!(concat!("lua/", $file))
            ))
        });
    };
}

script!(OPEN, "open.lua");
script!(UPGRADE, "upgrade.lua");
script!(APPEND, "append.lua");
script!(READ, "read.lua");
script!(SUBSCRIBE, "subscribe.lua");
script!(SUBSCRIPTIONS, "subscriptions.lua");
script!(RETIRE, "retire.lua");
script!(ENQUEUE, "enqueue.lua");
script!(REPLAYS, "replays.lua");
script!(CLAIM, "claim.lua");
script!(SETTLE, "settle.lua");
script!(RENEW, "renew.lua");
script!(RELEASE, "release.lua");
script!(UNBLOCK, "unblock.lua");
script!(RESET, "reset.lua");
script!(LIST, "list.lua");
script!(NEXT_DUE, "next_due.lua");
