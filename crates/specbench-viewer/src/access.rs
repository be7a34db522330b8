//! Who may read `specbench view`: the Host check and the token, run on every request before any
//! route (inside the layer that adds the security headers, so refusals carry them too).
//!
//! - **DNS rebinding.** A page on `evil.example` can point its name at 127.0.0.1 and then read
//!   the viewer as its own origin; its requests still say `Host: evil.example`. So only the
//!   names the server is bound to are answered: loopback names, the bound address, and
//!   `--allow-host` names; anything else gets 403. Bound to every address (0.0.0.0, ::) there is
//!   no list of names to hold requests to, so any Host is answered and the token does the work.
//! - **Anyone who can reach the port.** Off loopback a token is required, as in Jupyter. It
//!   comes once as `?token=` (the URL the command prints) and is exchanged for an HttpOnly,
//!   SameSite=Strict cookie, so the page's own requests carry it and scripts never see it; API
//!   callers send `Authorization: Bearer`. Every comparison is constant-time.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::TryRngCore;
use subtle::ConstantTimeEq;

use super::problem;

/// The shortest token `--token` takes: a short one could be guessed over the network.
const MIN_TOKEN_LEN: usize = 16;

/// The answer to a valid `?token=`: the cookie is set, then the page moves on to `/` by itself.
///
/// Why a page and not a 303 redirect: a browser that follows a redirect from a link clicked on
/// another site (a chat, a notebook) treats the redirected request as cross-site and leaves the
/// SameSite=Strict cookie off it. A navigation this page starts is same-site, so the cookie goes.
const EXCHANGE_HTML: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
    <meta http-equiv=\"refresh\" content=\"0; url=/\">\n<title>specbench view</title>\n</head>\n\
    <body><p><a href=\"/\">Open the viewer</a></p></body>\n</html>\n";

/// What a browser without the token sees instead of the page: no data, and how to get in.
const NEED_TOKEN_HTML: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
    <title>specbench view: token required</title>\n</head>\n<body>\n<h1>Token required</h1>\n\
    <p>Open the address <code>specbench view</code> printed: it ends in <code>?token=</code>.</p>\n\
    </body>\n</html>\n";

/// A token as given to `--token` or in `SPECBENCH_VIEW_TOKEN`, not yet checked. Parsing never
/// fails, because clap's message for a bad value repeats the value; [`Token::given`] checks it.
#[derive(Clone)]
pub struct GivenToken(String);

impl FromStr for GivenToken {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(GivenToken(text.to_string()))
    }
}

impl fmt::Debug for GivenToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GivenToken(****)")
    }
}

/// The token the viewer requires. `Debug` hides it; it is shown only in the one printed URL.
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

impl Token {
    /// 32 bytes from the operating system's generator, as 64 hex digits.
    pub fn generate() -> Result<Token, rand::rand_core::OsError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Token(hex::encode(bytes)))
    }

    /// A given token, if it is long enough and made of characters that pass unchanged through
    /// a URL, a cookie and a header. The error says what is wrong, never the token.
    pub fn given(given: GivenToken) -> Result<Token, String> {
        let text = given.0;
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            let shown = if bad.is_ascii_graphic() {
                format!("`{bad}`")
            } else {
                format!("{:?}", bad)
            };
            return Err(format!("the token holds {shown}; use letters, digits and `-._~` only"));
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token has {} characters; use at least {MIN_TOKEN_LEN}",
                text.len()
            ));
        }
        Ok(Token(text))
    }

    /// The token itself, for the one URL the command prints.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Constant-time in the content, so response times tell nothing about how much of a guess
    /// was right (only whether its length was).
    fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

/// Which Host names are answered.
#[derive(Debug)]
enum Hosts {
    /// Bound to every address: there is no name to hold requests to.
    Any,
    /// Names as [`host_name`] gives them.
    Only(Vec<String>),
}

/// The checks, fixed at start-up.
#[derive(Debug)]
pub struct Access {
    hosts: Hosts,
    /// `None`: no token is required.
    token: Option<Token>,
    /// Its name carries the port: browsers share cookies between the ports of a host, and two
    /// viewers on one machine must not overwrite each other's.
    cookie_name: String,
    /// The `Set-Cookie` value the `?token=` exchange sends, marked sensitive.
    set_cookie: Option<HeaderValue>,
}

impl Access {
    /// `allow_hosts` are `--allow-host` values; a bad one is named in the error.
    pub fn new(bound: SocketAddr, token: Option<Token>, allow_hosts: &[String]) -> Result<Access, String> {
        let hosts = if bound.ip().is_unspecified() {
            Hosts::Any
        } else {
            let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
            names.push(address_name(bound.ip()));
            for given in allow_hosts {
                names.push(
                    allowed_name(given).ok_or_else(|| format!("--allow-host {given:?}: not a host name or address"))?,
                );
            }
            Hosts::Only(names)
        };
        let cookie_name = format!("specbench_view_{}", bound.port());
        let set_cookie = match &token {
            None => None,
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(&format!("{cookie_name}={}; HttpOnly; SameSite=Strict; Path=/", token.0))
                        .map_err(|_| "the token cannot be sent in a cookie".to_string())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Access {
            hosts,
            token,
            cookie_name,
            set_cookie,
        })
    }

    /// The Host header, and the address of an absolute-form request line if there is one, are
    /// names this server answers to. No Host at all is refused: browsers always send one.
    fn host_allowed(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Hosts::Only(names) = &self.hosts else {
            return true;
        };
        let known = |host: &str| host_name(host).is_some_and(|name| names.contains(&name));
        let mut hosts = headers.get_all(header::HOST).iter().peekable();
        hosts.peek().is_some()
            && hosts.all(|value| value.to_str().is_ok_and(known))
            && uri.authority().is_none_or(|authority| known(authority.as_str()))
    }

    /// An `Authorization: Bearer` header or this viewer's cookie carries the token.
    fn presented(&self, token: &Token, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| {
                let (scheme, credentials) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
            });
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == self.cookie_name).then_some(value)
            });
        let mut candidates = bearer.chain(cookies);
        candidates.any(|candidate| token.matches(candidate))
    }
}

/// The middleware: 403 for a Host this server is not bound to, 401 without the token, the
/// cookie exchange for a valid `?token=`; otherwise the route answers.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if !access.host_allowed(request.headers(), request.uri()) {
        return problem(
            StatusCode::FORBIDDEN,
            "this viewer answers only to the names it is bound to; start it with --allow-host NAME \
             to reach it under another",
        );
    }
    let Some(token) = &access.token else {
        return next.run(request).await;
    };
    if let Some(given) = query_token(request.uri()) {
        return match (&access.set_cookie, token.matches(&given)) {
            (Some(cookie), true) => (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    ),
                    (header::SET_COOKIE, cookie.clone()),
                ],
                EXCHANGE_HTML,
            )
                .into_response(),
            _ => unauthorized(request.uri()),
        };
    }
    if access.presented(token, request.headers()) {
        next.run(request).await
    } else {
        unauthorized(request.uri())
    }
}

/// The `token` query parameter, if the query has one (a query that does not parse has none).
fn query_token(uri: &Uri) -> Option<String> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value)
}

/// 401 with no data: JSON for the API, a short page saying how to get in for the rest.
fn unauthorized(uri: &Uri) -> Response {
    let mut response = if uri.path().starts_with("/api/") {
        problem(
            StatusCode::UNAUTHORIZED,
            "a token is required: send `Authorization: Bearer TOKEN`, or open the URL `specbench view` printed",
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            NEED_TOKEN_HTML,
        )
            .into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"specbench view\""),
    );
    response
}

/// How a Host header names an address: IPv6 in brackets.
fn address_name(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The name in a Host header (`name`, `name:port`, `[v6]`, `[v6]:port`), lower-cased, IPv6 in
/// its shortest form; `None` when the text is not one. The port is not compared: a viewer
/// reached through a forwarded port (`ssh -L 9000:localhost:8350`) sees the forwarded one.
fn host_name(host: &str) -> Option<String> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (address_name(IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)), port)
        }
        None => {
            let (name, port) = match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            };
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            (valid.then(|| name.to_ascii_lowercase())?, port)
        }
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return None;
    }
    Some(name)
}

/// An `--allow-host` value as [`host_name`] would read it from a Host header; a bare IPv6
/// address (`::1`) is taken too.
fn allowed_name(given: &str) -> Option<String> {
    match given.parse::<IpAddr>() {
        Ok(ip) => Some(address_name(ip)),
        Err(_) => host_name(given),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("localhost", Some("localhost") ; "a bare name")]
    #[test_case("LocalHost:8350", Some("localhost") ; "case and port dropped")]
    #[test_case("127.0.0.1:0", Some("127.0.0.1") ; "an address with a port")]
    #[test_case("[::1]:8350", Some("[::1]") ; "IPv6 with a port")]
    #[test_case("[0:0:0:0:0:0:0:1]", Some("[::1]") ; "IPv6 in its long form")]
    #[test_case("[::1", None ; "an unclosed bracket")]
    #[test_case("[evil.example]", None ; "brackets around a name")]
    #[test_case("localhost:http", None ; "a port that is not a number")]
    #[test_case("localhost:99999", None ; "a port out of range")]
    #[test_case("evil.example@localhost", None ; "userinfo")]
    #[test_case("", None ; "empty")]
    #[test_case(":8350", None ; "a port alone")]
    fn reads_host_names(host: &str, expected: Option<&str>) {
        assert_eq!(host_name(host).as_deref(), expected);
    }

    fn loopback_with_token() -> Result<Access, String> {
        let token = Token::given("0123456789abcdef-token".parse().map_err(|_| "unreachable")?)?;
        Access::new(
            SocketAddr::from(([127, 0, 0, 1], 8350)),
            Some(token),
            &["Viewer.Example".into()],
        )
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.append(name.clone(), value);
            }
        }
        map
    }

    #[test]
    fn only_bound_and_allowed_names_pass() -> Result<(), String> {
        let access = loopback_with_token()?;
        let uri = Uri::from_static("/");
        for host in ["localhost:8350", "127.0.0.1", "[::1]:1", "viewer.example:443"] {
            assert!(access.host_allowed(&headers(&[(header::HOST, host)]), &uri), "{host}");
        }
        for host in ["evil.example", "localhost.evil.example", "127.0.0.2"] {
            assert!(!access.host_allowed(&headers(&[(header::HOST, host)]), &uri), "{host}");
        }
        assert!(!access.host_allowed(&HeaderMap::new(), &uri), "no Host");
        let absolute = Uri::from_static("http://evil.example/api/runs");
        assert!(
            !access.host_allowed(&headers(&[(header::HOST, "localhost")]), &absolute),
            "an absolute-form request line names the host too"
        );
        let any = Access::new(SocketAddr::from(([0, 0, 0, 0], 8350)), None, &[])?;
        assert!(any.host_allowed(&headers(&[(header::HOST, "evil.example")]), &uri));
        Ok(())
    }

    #[test]
    fn the_token_comes_by_bearer_or_this_ports_cookie() -> Result<(), String> {
        let access = loopback_with_token()?;
        let token = access.token.as_ref().ok_or("no token")?;
        let good = "0123456789abcdef-token";
        for (name, value) in [
            (header::AUTHORIZATION, format!("Bearer {good}")),
            (header::AUTHORIZATION, format!("bearer  {good}")),
            (header::COOKIE, format!("other=1; specbench_view_8350={good}")),
        ] {
            assert!(access.presented(token, &headers(&[(name, &value)])), "{value}");
        }
        for (name, value) in [
            (header::AUTHORIZATION, "Bearer 0123456789abcdef-tokeN".to_string()),
            (header::AUTHORIZATION, format!("Basic {good}")),
            (
                header::AUTHORIZATION,
                "Bearer 0123456789abcdef-token-and-more".to_string(),
            ),
            (header::COOKIE, format!("specbench_view_8351={good}")),
            (header::COOKIE, "specbench_view_8350=".to_string()),
        ] {
            assert!(!access.presented(token, &headers(&[(name, &value)])), "{value}");
        }
        Ok(())
    }

    #[test]
    fn given_tokens_are_checked_without_being_repeated() {
        let check = |text: &str| text.parse().map_err(|_| String::new()).and_then(Token::given);
        assert!(check("0123456789abcdef").is_ok());
        for bad in ["short-secret", "0123456789abcdef;x", "0123456789 abcdef", ""] {
            let Err(message) = check(bad) else {
                panic!("{bad:?} was taken");
            };
            assert!(bad.is_empty() || !message.contains(bad), "{message}");
        }
    }

    #[test]
    fn generated_tokens_are_long_and_differ() -> Result<(), rand::rand_core::OsError> {
        let (a, b) = (Token::generate()?, Token::generate()?);
        assert_eq!(a.reveal().len(), 64);
        assert_ne!(a.reveal(), b.reveal());
        assert_eq!(format!("{a:?}"), "Token(****)");
        Ok(())
    }
}
