//! `specbench view`: serves the results viewer (`specbench-viewer`) from this binary: the token
//! rule, the listening address, and what is printed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use specbench_viewer::GivenToken;
use specbench_viewer::{Access, Token, Viewer};

use crate::args::ViewArgs;
use crate::commands::{ExitStatus, UsageError, alpha};
use crate::report::{results_folder, rule_texts};

/// Whether a token is required, and where it came from.
enum TokenChoice {
    None,
    Given(Token),
    Generated(Token),
}

/// The token rule: `--no-token` none (it is said on the command line, so it wins over a token
/// in the environment); `--token` (or the variable) that one; otherwise a random one off
/// loopback and none on it.
fn choose_token(args: &ViewArgs) -> anyhow::Result<TokenChoice> {
    if args.no_token {
        return Ok(TokenChoice::None);
    }
    if let Some(given) = &args.token {
        let token = Token::given(given.clone())
            .map_err(|problem| UsageError(format!("--token (or {}): {problem}", specbench::env::Env::VIEW_TOKEN)))?;
        return Ok(TokenChoice::Given(token));
    }
    if args.host.to_canonical().is_loopback() {
        return Ok(TokenChoice::None);
    }
    let token = Token::generate().map_err(|e| anyhow::anyhow!("cannot draw a random token from the system: {e}"))?;
    Ok(TokenChoice::Generated(token))
}

pub async fn view(args: ViewArgs) -> anyhow::Result<ExitStatus> {
    let choice = choose_token(&args)?;
    results_folder(&args.results)?;
    let alpha = alpha(args.alpha)?;
    let rules = rule_texts(args.data.as_deref())?;
    // The index sits beside the response cache, never in the results folder.
    let index_dir = specbench::cache::default_dir().join("view");
    let viewer = Viewer::open(&args.results, alpha, &rules, &index_dir).map_err(|e| UsageError(e.to_string()))?;
    let viewer = Arc::new(viewer);
    let address = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| UsageError(format!("cannot listen on {address}: {e}")))?;
    let bound = listener.local_addr()?;
    // Bound to every address, the URL names loopback: browsers refuse 0.0.0.0.
    let shown = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port()),
        _ => bound,
    };
    let mut url = format!("http://{shown}/");
    let (token, note) = match choice {
        TokenChoice::None => (None, None),
        TokenChoice::Given(token) => (
            Some(token),
            Some(format!(
                "the token from --token or {} is required (open {url}?token=TOKEN)",
                specbench::env::Env::VIEW_TOKEN
            )),
        ),
        TokenChoice::Generated(token) => {
            url.push_str("?token=");
            url.push_str(token.reveal());
            (Some(token), None)
        }
    };
    let access = Access::new(bound, token, &args.allow_host).map_err(UsageError)?;
    let every_address = bound.ip().is_unspecified();
    if args.no_token {
        let reach = if every_address {
            format!("port {} on any address of this machine", bound.port())
        } else {
            bound.to_string()
        };
        eprintln!(
            "specbench view: WARNING: --no-token: no token is required. Anyone who can reach {reach} \
             can read every prompt, response and judge reason in these results."
        );
    }
    if every_address {
        eprintln!("specbench view: listening on every address ({bound}): any Host name is answered");
    }
    if let Some(note) = note {
        eprintln!("specbench view: {note}");
    }
    {
        let mut out = std::io::stdout().lock();
        std::io::Write::write_fmt(
            &mut out,
            format_args!("specbench view: {url} ({} runs)\n", viewer.runs()),
        )?;
        std::io::Write::flush(&mut out)?;
    }
    specbench_viewer::serve(listener, viewer, Arc::new(access), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitStatus::Success)
}
