//! Who may use which HTTP route: the two bearer tokens, protected mode, masked reads and the
//! submit rate limit.
//!
//! | caller | message routes (`POST /messages`, `GET /messages/{id}`) | `?reveal=true` | admin routes |
//! |---|---|---|---|
//! | no token, `api.token` empty (loopback only: protected mode) | yes, reads masked | 403 | 401 |
//! | no token, `api.token` set | 401 | 401 | 401 |
//! | `api.token` | yes, reads masked | 403 | 401 |
//! | `admin.token` | yes | yes | with `admin.allow_destructive_actions` (403 without) |
//! | a wrong token | 401 | 401 | 401 |
//!
//! Probes, `/`, `/status`, `/metrics` and `/openapi.json` are open to all: they carry no
//! bodies or numbers. The limiter keeps its own monotonic clock (governor's), not tokio's: a
//! paused test clock does not refill it.
//!
//! Protected mode, as Redis has it: with `api.token` empty drover listens on a loopback address
//! only; it refuses to start on any other address (exit code 2). Likewise a non-loopback
//! listener with destructive admin actions on needs `admin.token`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `[admin]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of admin routes; empty refuses everyone. Taken verbatim even when it
    /// looks like a number (`DROVER_ADMIN__TOKEN=12345`).
    #[serde(deserialize_with = "crate::config::verbatim_string")]
    pub token: String,
    /// Destructive admin routes answer 403 unless this is on.
    pub allow_destructive_actions: bool,
    /// `POST /failed/redrive` answers 429 within this time of the last re-drive's start.
    pub redrive_cooldown_ms: u64,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("allow_destructive_actions", &self.allow_destructive_actions)
            .field("redrive_cooldown_ms", &self.redrive_cooldown_ms)
            .finish()
    }
}

/// `[api]`: who may submit and read messages.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token of the message routes; empty: protected mode (loopback only, no token).
    /// Taken verbatim even when it looks like a number.
    #[serde(deserialize_with = "crate::config::verbatim_string")]
    pub token: String,
    /// `POST /messages` accepted per second, all callers together (0: no limit).
    pub max_per_second: u32,
    /// How many may come at once above that rate.
    pub burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: String::new(),
            max_per_second: 100,
            burst: 200,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token", &"<redacted>")
            .field("max_per_second", &self.max_per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

/// Refuse to listen beyond loopback without the tokens that would guard it.
pub fn protected_mode(
    addr: SocketAddr,
    api: &ApiConfig,
    admin: &AdminConfig,
) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if api.token.is_empty() {
        return Err(format!(
            "http.addr = {addr} is not a loopback address and api.token is empty: anyone who \
             reaches it could send SMS; set api.token (DROVER_API__TOKEN) or listen on 127.0.0.1"
        ));
    }
    if admin.allow_destructive_actions && admin.token.is_empty() {
        return Err(format!(
            "http.addr = {addr} is not a loopback address, admin.allow_destructive_actions is on \
             and admin.token is empty: set admin.token (DROVER_ADMIN__TOKEN) or turn the switch off"
        ));
    }
    Ok(())
}

/// Who is calling, by the bearer token presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Api,
    Admin,
}

/// Equal in time independent of where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

/// What a request is allowed, and the limiter of submissions.
#[derive(Clone)]
pub struct Access {
    pub admin: AdminConfig,
    pub api: ApiConfig,
    /// The listener is on a loopback address (protected mode lets anonymous callers in).
    pub loopback: bool,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("admin", &self.admin)
            .field("api", &self.api)
            .field("loopback", &self.loopback)
            .finish()
    }
}

/// Why a request was refused: the status and a one-line explanation.
pub type Refused = (StatusCode, &'static str);

impl Access {
    pub fn new(admin: AdminConfig, api: ApiConfig, loopback: bool) -> Access {
        let limiter = NonZeroU32::new(api.max_per_second).map(|rate| {
            let burst = NonZeroU32::new(api.burst).unwrap_or(rate);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Access {
            admin,
            api,
            loopback,
            limiter,
        }
    }

    /// The caller, or 401 for a token that is neither.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refused> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        // The scheme is case-insensitive (RFC 7235): `bearer` and `BEARER` are `Bearer`.
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim_start())
            .unwrap_or_default()
            .as_bytes();
        let matches =
            |token: &str| !token.is_empty() && constant_time_eq(presented, token.as_bytes());
        if matches(&self.admin.token) {
            Ok(Caller::Admin)
        } else if matches(&self.api.token) {
            Ok(Caller::Api)
        } else {
            Err((StatusCode::UNAUTHORIZED, "wrong bearer token"))
        }
    }

    /// May this request use the message routes?
    pub fn messages(&self, headers: &HeaderMap) -> Result<Caller, Refused> {
        let caller = self.caller(headers)?;
        match caller {
            Caller::Api | Caller::Admin => Ok(caller),
            Caller::Anonymous if self.api.token.is_empty() && self.loopback => Ok(caller),
            Caller::Anonymous => Err((
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <api.token>)",
            )),
        }
    }

    /// May this request use an admin route that only reads or plans (a re-drive's dry run)?
    /// 401 unless the admin token.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Refused> {
        if self.admin.token.is_empty() {
            return Err((
                StatusCode::UNAUTHORIZED,
                "admin.token is not set on this server, so its admin routes refuse everyone \
                 (set admin.token, e.g. DROVER_ADMIN__TOKEN, and restart it)",
            ));
        }
        if self.caller(headers) != Ok(Caller::Admin) {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <admin.token>)",
            ));
        }
        Ok(())
    }

    /// May this request use a destructive admin route? 401 unless the admin token, 403 unless
    /// `admin.allow_destructive_actions`.
    pub fn destructive(&self, headers: &HeaderMap) -> Result<(), Refused> {
        self.admin(headers)?;
        if !self.admin.allow_destructive_actions {
            return Err((
                StatusCode::FORBIDDEN,
                "destructive actions are disabled (admin.allow_destructive_actions = false)",
            ));
        }
        Ok(())
    }

    /// Take one submission from the rate limit; `Err(seconds)` to wait when there is none.
    pub fn take_submission(&self) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// A message record as read without the admin token: body and most of the recipient hidden.
pub fn mask_record(mut record: Value) -> Value {
    if let Some(body) = record.get_mut("body") {
        let len = body.as_str().map_or(0, |b| b.chars().count());
        *body = Value::String(format!("<hidden: {len} characters>"));
    }
    if let Some(to) = record.get_mut("recipient")
        && let Some(s) = to.as_str()
    {
        *to = Value::String(mask_number(s));
    }
    record["masked"] = Value::Bool(true);
    record
}

/// `+15551234567` -> `+1•••••••67`: enough to tell numbers apart, not to know one.
pub fn mask_number(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 4 {
        return "•".repeat(chars.len());
    }
    let keep_head = 2;
    let keep_tail = 2;
    let mut out: String = chars[..keep_head].iter().collect();
    out.extend(std::iter::repeat_n(
        '•',
        chars.len() - keep_head - keep_tail,
    ));
    out.extend(&chars[chars.len() - keep_tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    fn admin(token: &str, allow: bool) -> AdminConfig {
        AdminConfig {
            token: token.into(),
            allow_destructive_actions: allow,
            redrive_cooldown_ms: 0,
        }
    }

    #[test]
    fn protected_mode_refuses_open_listeners_without_tokens() {
        let api = |t: &str| ApiConfig {
            token: t.into(),
            ..ApiConfig::default()
        };
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let cases = [
            (lo, api(""), admin("", true), true),
            (lo6, api(""), admin("", false), true),
            (any, api(""), admin("a", false), false),
            (any, api("k"), admin("", false), true),
            (any, api("k"), admin("", true), false),
            (any, api("k"), admin("a", true), true),
        ];
        for (addr, api, admin, ok) in cases {
            let r = protected_mode(addr, &api, &admin);
            assert_eq!(r.is_ok(), ok, "{addr} {r:?}");
            if let Err(e) = r {
                assert!(e.contains("http.addr"), "{e}");
            }
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_an_unset_token_says_so() {
        let access = Access::new(admin("adm", false), ApiConfig::default(), true);
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert_eq!(
                access.caller(&with(&format!("{scheme} adm"))),
                Ok(Caller::Admin),
                "{scheme}"
            );
        }
        assert!(access.caller(&with("Basic adm")).is_err());
        assert_eq!(access.admin(&with("bearer adm")), Ok(()));
        assert_eq!(
            access.destructive(&with("bearer adm")).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let unset = Access::new(admin("", true), ApiConfig::default(), true);
        let (code, why) = unset.admin(&with("Bearer x")).unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(
            why.contains("admin.token is not set on this server"),
            "{why}"
        );
    }

    #[test]
    fn numbers_are_masked() {
        assert_eq!(mask_number("+15551234567"), "+1••••••••67");
        assert_eq!(mask_number("+15551234567").chars().count(), 12);
        assert!(mask_number("+15551234567").starts_with("+1"));
        assert!(mask_number("+15551234567").ends_with("67"));
        assert_eq!(mask_number("+12"), "•••");
        let v =
            mask_record(serde_json::json!({"body": "code 1234", "recipient": "+4915112345678"}));
        assert_eq!(v["body"], "<hidden: 9 characters>");
        assert!(!v.to_string().contains("1234"));
        assert_eq!(v["masked"], true);
    }
}
