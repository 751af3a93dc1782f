//! Unit tests of `providers`, beside it (moved out of the file to keep it readable).

use super::*;

#[tokio::test(start_paused = true)]
async fn window_admits_limit_then_429_until_the_oldest_leaves() {
    let cfg = FakeProvidersConfig {
        limits: FakeLimits::uniform(3, Duration::from_secs(10)),
        ..FakeProvidersConfig::default()
    };
    let fake = FakeProviders::start(cfg).await.unwrap();
    let s = &fake.shared;
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(matches!(
            s.admit(FakeLane::MiniMaxVideo, "k", 0),
            Gate::Admitted(_)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    match s.admit(FakeLane::MiniMaxVideo, "k", 0) {
        Gate::Limited { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(7)),
        Gate::Admitted(_) => panic!("4th request in the window admitted"),
    }
    // Another key and another lane are separate.
    assert!(matches!(
        s.admit(FakeLane::MiniMaxVideo, "other", 0),
        Gate::Admitted(_)
    ));
    assert!(matches!(
        s.admit(FakeLane::MiniMaxImages, "k", 0),
        Gate::Admitted(_)
    ));
    tokio::time::advance(Duration::from_secs(7)).await;
    assert!(matches!(
        s.admit(FakeLane::MiniMaxVideo, "k", 0),
        Gate::Admitted(_)
    ));
    assert_eq!(fake.stats().total_429, 1);
    assert_eq!(fake.stats().key("minimax", "k").rate_limited, 1);
    // Admissions are logged by lane and start, refusals are not.
    let video = |from: u64, to: u64| {
        fake.admitted_between(
            FakeLane::MiniMaxVideo,
            t0 + Duration::from_secs(from),
            t0 + Duration::from_secs(to),
        )
    };
    assert_eq!((video(0, 3), video(3, 10), video(0, 11)), (3, 1, 5));
    assert_eq!(
        fake.admitted_between(FakeLane::MiniMaxImages, t0, Instant::now()),
        1
    );
    fake.shutdown().await;
}

fn view(g: Gate) -> (bool, LimitView, Option<Duration>) {
    match g {
        Gate::Admitted(v) => (true, v, None),
        Gate::Limited {
            view, retry_after, ..
        } => (false, view, Some(retry_after)),
    }
}

#[tokio::test(start_paused = true)]
async fn headers_say_what_is_left_and_when_the_window_is_empty_again() {
    let cfg = FakeProvidersConfig {
        limits: FakeLimits::uniform(3, Duration::from_secs(10)),
        ..FakeProvidersConfig::default()
    };
    let fake = FakeProviders::start(cfg).await.unwrap();
    let s = &fake.shared;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (ok, v, _) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
        assert!(ok);
        seen.push((v.remaining, v.reset.as_secs()));
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    // Reset: until the newest admitted request leaves (the window is empty again).
    assert_eq!(seen, [(2, 10), (1, 10), (0, 10)]);
    // Refused at 6 s: nothing left, empty again at 14 s, the next slot at 10 s.
    let (ok, v, retry) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
    assert!(!ok);
    assert_eq!((v.remaining, v.reset), (0, Duration::from_secs(8)));
    assert_eq!(retry, Some(Duration::from_secs(4)));
    fake.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_allowance_is_enforced_and_reported_instead_of_the_window() {
    let cfg = FakeProvidersConfig {
        limits: FakeLimits::uniform(120, Duration::from_secs(60)),
        burst_allowance: Some(3),
        ..FakeProvidersConfig::default()
    };
    let fake = FakeProviders::start(cfg).await.unwrap();
    let s = &fake.shared;
    let ms = Duration::from_millis;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (ok, v, _) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
        assert!(ok);
        seen.push((v.limit, v.remaining, v.reset));
    }
    assert_eq!(
        seen,
        [(3, 2, ms(500)), (3, 1, ms(1_000)), (3, 0, ms(1_500))]
    );
    // The fourth at once: refused, back in one interval (120 a minute: 500 ms).
    let (ok, v, retry) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
    assert!(!ok);
    assert_eq!((v.remaining, retry), (0, Some(ms(500))));
    tokio::time::advance(ms(500)).await;
    assert!(view(s.admit(FakeLane::OpenAiChat, "k", 0)).0);
    // Only OpenAI's lanes have the allowance.
    for _ in 0..5 {
        assert!(view(s.admit(FakeLane::MiniMaxImages, "k", 0)).0);
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn openai_answers_carry_the_headers_and_429s_retry_after() {
    let cfg = FakeProvidersConfig {
        limits: FakeLimits::uniform(2, Duration::from_secs(60)),
        latency: LatencyDist::None,
        ..FakeProvidersConfig::default()
    };
    let fake = FakeProviders::start(cfg).await.unwrap();
    let http = crate::http_client();
    let url = format!("{}/chat/completions", fake.openai_base());
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = http
            .post(&url)
            .bearer_auth("sk-fake-key-123456")
            .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let h = |k: &str| {
            r.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        answers.push((
            r.status().as_u16(),
            h("x-ratelimit-limit-requests"),
            h("x-ratelimit-remaining-requests"),
            h("x-ratelimit-reset-requests").is_some(),
            h("retry-after"),
        ));
    }
    let some = |v: &str| Some(v.to_owned());
    assert_eq!(
        answers,
        [
            (200, some("2"), some("1"), true, None),
            (200, some("2"), some("0"), true, None),
            (429, some("2"), some("0"), true, some("60")),
        ]
    );
    fake.shutdown().await;
}
