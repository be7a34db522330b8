//! Secrets kept off everything people read or files keep: URLs whose credentials print as
//! `****`, and error texts with a known secret's value cut out.
//!
//! The pattern is uv's `uv-redacted`: the URL as typed is only reachable through
//! [`RedactedUrl::expose`], which the HTTP code calls to send a request; every other use
//! (`Display`, `Debug`, manifests, logs, errors, cache keys) sees the redacted form.

use std::fmt;

use url::Url;

/// What a redacted secret is replaced with.
pub const MASK: &str = "****";

/// Query parameters whose values are credentials, compared without case, `-` or `_`
/// (`api_key`, `API-Key` and `apikey` are one name).
const CREDENTIAL_PARAMETERS: [&str; 8] = [
    "key",
    "apikey",
    "token",
    "accesstoken",
    "sig",
    "signature",
    "secret",
    "password",
];

fn is_credential_parameter(name: &str) -> bool {
    let normalized: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    CREDENTIAL_PARAMETERS.contains(&normalized.as_str())
}

/// A URL that never shows its user name, password or credential query values.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl {
    url: Url,
    /// The redacted text, computed once: it is shown in every error and log line.
    shown: String,
}

impl RedactedUrl {
    pub fn new(url: Url) -> RedactedUrl {
        let shown = redacted_text(&url);
        RedactedUrl { url, shown }
    }

    pub fn parse(raw: &str) -> Result<RedactedUrl, url::ParseError> {
        Url::parse(raw).map(RedactedUrl::new)
    }

    /// The URL as typed, secrets and all: only for sending a request.
    pub fn expose(&self) -> &Url {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// `path` appended to this URL's path (`/v1` + `chat/completions`), the query kept where it
    /// belongs, after the path. Gluing strings instead would put the query inside the path.
    pub fn join_path(&self, path: &str) -> RedactedUrl {
        let mut url = self.url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            segments.extend(path.split('/').filter(|s| !s.is_empty()));
        }
        RedactedUrl::new(url)
    }

    /// The secret values this URL carries (password, credential query values), so that a
    /// server echoing one back can be redacted.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self
            .url
            .query_pairs()
            .filter(|(name, value)| is_credential_parameter(name) && !value.is_empty())
            .map(|(_, value)| value.into_owned())
            .collect();
        if let Some(password) = self.url.password() {
            secrets.push(password.to_string());
            // As typed, percent-encoded: a server echoing the raw URL shows it so.
            if let Ok(decoded) = percent_decoded(password) {
                secrets.push(decoded);
            }
        }
        if let Some(query) = self.url.query() {
            // Raw (still percent-encoded) values too, for servers that echo the query as sent.
            for pair in query.split('&') {
                if let Some((name, value)) = pair.split_once('=')
                    && is_credential_parameter(name)
                    && !value.is_empty()
                {
                    secrets.push(value.to_string());
                }
            }
        }
        secrets.sort();
        secrets.dedup();
        secrets
    }
}

fn percent_decoded(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (byte, hex) {
            (b'%', Some(value)) => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// User and password dropped, credential query values masked, a trailing `/` trimmed (as base
/// URLs were always shown). A URL without secrets prints exactly as before, so the manifests and
/// cache keys of such runs do not change.
fn redacted_text(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let has_credentials = shown.query_pairs().any(|(name, _)| is_credential_parameter(&name));
    if has_credentials {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_credential_parameter(&name) {
                    MASK.to_string()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let text = shown.as_str();
    if shown.query().is_none() && shown.fragment().is_none() {
        text.trim_end_matches('/').to_string()
    } else {
        text.to_string()
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({})", self.shown)
    }
}

/// A URL as typed that did not parse, shown without anything after `?` or before `@`, where
/// credentials would be.
pub fn unparsed_url(raw: &str) -> String {
    let without_query = match raw.split_once('?') {
        Some((before, _)) => format!("{before}?{MASK}"),
        None => raw.to_string(),
    };
    match without_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{MASK}@{host}"),
            None => without_query,
        },
        None => without_query,
    }
}

/// `text` with every occurrence of each secret replaced by [`MASK`]; empty secrets are ignored.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    // Longest first: a secret that contains another is masked whole.
    let mut ordered: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in ordered {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1" ; "no secrets: as before")]
    #[test_case("http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1" ; "trailing slash trimmed as before")]
    #[test_case("http://u:p@h/v1", "http://h/v1" ; "user and password dropped")]
    #[test_case("http://h/v1?api_key=s3cret&region=eu", "http://h/v1?api_key=****&region=eu" ; "credential masked, others kept")]
    #[test_case("http://h/v1?API-Key=a&Token=b&sig=c", "http://h/v1?API-Key=****&Token=****&sig=****" ; "names compared loosely")]
    #[test_case("http://h/v1?monkey=x", "http://h/v1?monkey=x" ; "only whole names")]
    fn shows_no_secret(raw: &str, shown: &str) -> Result<(), url::ParseError> {
        assert_eq!(RedactedUrl::parse(raw)?.to_string(), shown);
        Ok(())
    }

    #[test]
    fn a_path_goes_before_the_query() -> Result<(), url::ParseError> {
        let base = RedactedUrl::parse("http://h:1/v1?api_key=s3cret")?;
        let joined = base.join_path("chat/completions");
        assert_eq!(
            joined.expose().as_str(),
            "http://h:1/v1/chat/completions?api_key=s3cret"
        );
        assert_eq!(joined.to_string(), "http://h:1/v1/chat/completions?api_key=****");
        assert_eq!(
            RedactedUrl::parse("https://h")?
                .join_path("chat/completions")
                .expose()
                .as_str(),
            "https://h/chat/completions"
        );
        assert_eq!(
            RedactedUrl::parse("http://h/v1/")?.join_path("score").expose().as_str(),
            "http://h/v1/score"
        );
        Ok(())
    }

    #[test]
    fn secrets_are_listed_and_cut_from_text() -> Result<(), url::ParseError> {
        let url = RedactedUrl::parse("http://user:pa%24s@h/v1?key=a%2Bb&x=1")?;
        let secrets = url.secrets();
        for secret in ["pa%24s", "pa$s", "a+b", "a%2Bb"] {
            assert!(secrets.iter().any(|s| s == secret), "{secret} in {secrets:?}");
        }
        assert_eq!(redact("echo a+b and pa$s", &secrets), "echo **** and ****");
        assert_eq!(redact("nothing", &[String::new()]), "nothing");
        Ok(())
    }

    #[test]
    fn an_unparsed_url_hides_query_and_user() {
        assert_eq!(unparsed_url("htp:/x y?key=s"), "htp:/x y?****");
        assert_eq!(unparsed_url("http://u:p@h:99999"), "http://****@h:99999");
    }
}
