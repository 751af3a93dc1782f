//! The load a scenario sends: which commands ([`CommandKind`], weighted by a [`Mix`]), from
//! which users ([`make_users`], picked uniformly or by Zipf rank with [`UserPicker`]), and
//! each command's options filled in from what the instances registered ([`build_spec`]): every
//! required option gets a value of its type (a prompt for a string, the first choice when there
//! are choices), so the driver follows the bot's command definitions instead of hard-coding
//! their options.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use rand::Rng;
use serde_json::Value;

use crate::discord::{snowflake_at, InteractionSpec, RegisteredCommand};

/// A command the driver can send, by its mix key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    Ping,
    Chat,
    Image,
    Video,
    Balancer,
    Assign,
    Perf,
}

impl CommandKind {
    pub const ALL: [CommandKind; 7] = [
        CommandKind::Ping,
        CommandKind::Chat,
        CommandKind::Image,
        CommandKind::Video,
        CommandKind::Balancer,
        CommandKind::Assign,
        CommandKind::Perf,
    ];

    /// The registered (Korean) command name.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Ping => "핑",
            CommandKind::Chat => "채팅",
            CommandKind::Image => "이미지",
            CommandKind::Video => "비디오",
            CommandKind::Balancer => "로드밸런서",
            CommandKind::Assign => "할당",
            CommandKind::Perf => "성능",
        }
    }

    /// Whether only admins may call it.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            CommandKind::Balancer | CommandKind::Assign | CommandKind::Perf
        )
    }

    /// The key used in `--mix`.
    pub fn key(self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::Chat => "chat",
            CommandKind::Image => "image",
            CommandKind::Video => "video",
            CommandKind::Balancer => "balancer",
            CommandKind::Assign => "assign",
            CommandKind::Perf => "perf",
        }
    }
}

impl FromStr for CommandKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.key() == s || k.name() == s)
            .with_context(|| {
                format!("unknown command {s:?} (ping, chat, image, video, balancer, assign, perf)")
            })
    }
}

/// Weighted command mix: `ping=1,chat=2`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub Vec<(CommandKind, f64)>);

impl Mix {
    /// Picks a command by weight.
    pub fn pick(&self, rng: &mut impl Rng) -> CommandKind {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let mut x = rng.random::<f64>() * total;
        for (k, w) in &self.0 {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        self.0.last().map_or(CommandKind::Ping, |(k, _)| *k)
    }

    pub fn kinds(&self) -> impl Iterator<Item = CommandKind> + '_ {
        self.0.iter().map(|(k, _)| *k)
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, w) = part.split_once('=').unwrap_or((part, "1"));
            let w: f64 = w
                .parse()
                .with_context(|| format!("mix weight {w:?} is not a number"))?;
            if !(w.is_finite() && w >= 0.0) {
                bail!("mix weight {w} must be a non-negative number");
            }
            if w > 0.0 {
                out.push((k.parse()?, w));
            }
        }
        if out.is_empty() {
            bail!("the mix {s:?} has no command with a positive weight");
        }
        Ok(Mix(out))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, w)| format!("{}={w}", k.key()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// How users are picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    Uniform,
    /// Zipf with exponent `s` over the users (user 1 the busiest).
    Zipf(f64),
}

impl FromStr for Skew {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "uniform" || s == "none" {
            return Ok(Skew::Uniform);
        }
        let exp = s
            .strip_prefix("zipf:")
            .with_context(|| format!("skew {s:?}: expected zipf:S or uniform"))?;
        let exp: f64 = exp
            .parse()
            .with_context(|| format!("zipf exponent {exp:?}"))?;
        if !(exp.is_finite() && exp > 0.0) {
            bail!("zipf exponent must be positive");
        }
        Ok(Skew::Zipf(exp))
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => f.write_str("uniform"),
            Skew::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// `count` distinct, realistic user ids: snowflakes created between 2016 and 2024.
pub fn make_users(rng: &mut impl Rng, count: u32) -> Vec<u64> {
    const FROM_MS: u64 = 1_451_606_400_000; // 2016-01-01
    const TO_MS: u64 = 1_704_067_200_000; // 2024-01-01
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(count as usize);
    while users.len() < count as usize {
        let id = snowflake_at(rng.random_range(FROM_MS..TO_MS), rng.random::<u32>());
        if seen.insert(id) {
            users.push(id);
        }
    }
    users
}

/// Picks user indexes uniformly or by Zipf rank.
pub struct UserPicker {
    cdf: Option<Vec<f64>>,
    count: usize,
}

impl UserPicker {
    pub fn new(count: usize, skew: Skew) -> Self {
        let cdf = match skew {
            Skew::Uniform => None,
            Skew::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=count)
                    .map(|k| {
                        acc += 1.0 / (k as f64).powf(s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                Some(cdf)
            }
        };
        Self { cdf, count }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match &self.cdf {
            None => rng.random_range(0..self.count),
            Some(cdf) => {
                let x = rng.random::<f64>();
                cdf.partition_point(|c| *c < x).min(self.count - 1)
            }
        }
    }
}

const PROMPTS: &[&str] = &[
    "오늘 서울 날씨에 어울리는 점심 메뉴 추천해줘",
    "Rust에서 async trait를 쓰는 방법을 알려줘",
    "a watercolor fox reading a book under a maple tree",
    "밤하늘 아래 등대, 유화 스타일",
    "Explain consistent hashing in two sentences",
    "고양이가 우주선을 조종하는 짧은 영상",
    "Summarize the plot of Hamlet for a ten-year-old",
    "미니멀한 카페 로고 디자인",
    "waves crashing on a rocky shore at sunset, slow motion",
    "한국어로 하이쿠 한 편 써줘",
];

/// Fills the command's required options from its registration.
pub fn build_spec(
    kind: CommandKind,
    registered: Option<&RegisteredCommand>,
    user: u64,
    dm: bool,
    users: &[u64],
    rng: &mut impl Rng,
) -> InteractionSpec {
    // The admin commands come from the admin the instances are configured with, as in a real
    // server where only admins see them.
    let user = if kind.is_admin() {
        crate::cluster::ADMIN_USER_ID
    } else {
        user
    };
    let dm = dm && !kind.is_admin();
    let mut spec = if dm {
        InteractionSpec::dm(kind.name(), user)
    } else {
        InteractionSpec::guild(kind.name(), user)
    };
    let Some(options) = registered
        .and_then(|c| c.body.get("options"))
        .and_then(Value::as_array)
    else {
        return spec;
    };
    for o in options {
        let required = o.get("required").and_then(Value::as_bool).unwrap_or(false);
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        if !required || name.is_empty() {
            continue;
        }
        let first_choice = o
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .and_then(|c| c.get("value"));
        spec = match o.get("type").and_then(Value::as_u64) {
            Some(3) => {
                let value = match first_choice.and_then(Value::as_str) {
                    Some(v) => v.to_string(),
                    None => {
                        let mut p = PROMPTS[rng.random_range(0..PROMPTS.len())].to_string();
                        let max = o.get("max_length").and_then(Value::as_u64).unwrap_or(6000);
                        if p.chars().count() as u64 > max {
                            p = p.chars().take(max as usize).collect();
                        }
                        p
                    }
                };
                spec.string(name, &value)
            }
            Some(4) | Some(10) => {
                let v = first_choice
                    .and_then(Value::as_i64)
                    .or_else(|| o.get("min_value").and_then(Value::as_i64))
                    .unwrap_or(1);
                spec.integer(name, v)
            }
            Some(5) => spec.bool(name, false),
            Some(6) => spec.user(name, users[rng.random_range(0..users.len())]),
            _ => spec,
        };
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn parses_mix_and_skew() {
        let mix: Mix = "ping=1,chat=2,video=0".parse().unwrap();
        assert_eq!(
            mix.0,
            vec![(CommandKind::Ping, 1.0), (CommandKind::Chat, 2.0)]
        );
        assert_eq!(mix.to_string(), "ping=1,chat=2");
        assert!("ping=x".parse::<Mix>().is_err());
        assert!("nope=1".parse::<Mix>().is_err());
        assert_eq!("zipf:1.1".parse::<Skew>().unwrap(), Skew::Zipf(1.1));
        assert!("zipf:-1".parse::<Skew>().is_err());
    }

    #[test]
    fn users_are_distinct_seeded_snowflakes() {
        let a = make_users(&mut SmallRng::seed_from_u64(7), 500);
        let b = make_users(&mut SmallRng::seed_from_u64(7), 500);
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 500);
        assert!(a.iter().all(|u| *u > 100_000_000_000_000_000));
        // Every instance of 4 is somebody's primary.
        let primaries: HashSet<u32> = a.iter().map(|u| crate::judge::primary(*u, 4)).collect();
        assert_eq!(primaries.len(), 4);
    }

    #[test]
    fn zipf_favours_the_first_users_and_uniform_does_not() {
        let mut rng = SmallRng::seed_from_u64(3);
        let zipf = UserPicker::new(100, Skew::Zipf(1.1));
        let first = (0..10_000).filter(|_| zipf.pick(&mut rng) == 0).count();
        // P(rank 1) = 1 / H(100, 1.1) ≈ 0.23.
        assert!((1_800..2_800).contains(&first), "{first}");
        let uniform = UserPicker::new(100, Skew::Uniform);
        let first = (0..10_000).filter(|_| uniform.pick(&mut rng) == 0).count();
        assert!(first < 200, "{first}");
    }

    #[test]
    fn required_options_are_filled_from_the_registration() {
        let reg = RegisteredCommand {
            id: 1,
            name: "이미지".into(),
            guild_id: None,
            instance: 1,
            body: serde_json::json!({"name": "이미지", "options": [
                {"type": 3, "name": "프롬프트", "required": true, "max_length": 5},
                {"type": 3, "name": "모델", "required": true,
                 "choices": [{"name": "MiniMax", "value": "minimax"}]},
                {"type": 5, "name": "비공개", "required": false},
                {"type": 6, "name": "대상", "required": true},
            ]}),
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let spec = build_spec(
            CommandKind::Image,
            Some(&reg),
            10,
            false,
            &[20, 30],
            &mut rng,
        );
        assert_eq!(spec.options.len(), 3);
        match &spec.options[0] {
            crate::discord::OptionValue::String(n, v) => {
                assert_eq!(n, "프롬프트");
                assert!(v.chars().count() <= 5);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            spec.options[1],
            crate::discord::OptionValue::String("모델".into(), "minimax".into())
        );
        assert!(matches!(
            spec.options[2],
            crate::discord::OptionValue::User(_, 20 | 30)
        ));
    }
}
