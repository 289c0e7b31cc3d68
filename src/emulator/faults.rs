//! The emulator's imitation of a hostile network and a busy API: the per-client throttle, and
//! injected faults (errors, dropped connections, slow answers) drawn from one seeded generator so
//! that a sequence of requests meets the same faults on every run with the same `--fault-seed`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `--rate-limit R/B`: on average R requests per second per client, in bursts of up to B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// OnePageCRM's throttle: about 5 requests/s on average with bursts of 10.
    pub const ONEPAGECRM: Self = Self {
        per_second: 5.0,
        burst: 10,
    };
}

/// Parses `R/B` or `off`.
pub fn parse_rate_limit(s: &str) -> Result<Option<RateLimit>, String> {
    if s == "off" {
        return Ok(None);
    }
    let (rate, burst) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not R/B (e.g. 5/10) or off"))?;
    let per_second: f64 = rate
        .trim()
        .parse()
        .map_err(|_| format!("{rate:?} is not a number of requests per second"))?;
    let burst: u32 = burst
        .trim()
        .parse()
        .map_err(|_| format!("{burst:?} is not a whole burst size"))?;
    if !(per_second.is_finite() && per_second > 0.0) || burst == 0 {
        return Err(format!("{s:?}: the rate and the burst must be above zero"));
    }
    Ok(Some(RateLimit { per_second, burst }))
}

/// Parses `MIN..MAX` milliseconds (or a single number).
pub fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let (min, max) = s.split_once("..").unwrap_or((s, s));
    let parse = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not MIN..MAX in milliseconds"))
    };
    let (min, max) = (parse(min)?, parse(max)?);
    if min > max {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((min, max))
}

/// One limiter per client (its user id, or its address before it authenticates).
pub struct Throttle {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Throttle {
    pub fn new(limit: RateLimit) -> Self {
        let period = Duration::from_secs_f64(1.0 / limit.per_second);
        let burst = NonZeroU32::new(limit.burst).expect("burst checked above zero");
        let quota = Quota::with_period(period)
            .expect("period above zero")
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// True when the client may go ahead now.
    pub fn admit(&self, client: &str) -> bool {
        self.limiter.check_key(&client.to_string()).is_ok()
    }
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer 500 (API) or 503 SlowDown (S3) without doing anything.
    Error,
    /// Close the connection without an answer, before the request has any effect.
    DropBefore,
    /// Do what the request asks, then close the connection without an answer.
    DropAfter,
    /// The request arrives late: the emulator's clock first moves past a form's life
    /// (`--form-ttl` + 1 s), so an upload's form has expired when S3 judges it.
    Late,
    /// Step 1 hands out a form that has already expired (a second before the clock's now), for
    /// whichever S3 judges it, the built-in one or an external server with its own clock.
    Expired,
}

/// The only route an `expired` fault means something on.
pub const STEP_1_ROUTE: &str = "GET /api/v3/attachments/s3_form";

/// `--fault-at 'METHOD /route:N:FAULT'`: the Nth request of one route (counted from 1, among
/// those that pass the throttle) meets FAULT whatever the rates draw, so that a test can lose
/// exactly the answer it means to. N is `N`, `N-M` or `N-` (from N on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// As the emulator counts requests: `POST /api/v3/attachments`, `GET /api/v3/notes/{id}`.
    pub route: String,
    pub from: u64,
    pub to: u64,
    pub fault: Fault,
}

/// Parses `METHOD /route:N:FAULT`, FAULT one of `error`, `drop-before`, `drop-after`, `late`,
/// or `expired` (step 1 only).
pub fn parse_fault_at(s: &str) -> Result<PlannedFault, String> {
    let usage = || {
        format!(
            "{s:?} is not 'METHOD /route:N:FAULT' (e.g. 'POST /api/v3/attachments:1:drop-after')"
        )
    };
    let mut parts = s.rsplitn(3, ':');
    let (Some(fault), Some(range), Some(route)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage());
    };
    let fault = match fault.trim() {
        "error" => Fault::Error,
        "drop-before" => Fault::DropBefore,
        "drop-after" => Fault::DropAfter,
        "late" => Fault::Late,
        "expired" => Fault::Expired,
        other => {
            return Err(format!(
                "{other:?} is not error, drop-before, drop-after, late or expired"
            ));
        }
    };
    let number = |v: &str| v.trim().parse::<u64>().ok().filter(|n| *n >= 1);
    let (from, to) = match range.split_once('-') {
        None => number(range).map(|n| (n, n)),
        Some((a, "")) => number(a).map(|n| (n, u64::MAX)),
        Some((a, b)) => number(a).zip(number(b)),
    }
    .filter(|(a, b)| a <= b)
    .ok_or_else(usage)?;
    let route = route.trim().to_string();
    if !route.contains(" /") {
        return Err(usage());
    }
    if fault == Fault::Expired && route != STEP_1_ROUTE {
        return Err(format!(
            "{s:?}: `expired` applies to step 1 only ('{STEP_1_ROUTE}:N:expired')"
        ));
    }
    Ok(PlannedFault {
        route,
        from,
        to,
        fault,
    })
}

#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    pub fault_rate: f64,
    pub drop_rate: f64,
    pub latency_ms: Option<(u64, u64)>,
    pub seed: u64,
    pub planned: Vec<PlannedFault>,
}

pub struct Faults {
    config: FaultConfig,
    rng: Mutex<StdRng>,
    /// Requests seen per route named by a planned fault.
    seen: Mutex<HashMap<String, u64>>,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let rng = Mutex::new(StdRng::seed_from_u64(config.seed));
        Self {
            config,
            rng,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The planned fault of the next request of `route`, if any.
    fn planned(&self, route: &str) -> Option<Fault> {
        if !self.config.planned.iter().any(|p| p.route == route) {
            return None;
        }
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(route.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        self.config
            .planned
            .iter()
            .find(|p| p.route == route && (p.from..=p.to).contains(&n))
            .map(|p| p.fault)
    }

    /// Draws the fate of the next request of `route`, and how long to hold it first.
    pub fn draw(&self, route: &str) -> (Fault, Option<Duration>) {
        let planned = self.planned(route);
        let c = &self.config;
        if c.fault_rate <= 0.0 && c.drop_rate <= 0.0 && c.latency_ms.is_none() {
            return (planned.unwrap_or(Fault::None), None);
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let delay = c
            .latency_ms
            .map(|(min, max)| Duration::from_millis(rng.random_range(min..=max)));
        let fault = if let Some(planned) = planned {
            planned
        } else if rng.random::<f64>() < c.fault_rate {
            Fault::Error
        } else if rng.random::<f64>() < c.drop_rate {
            if rng.random::<bool>() {
                Fault::DropAfter
            } else {
                Fault::DropBefore
            }
        } else {
            Fault::None
        };
        (fault, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_syntax() {
        assert_eq!(parse_rate_limit("5/10"), Ok(Some(RateLimit::ONEPAGECRM)));
        assert_eq!(parse_rate_limit("off"), Ok(None));
        assert_eq!(
            parse_rate_limit("0.5/1"),
            Ok(Some(RateLimit {
                per_second: 0.5,
                burst: 1
            }))
        );
        assert!(parse_rate_limit("5").is_err());
        assert!(parse_rate_limit("0/10").is_err());
        assert!(parse_rate_limit("5/0").is_err());
    }

    #[test]
    fn latency_syntax() {
        assert_eq!(parse_latency("10..50"), Ok((10, 50)));
        assert_eq!(parse_latency("7"), Ok((7, 7)));
        assert!(parse_latency("50..10").is_err());
    }

    #[test]
    fn throttle_allows_the_burst_then_refuses() {
        let t = Throttle::new(RateLimit::ONEPAGECRM);
        assert!((0..10).all(|_| t.admit("a")));
        assert!(!t.admit("a"));
        assert!(t.admit("b"), "each client has its own bucket");
    }

    #[test]
    fn same_seed_same_faults() {
        let config = FaultConfig {
            fault_rate: 0.3,
            drop_rate: 0.3,
            latency_ms: None,
            seed: 42,
            planned: Vec::new(),
        };
        let run = || {
            let f = Faults::new(config.clone());
            (0..200).map(|_| f.draw("GET /x").0).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        for kind in [
            Fault::None,
            Fault::Error,
            Fault::DropBefore,
            Fault::DropAfter,
        ] {
            assert!(first.contains(&kind), "{kind:?} never drawn");
        }
    }

    #[test]
    fn planned_faults_hit_the_nth_request_of_their_route_only() {
        let at = |s: &str| parse_fault_at(s).unwrap();
        assert_eq!(
            at("POST /api/v3/attachments:2-3:drop-after"),
            PlannedFault {
                route: "POST /api/v3/attachments".into(),
                from: 2,
                to: 3,
                fault: Fault::DropAfter
            }
        );
        assert_eq!(at("GET /a:4-:error").to, u64::MAX);
        assert_eq!(at("POST /{bucket}/:1:late").fault, Fault::Late);
        assert_eq!(
            at("GET /api/v3/attachments/s3_form:2-4:expired").fault,
            Fault::Expired
        );
        for bad in [
            "POST /{bucket}/:1:expired",
            "POST /a:0:error",
            "POST /a:1:boom",
            "POST:1:error",
            "POST /a:3-2:error",
            "x",
        ] {
            assert!(parse_fault_at(bad).is_err(), "{bad}");
        }
        let f = Faults::new(FaultConfig {
            planned: vec![at("POST /a:2:drop-before"), at("POST /a:4-:error")],
            ..Default::default()
        });
        let seen: Vec<Fault> = (0..5).map(|_| f.draw("POST /a").0).collect();
        assert_eq!(
            seen,
            [
                Fault::None,
                Fault::DropBefore,
                Fault::None,
                Fault::Error,
                Fault::Error
            ]
        );
        assert_eq!(
            f.draw("GET /a").0,
            Fault::None,
            "other routes are not counted"
        );
    }

    #[test]
    fn latency_is_drawn_within_its_bounds() {
        let f = Faults::new(FaultConfig {
            latency_ms: Some((5, 9)),
            ..Default::default()
        });
        for _ in 0..100 {
            let (fault, delay) = f.draw("GET /x");
            assert_eq!(fault, Fault::None);
            let ms = delay.unwrap().as_millis();
            assert!((5..=9).contains(&ms), "{ms}");
        }
    }
}
