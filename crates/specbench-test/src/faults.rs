//! A fault mix for the stub server: at a set rate, a request gets a rate limit, a server error,
//! a dropped connection, a hang, a broken body or a cut or filtered answer instead of its reply.
//!
//! Which request gets which fault is a pure function of the request body and of how often that
//! body was seen, so a run is reproducible. A transient fault hits a body at most
//! `max_faults_per_request` times; after that it is answered, as a recovering server would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Reply;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 429 with `Retry-After: 1` (seconds).
    RateLimitSeconds,
    /// 429 with `Retry-After` as an HTTP date one second ahead.
    RateLimitDate,
    Status500,
    Status502,
    Status503,
    /// Headers sent, then the connection dropped.
    Reset,
    /// An answer only after the client's timeout.
    Hang,
    /// A 200 whose JSON body is cut in half.
    TruncatedBody,
    /// A 200 whose body is not JSON.
    InvalidJson,
    /// A completion whose content is null.
    EmptyContent,
    /// The reply cut short, `finish_reason: length` (a valid, different answer: not transient).
    Length,
    /// Content null with `finish_reason: content_filter` (not transient).
    ContentFilter,
}

impl Fault {
    /// Every fault: first the transient ones, then the two that change the answer.
    pub const ALL: [Fault; 12] = [
        Fault::RateLimitSeconds,
        Fault::RateLimitDate,
        Fault::Status500,
        Fault::Status502,
        Fault::Status503,
        Fault::Reset,
        Fault::Hang,
        Fault::TruncatedBody,
        Fault::InvalidJson,
        Fault::EmptyContent,
        Fault::Length,
        Fault::ContentFilter,
    ];

    /// Faults a retry gets past, leaving the final answer unchanged.
    pub const TRANSIENT: &'static [Fault] = Fault::ALL.split_at(10).0;

    fn is_transient(self) -> bool {
        Fault::TRANSIENT.contains(&self)
    }
}

/// Decides, counts and produces faults.
pub struct FaultMix {
    kinds: Vec<Fault>,
    /// Share of first attempts that get a fault, in parts per thousand.
    per_mille: u64,
    max_faults_per_request: u32,
    hang: Duration,
    seen: Mutex<HashMap<[u8; 32], u32>>,
    injected: Mutex<BTreeMap<Fault, u64>>,
    answered: Mutex<u64>,
}

impl FaultMix {
    /// `rate` of requests (0.0–1.0) get one of `kinds`; a hang lasts `hang`.
    pub fn new(kinds: &[Fault], rate: f64, hang: Duration) -> FaultMix {
        FaultMix {
            kinds: kinds.to_vec(),
            per_mille: (rate.clamp(0.0, 1.0) * 1000.0).round() as u64,
            max_faults_per_request: 2,
            hang,
            seen: Mutex::new(HashMap::new()),
            injected: Mutex::new(BTreeMap::new()),
            answered: Mutex::new(0),
        }
    }

    /// The reply to `request`: a fault, or `good(request)`.
    pub fn reply(&self, request: &Value, good: impl Fn(&Value) -> String) -> Reply {
        let body = request.to_string();
        let digest: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        let attempt = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let count = seen.entry(digest).or_insert(0);
            *count += 1;
            *count
        };
        // Each attempt draws afresh from the digest and the attempt number.
        let draw = |salt: u32| {
            let mut hasher = Sha256::new();
            hasher.update(digest);
            hasher.update(attempt.to_le_bytes());
            hasher.update(salt.to_le_bytes());
            let out = hasher.finalize();
            u64::from_le_bytes([out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]])
        };
        let fault = if self.kinds.is_empty() || draw(0) % 1000 >= self.per_mille {
            None
        } else {
            let kind = self.kinds[(draw(1) % self.kinds.len() as u64) as usize];
            // A transient fault gives way after a few attempts; an answer-changing one stays.
            (!kind.is_transient() || attempt <= self.max_faults_per_request).then_some(kind)
        };
        let Some(fault) = fault else {
            *self.answered.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            return Reply::Content(good(request));
        };
        *self
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(fault)
            .or_insert(0) += 1;
        let status = |status: u16, retry_after: Option<String>| Reply::Status {
            status,
            body: format!("injected fault: HTTP {status}"),
            retry_after,
        };
        match fault {
            Fault::RateLimitSeconds => status(429, Some("1".into())),
            Fault::RateLimitDate => status(
                429,
                Some(httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1))),
            ),
            Fault::Status500 => status(500, None),
            Fault::Status502 => status(502, None),
            Fault::Status503 => status(503, None),
            Fault::Reset => Reply::Reset,
            Fault::Hang => Reply::Hang(self.hang),
            Fault::TruncatedBody => {
                let whole = serde_json::json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": good(request)},
                                 "finish_reason": "stop"}],
                })
                .to_string();
                Reply::RawBody(whole.chars().take(whole.chars().count() / 2).collect())
            }
            Fault::InvalidJson => Reply::RawBody("<html>502 Bad Gateway</html>".into()),
            Fault::EmptyContent => Reply::Finish {
                content: None,
                finish_reason: "stop".into(),
            },
            Fault::Length => {
                let full = good(request);
                Reply::Finish {
                    content: Some(full.chars().take(full.chars().count() / 2).collect()),
                    finish_reason: "length".into(),
                }
            }
            Fault::ContentFilter => Reply::Finish {
                content: None,
                finish_reason: "content_filter".into(),
            },
        }
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.injected.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Requests answered normally so far.
    pub fn answered(&self) -> u64 {
        self.answered.lock().map(|n| *n).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transient_faults_give_way_and_the_mix_is_reproducible() {
        let request = json!({"messages": [{"role": "user", "content": "q"}]});
        let good = |_: &Value| "fine".to_string();
        let replies =
            |mix: &FaultMix| -> Vec<String> { (0..3).map(|_| format!("{:?}", mix.reply(&request, good))).collect() };
        let mix = FaultMix::new(Fault::TRANSIENT, 1.0, Duration::ZERO);
        let first = replies(&mix);
        assert!(
            !first[0].starts_with("Content") && !first[1].starts_with("Content"),
            "{first:?}"
        );
        assert_eq!(first[2], "Content(\"fine\")", "two faults, then the answer");
        assert_eq!(mix.injected().values().sum::<u64>(), 2);
        // Date-valued Retry-After headers differ by the clock; the kinds do not.
        let kinds =
            |replies: Vec<String>| -> Vec<String> { replies.iter().map(|r| r.chars().take(12).collect()).collect() };
        let again = FaultMix::new(Fault::TRANSIENT, 1.0, Duration::ZERO);
        assert_eq!(kinds(replies(&again)), kinds(first));
    }

    #[test]
    fn the_rate_is_roughly_kept() {
        let mix = FaultMix::new(&Fault::ALL, 0.2, Duration::ZERO);
        for i in 0..2000 {
            let _ = mix.reply(&json!({"n": i}), |_| "x".to_string());
        }
        let faults: u64 = mix.injected().values().sum();
        assert!((300..=500).contains(&faults), "{faults} faults in 2000");
    }
}
