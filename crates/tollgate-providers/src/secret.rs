//! Secrets kept out of what tollgate prints: a [`Secret`] type for configured credentials,
//! URLs shown with their credentials masked, and a [`Redactor`] that takes provider
//! secrets, and anything shaped like a key or token, out of upstream text before tollgate
//! passes it on or logs it.

use regex::{Captures, Regex};
use std::borrow::Cow;
use std::sync::OnceLock;

/// What replaces a secret.
pub const MASK: &str = "*****";

/// A configured credential: `Debug` prints a mask, never the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl std::fmt::Debug for Secret<String> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { MASK })
    }
}

/// A URL from the configuration. `Debug` and `Display` show it with its user information
/// and secret-looking query values masked; [`ConfigUrl::as_str`] gives the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigUrl(String);

impl ConfigUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConfigUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Debug for ConfigUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", redact_url(&self.0))
    }
}

/// Query parameter names whose values are treated as secrets (matched case-insensitively,
/// anywhere in the name).
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "credential",
    "session",
];

/// `url` with its user information and its secret-looking query values masked. Text that
/// does not parse as a URL is masked between `://` and its last `@`, if it has both.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}://{MASK}{}", &url[..s], &url[at..]),
            _ => url.to_owned(),
        };
    };
    let had_userinfo = !parsed.username().is_empty() || parsed.password().is_some();
    let secret_query = parsed.query_pairs().any(|(k, _)| is_secret_param(&k));
    if !had_userinfo && !secret_query {
        return url.to_owned();
    }
    if secret_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if had_userinfo {
        // Some URLs (cannot-be-a-base) refuse user information; they have none to mask.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username(MASK);
    }
    // The mask is percent-encoded inside a URL; show it as written.
    parsed.to_string().replace("%2A%2A%2A%2A%2A", MASK)
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// Takes secrets out of text that came from an upstream: the configured provider secrets,
/// bearer and basic credentials, API keys of the usual shapes (`sk-…`, `AIza…`), values of
/// `api_key=`-like fields, and long tokens mixing letters and digits. The rest of the text
/// is kept.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret<String>>,
}

struct Patterns {
    scheme: Regex,
    key_shapes: Regex,
    fields: Regex,
    long_tokens: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    // The patterns are constants: the unit tests below compile every one.
    let compile = |re: &str| Regex::new(re).expect("a valid pattern");
    PATTERNS.get_or_init(|| Patterns {
        scheme: compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}"),
        key_shapes: compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_*-]{6,}|\bAIza[0-9A-Za-z_-]{16,}"),
        fields: compile(
            r#"(?i)\b(api[_-]?key|x-api-key|access[_-]?token|secret|password|authorization)(["']?\s*[:=]\s*["']?)[^\s"'&,;]{4,}"#,
        ),
        long_tokens: compile(r"[A-Za-z0-9_-]{32,}"),
    })
}

impl Redactor {
    /// A redactor of `secrets` (empty ones are ignored) and the usual shapes.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<Secret<String>> = secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= 4)
            .map(Secret::new)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Self { secrets }
    }

    /// `text` with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.expose().as_str()) {
                out = Cow::Owned(out.replace(secret.expose().as_str(), MASK));
            }
        }
        let p = patterns();
        let out = replace(out, &p.scheme, |c| format!("{} {MASK}", &c[1]));
        let out = replace(out, &p.key_shapes, |_| MASK.to_owned());
        let out = replace(out, &p.fields, |c| format!("{}{}{MASK}", &c[1], &c[2]));
        replace(out, &p.long_tokens, |c| {
            let token = &c[0];
            let mixed = token.bytes().any(|b| b.is_ascii_digit())
                && token.bytes().any(|b| b.is_ascii_alphabetic());
            if mixed {
                MASK.to_owned()
            } else {
                token.to_owned()
            }
        })
    }
}

fn replace<'a>(
    text: Cow<'a, str>,
    re: &Regex,
    with: impl Fn(&Captures<'_>) -> String,
) -> Cow<'a, str> {
    if !re.is_match(&text) {
        return text;
    }
    Cow::Owned(
        re.replace_all(&text, |c: &Captures<'_>| with(c))
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redact_url(
                "postgres://tollgate:hunter2@db.internal:5432/tg?sslmode=require&password=x1"
            ),
            "postgres://*****@db.internal:5432/tg?sslmode=require&password=*****"
        );
        assert_eq!(
            redact_url("https://user@api.example.com/v1?api_key=abc&region=eu"),
            "https://*****@api.example.com/v1?api_key=*****&region=eu"
        );
        assert_eq!(redact_url("sqlite://tollgate.db"), "sqlite://tollgate.db");
        assert_eq!(
            redact_url("https://api.openai.com/v1"),
            "https://api.openai.com/v1"
        );
        assert_eq!(redact_url("weird://a:b@c d"), "weird://*****@c d");
        assert_eq!(
            format!("{:?}", ConfigUrl::new("postgres://u:p@h/d")),
            "\"postgres://*****@h/d\""
        );
        assert_eq!(format!("{:?}", Secret::new("sk-live".to_owned())), "*****");
    }

    #[test]
    fn upstream_text_loses_secrets_and_keeps_its_words() {
        let r = Redactor::new(["configured-secret-value".to_owned()]);
        let cases = [
            (
                "Incorrect API key provided: sk-proj-AbC123dEf456. You can find your API key at https://platform.openai.com/account/api-keys.",
                "Incorrect API key provided: *****. You can find your API key at https://platform.openai.com/account/api-keys.",
            ),
            ("header was Bearer sk-upstream-test", "header was Bearer *****"),
            ("echo: configured-secret-value!", "echo: *****!"),
            ("api_key=abcd1234 rejected", "api_key=***** rejected"),
            (r#"{"password": "letmein99"}"#, r#"{"password": "*****"}"#),
            ("key AIzaSyA1234567890abcdefghij is invalid", "key ***** is invalid"),
            ("token 0123456789abcdef0123456789abcdef0 leaked", "token ***** leaked"),
            ("id a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7 leaked", "id ***** leaked"),
            ("The model `gpt-4o` does not exist", "The model `gpt-4o` does not exist"),
            ("a_very_long_identifier_without_any_digits_at_all", "a_very_long_identifier_without_any_digits_at_all"),
        ];
        for (text, want) in cases {
            assert_eq!(r.redact(text), want, "{text}");
        }
    }
}
