//! Secrets out of URLs, by parsing them (the `url` crate), never by splitting strings: a
//! password holding `@`, a percent-encoded one, a token in a query or a path all come out.
//!
//! * [`origin`] is how errors and logs name a URL: scheme, host and port, nothing else.
//! * [`redact_url`] is how `drover config` shows a secret-bearing setting: whole, with the
//!   password, the values of secret-looking query keys and (when asked) the path replaced.

use url::Url;

/// What a secret is replaced with.
pub const REDACTED: &str = "REDACTED";

/// Query keys whose values are secrets (matched case-insensitively, as substrings).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "key",
    "secret",
    "signature",
    "sig",
    "auth",
    "credential",
];

/// Scheme, host and port of `url` (`https://hooks.example.com:8443`); `<unparseable URL>`
/// for a string that is not one, so nothing of it leaks either.
pub fn origin(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(u) => match u.host_str() {
            Some(host) => match u.port() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            },
            None => format!("{}:", u.scheme()),
        },
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// `url` with its password, the values of secret-looking query keys and, with `path`, its
/// path replaced by [`REDACTED`]. A value that does not parse as a URL is shown as it is when
/// it cannot hold a secret (no `@`, `?`, `:`, e.g. `memory`), else replaced whole.
pub fn redact_url(url: &str, path: bool) -> String {
    let Ok(mut u) = Url::parse(url.trim()) else {
        return if url.contains(['@', '?', ':', '/']) {
            format!("<{REDACTED} unparseable URL>")
        } else {
            url.to_owned()
        };
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(REDACTED));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_KEYS.iter().any(|s| lower.contains(s));
                (
                    k.into_owned(),
                    if secret {
                        REDACTED.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if path && !u.cannot_be_a_base() && u.path() != "/" && !u.path().is_empty() {
        u.set_path(&format!("/{REDACTED}"));
    }
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_survive() {
        let cases: &[(&str, bool, &str)] = &[
            (
                "postgres://drover:p@ss@127.0.0.1/drover?password=s3cret&sslmode=require",
                false,
                "postgres://drover:REDACTED@127.0.0.1/drover?password=REDACTED&sslmode=require",
            ),
            (
                "postgres://drover:p%40ss@127.0.0.1:5432/drover",
                false,
                "postgres://drover:REDACTED@127.0.0.1:5432/drover",
            ),
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                false,
                "amqp://guest:REDACTED@127.0.0.1:5672/%2f",
            ),
            (
                "https://sms.example.com/send?api_key=k1&Sig=abc&to=1",
                false,
                "https://sms.example.com/send?api_key=REDACTED&Sig=REDACTED&to=1",
            ),
            (
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                true,
                "https://hooks.slack.com/REDACTED",
            ),
            (
                "https://AC123:authtoken@api.twilio.com",
                false,
                "https://AC123:REDACTED@api.twilio.com/",
            ),
            ("memory", false, "memory"),
            (
                "sqlite://drover.db?mode=rwc",
                false,
                "sqlite://drover.db?mode=rwc",
            ),
            (
                "not a url but: user:pw@host",
                false,
                "<REDACTED unparseable URL>",
            ),
        ];
        for (input, path, want) in cases {
            let got = redact_url(input, *path);
            assert_eq!(&got, want, "{input}");
            for secret in [
                "p@ss",
                "p%40ss",
                "s3cret",
                "k1",
                "abc",
                "XXXXSECRET",
                "authtoken",
            ] {
                if input.contains(secret) {
                    assert!(!got.contains(secret), "{input} -> {got}");
                }
            }
        }
    }

    #[test]
    fn origins_name_scheme_host_and_port_only() {
        assert_eq!(
            origin("https://user:pw@hooks.example.com:8443/t/secret?k=v"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(
            origin("amqp://g:g@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672"
        );
        assert_eq!(origin("https://api.twilio.com/x"), "https://api.twilio.com");
        assert_eq!(origin("nonsense"), "<unparseable URL>");
    }
}
