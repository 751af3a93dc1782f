//! [`Report::render`]: the report as text for a person, one section per question. Each figure
//! says which window it counts (the whole run, or the steady window) and what it means next
//! to it, so a reader new to the simulator needs no other page.

use std::fmt::Write as _;

use super::model::Report;

impl Report {
    /// The readable report: the run, its totals and routing, throughput against capacity,
    /// who served whom, each instance, each command, examples and notes.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_scenario(&mut s);
        self.render_run(&mut s);
        self.render_steady(&mut s);
        self.render_served(&mut s);
        self.render_gateway(&mut s);
        self.render_instances(&mut s);
        self.render_commands(&mut s);
        self.render_examples(&mut s);
        let _ = writeln!(s, "elapsed {:.1} s", self.elapsed_s);
        s
    }

    fn render_scenario(&self, s: &mut String) {
        let sc = &self.scenario;
        let chaos = if sc.chaos.is_empty() {
            String::new()
        } else {
            format!(", chaos {}", sc.chaos.join(" "))
        };
        let _ = writeln!(
            s,
            "keyshard-sim: {} instances, {} users ({}), {}/s for {} s, mix {}, seed {}{chaos}",
            sc.instances, sc.users, sc.skew, sc.rate_per_s, sc.duration_s, sc.mix, sc.seed,
        );
    }

    /// Totals, latencies and routing over the whole run.
    fn render_run(&self, s: &mut String) {
        let ix = &self.interactions;
        let _ = writeln!(
            s,
            "\nwhole run: every interaction sent, and its answer however late it came"
        );
        let _ = writeln!(
            s,
            "interactions  sent {}  acked {}  lost {}  duplicate_acks {}  late_acks {}  completed {}  failed {}  duplicate_answers {}  refused_wait {}",
            ix.sent, ix.acked, ix.lost, ix.duplicate_acks, ix.late_acks, ix.completed, ix.failed, ix.duplicate_answers, ix.refused_wait
        );
        let _ = writeln!(
            s,
            "ack latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.ack_latency_ms.p50, self.ack_latency_ms.p99, self.ack_latency_ms.max
        );
        for (route, l) in &self.ack_latency_by_route_ms {
            let _ = writeln!(
                s,
                "  {route:<19} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                l.p50, l.p99, l.max
            );
        }
        let _ = writeln!(
            s,
            "completion    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (dispatch to final answer)",
            self.completion_latency_ms.p50,
            self.completion_latency_ms.p99,
            self.completion_latency_ms.max
        );
        let r = &self.routing;
        let _ = writeln!(
            s,
            "routing       primary {}  takeover_down {}  takeover_overload {}  misrouted {}",
            r.primary, r.takeover_down, r.takeover_overload, r.misrouted
        );
        let _ = writeln!(
            s,
            "              (judged by the simulator from its own kills and the heartbeats it read)"
        );
        if let Some(f) = &self.fairness {
            let _ = writeln!(
                s,
                "fairness      others p95 {:.0} ms ({} answers)  noisy user p95 {:.0} ms ({} answers, share {:.2})",
                f.others_p95_ms, f.others_completed, f.noisy_p95_ms, f.noisy_completed, f.noisy_share
            );
        }
        self.render_ledger(s);
        if let Some(w) = &self.waiting {
            let _ = writeln!(
                s,
                "waiting       edits {}  jobs_with_edits {}  max_edits_per_job {}  edits_after_answer {}",
                w.edits, w.jobs_with_edits, w.max_edits_per_job, w.edits_after_answer
            );
        }
        if let Some(o) = &self.overload {
            let _ = writeln!(
                s,
                "overload      accepted {}  refused {}  accepted_over_max_wait {} {:?}  refusal ack p99 {:.1} ms (max {:.1})  slowest {:?}  max_wait_secs {:?}",
                o.accepted, o.refused, o.accepted_over_max_wait, o.over_max_wait_by_command, o.refusal_ack_p99_ms, o.refusal_ack_max_ms, o.slowest_ms, o.max_wait_secs
            );
        }
        if let Some(q) = &self.quota {
            let _ = writeln!(
                s,
                "quota         accepted {}  refused {}  over_limit {}  (failed, refunded: {})",
                q.accepted, q.refused, q.over_limit, q.failed
            );
        }
    }

    /// The usage ledger against the simulator's own record of answered interactions.
    fn render_ledger(&self, s: &mut String) {
        let Some(l) = &self.ledger else {
            let _ = writeln!(s, "ledger        off (--no-ledger)");
            return;
        };
        let _ = writeln!(
            s,
            "ledger        rows {}  missing {}  duplicates {}  (answered {}, unanswered {}, wrong_instance {}, settled {:.0} ms after the drain)",
            l.rows, l.missing, l.duplicates, l.answered, l.unanswered, l.wrong_instance, l.settle_ms
        );
        if !l.missing_examples.is_empty() {
            let _ = writeln!(s, "  missing e.g. {:?}", l.missing_examples);
        }
        if !l.unanswered_examples.is_empty() {
            let _ = writeln!(
                s,
                "  recorded but never seen answered e.g. {:?}",
                l.unanswered_examples
            );
        }
        if !l.wrong_instance_examples.is_empty() {
            let _ = writeln!(
                s,
                "  (interaction, answered by, served_by) e.g. {:?}",
                l.wrong_instance_examples
            );
        }
    }

    /// Throughput against capacity, and each provider lane, over the steady window.
    fn render_steady(&self, s: &mut String) {
        let steady = self.steady_to_s - self.steady_from_s;
        let _ = writeln!(
            s,
            "\nsteady window {:.1}–{:.1} s: after the warm-up, until the load stops",
            self.steady_from_s, self.steady_to_s
        );
        let _ = writeln!(
            s,
            "throughput    {}/min answered in it ({}/min sent in it; {}/min over the whole run, to the last answer at {:.1} s)",
            self.throughput_per_min,
            self.sent_steady_per_min,
            self.throughput_overall_per_min,
            self.last_completion_s
        );
        match self.capacity_per_min {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "capacity      {c}/min: what the fake keys sustain for this mix in the long run;  provider 429s {}",
                    self.provider_429
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "capacity      n/a (no provider command in the mix);  provider 429s {}",
                    self.provider_429
                );
            }
        }
        if let Some(why) = self.above_capacity() {
            let _ = writeln!(s, "  above capacity: {why}");
        }
        if !self.lanes.is_empty() {
            let _ = writeln!(
                s,
                "provider lanes: requests the fake keys admitted in the steady window"
            );
        }
        for l in &self.lanes {
            let _ = writeln!(
                s,
                "  {:<17} {:>5} = {:>5.1} % of the keys' long-run rate ({:.1} in {steady:.0} s); at most {:.0} fit their {:.0} s windows",
                l.lane,
                l.requests,
                l.utilization * 100.0,
                l.capacity,
                l.ceiling,
                l.key_window_s
            );
        }
    }

    /// Why throughput reads above capacity, when it does: answers drained from the warm-up's
    /// backlog, and keys whose window is longer than the steady window (a sliding window admits
    /// its whole limit at once, so a short run gets more than the long-run rate).
    fn above_capacity(&self) -> Option<String> {
        let capacity = self.capacity_per_min?;
        if self.throughput_per_min <= capacity {
            return None;
        }
        let steady = self.steady_to_s - self.steady_from_s;
        let mut why = Vec::new();
        if let Some(w) = self
            .lanes
            .iter()
            .filter(|l| l.utilization > 1.0)
            .map(|l| l.key_window_s)
            .reduce(f64::max)
        {
            why.push(format!(
                "a key's {w:.0} s sliding window admits its whole limit at once, so over {steady:.0} s the keys let through more than their long-run rate (lanes over 100 % below)"
            ));
        }
        if self.throughput_per_min > self.sent_steady_per_min {
            why.push("answers to interactions sent during the warm-up landed in the window".into());
        }
        if why.is_empty() {
            why.push("random arrivals: the load is a Poisson process at its mean rate".into());
        }
        Some(why.join("; "))
    }

    fn render_served(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\nwho served whom, whole run (row: the user's primary; column: the instance that acknowledged)"
        );
        let mut header = format!("{:<10}", "primary");
        for a in 1..=self.served.len() {
            let _ = write!(header, "{:>8}", format!("#{a}"));
        }
        let _ = writeln!(s, "{header}{:>8}", "lost");
        let mut lost_by_primary = vec![0u64; self.served.len()];
        for p in &self.per_instance {
            let acked: u64 = self.served[(p.id - 1) as usize].iter().sum();
            lost_by_primary[(p.id - 1) as usize] = p.primary_for.saturating_sub(acked);
        }
        for (pi, row) in self.served.iter().enumerate() {
            let mut line = format!("{:<10}", format!("#{}", pi + 1));
            for v in row {
                let _ = write!(line, "{v:>8}");
            }
            let _ = writeln!(s, "{line}{:>8}", lost_by_primary[pi]);
        }
    }

    /// The gateway sessions, as the fake Discord counted them.
    fn render_gateway(&self, s: &mut String) {
        let g = &self.gateway;
        let _ = writeln!(s, "\ngateway, whole run (counted by the fake Discord)");
        let _ = writeln!(
            s,
            "sessions      identifies {}  invalid_sessions {}  resumes {}  invalidated {}  ready {:.1} s  command PUTs {}",
            g.identifies, g.invalid_sessions, g.resumes, g.invalidated, g.ready_s, g.command_puts
        );
        let _ = writeln!(
            s,
            "              session starts left today {}{}",
            g.session_starts_left,
            if g.token_reset {
                "  TOKEN RESET: the day's session starts ran out"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  invalid_sessions: op 9 the instances earned (an IDENTIFY over its bucket's rate, a RESUME of a\n  \
             session that was gone); invalidated: sessions the scenario ended on purpose; ready: from the\n  \
             first instance's start until every instance was ready."
        );
    }

    fn render_instances(&self, s: &mut String) {
        let _ = writeln!(s, "\nper instance, whole run");
        let _ = writeln!(
            s,
            "{:<9}{:>7}{:>9}{:>10}{:>10}{:>11}{:>10}{:>8}{:>10}{:>9}{:>9}  state",
            "instance",
            "acked",
            "primary",
            "takeover",
            "answered",
            "for peers",
            "by peers",
            "failed",
            "extra cb",
            "identify",
            "resumes"
        );
        for p in &self.per_instance {
            let state = match p.killed_at_s {
                Some(t) => format!("stopped at {t:.1} s"),
                None => "up".into(),
            };
            let _ = writeln!(
                s,
                "{:<9}{:>7}{:>9}{:>10}{:>10}{:>11}{:>10}{:>8}{:>10}{:>9}{:>9}  {state}",
                format!("#{}", p.id),
                p.acks,
                p.acks_as_primary,
                p.takeovers,
                p.completions,
                p.answered_for_others,
                p.answered_by_others,
                p.failed,
                p.extra_callback_attempts,
                p.identifies,
                p.resumes
            );
        }
        for line in [
            "  acked: interactions it acknowledged, as their user's primary or taking over;",
            "  answered: final answers it posted, its direct replies and the jobs its workers finished;",
            "  for peers / by peers: answers it posted for another instance's acks (a job it stole,",
            "  was moved or rescued) and answers others posted for its acks. answered = acked",
            "  - by peers + for peers (less any acked job never answered). extra cb: callback",
            "  attempts after another instance had acknowledged.",
        ] {
            let _ = writeln!(s, "{line}");
        }
    }

    fn render_commands(&self, s: &mut String) {
        if self.by_command.len() <= 1 && self.by_command.keys().all(|k| k == "핑") {
            return;
        }
        let _ = writeln!(
            s,
            "\nper command, whole run (completion p50: dispatch to final answer)"
        );
        for (name, c) in &self.by_command {
            let _ = writeln!(
                s,
                "{} sent {:>6}  acked {:>6}  completed {:>6}  failed {:>5}  refused_wait {:>5}  p50 {:.0} ms  max {:.0} ms",
                pad(&format!("/{name}"), 12),
                c.sent,
                c.acked,
                c.completed,
                c.failed,
                c.refused_wait,
                c.completion_p50_ms,
                c.completion_max_ms
            );
        }
    }

    /// The `memory.*` line: peaks per instance and Redis, per queued job and conversation.
    fn render_memory(&self, s: &mut String) {
        let Some(m) = &self.memory else {
            return;
        };
        let rss: Vec<String> = m
            .rss_kb_max
            .iter()
            .map(|r| r.map_or("-".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0)))
            .collect();
        let per = |v: Option<f64>| v.map_or("-".to_owned(), |b| format!("{b:.0} B"));
        let _ = writeln!(
            s,
            "memory ({} samples, every {:.0} s): peak RSS per instance {} MB; Redis peak {}; \
             per queued job {} (deepest queue {}); per conversation {} ({} conversations)",
            m.samples.len(),
            m.every_s,
            rss.join(" · "),
            m.redis_used_bytes_max.map_or("-".to_owned(), |b| format!(
                "{:.1} MB",
                b as f64 / 1_048_576.0
            )),
            per(m.bytes_per_queued_job),
            m.deepest_queue,
            per(m.bytes_per_conversation),
            m.conversations_max
        );
    }

    /// The first few misrouted, lost and unanswered interactions, to look up in the logs.
    fn render_misses(&self, s: &mut String) {
        if !self.misrouted_examples.is_empty()
            || !self.lost_examples.is_empty()
            || !self.unanswered_examples.is_empty()
        {
            let _ = writeln!(s);
        }
        for e in &self.misrouted_examples {
            let _ = writeln!(
                s,
                "misrouted: interaction {} of user {} (primary #{}) answered by #{} at {:.2} s (+{:.1} ms)",
                e.interaction_id, e.user_id, e.primary, e.answered_by, e.sent_at_s, e.ack_after_ms
            );
        }
        for e in &self.lost_examples {
            let _ = writeln!(
                s,
                "lost: interaction {} of user {} (primary #{}) sent at {:.2} s, callback attempts {:?}",
                e.interaction_id, e.user_id, e.primary, e.sent_at_s, e.attempts
            );
        }
        for e in &self.unanswered_examples {
            let _ = writeln!(
                s,
                "unanswered: interaction {} of user {} ({}) sent at {:.2} s, acknowledged by #{}, never answered",
                e.interaction_id, e.user_id, e.command, e.sent_at_s, e.acked_by
            );
        }
    }

    fn render_examples(&self, s: &mut String) {
        self.render_misses(s);
        for k in &self.revoked_keys {
            let restored = k.restored_s.map_or("never restored".to_owned(), |t| {
                format!("restored at {t:.1} s")
            });
            let back = k
                .back_in_use_after_s
                .map_or("not used again".to_owned(), |t| {
                    format!("in use again {t:.1} s after")
                });
            let _ = writeln!(
                s,
                "revoked key {}: at {:.1} s, {restored}, {back}; {} requests refused meanwhile",
                k.key, k.revoked_s, k.refused
            );
        }
        if let Some(m) = &self.instance_metrics {
            if let Some(avg) = m.per_interaction() {
                let ops: Vec<String> = m
                    .ack_round_trips_by_op
                    .iter()
                    .map(|(op, n)| format!("{op} {:.2}", *n as f64 / m.ack_measured as f64))
                    .collect();
                let _ = writeln!(
                    s,
                    "ack path: {avg:.2} Redis round trips per interaction ({}; {} interactions, {} instances)",
                    ops.join(", "),
                    m.ack_measured,
                    m.scraped
                );
            }
            if m.key_outages + m.keys_out_at_end + m.circuit_opens > 0 {
                let _ = writeln!(
                    s,
                    "keys: {} went out of service, {} still out at the end; circuits opened {}",
                    m.key_outages, m.keys_out_at_end, m.circuit_opens
                );
            }
        }
        self.render_memory(s);
        if self.drain_timed_out {
            let _ = writeln!(
                s,
                "\nnote: stopped waiting for answers at the drain deadline"
            );
        }
        if self.unknown_routes > 0 {
            let _ = writeln!(
                s,
                "note: {} REST calls hit routes the fake Discord does not know",
                self.unknown_routes
            );
        }
    }
}

/// `text` padded with spaces to `width` terminal columns. Korean command names take two
/// columns a letter, so `{:<8}` (which counts letters) would misalign the table.
fn pad(text: &str, width: usize) -> String {
    let wide = |c: char| {
        matches!(c as u32,
            0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF | 0xA960..=0xA97F | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
            | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6)
    };
    let columns: usize = text.chars().map(|c| if wide(c) { 2 } else { 1 }).sum();
    format!("{text}{}", " ".repeat(width.saturating_sub(columns)))
}

#[cfg(test)]
mod tests {
    use super::super::model::{InstanceReport, LaneUse, Report, Routing};

    fn report() -> Report {
        Report {
            throughput_per_min: 250.0,
            sent_steady_per_min: 240.0,
            steady_from_s: 5.0,
            steady_to_s: 30.0,
            capacity_per_min: Some(240.0),
            lanes: vec![LaneUse {
                lane: "minimax_video".into(),
                requests: 16,
                capacity: 8.3,
                utilization: 1.92,
                ceiling: 20.0,
                key_window_s: 60.0,
            }],
            routing: Routing {
                misrouted: 1,
                ..Routing::default()
            },
            per_instance: vec![InstanceReport {
                id: 1,
                acks: 25,
                completions: 22,
                answered_by_others: 3,
                ..InstanceReport::default()
            }],
            served: vec![vec![25]],
            ..Report::default()
        }
    }

    #[test]
    fn figures_above_capacity_say_why() {
        let text = report().render();
        assert!(text.contains("misrouted 1"), "{text}");
        assert!(
            text.contains("above capacity: a key's 60 s sliding window admits its whole limit"),
            "{text}"
        );
        assert!(text.contains("sent during the warm-up"), "{text}");
        assert!(
            text.contains("192.0 % of the keys' long-run rate (8.3 in 25 s); at most 20 fit"),
            "{text}"
        );
    }

    #[test]
    fn figures_within_capacity_need_no_excuse() {
        let mut r = report();
        r.throughput_per_min = 230.0;
        assert!(!r.render().contains("above capacity"));
        r.capacity_per_min = None;
        assert!(r.render().contains("capacity      n/a"));
    }

    #[test]
    fn korean_names_are_padded_by_columns() {
        assert_eq!(super::pad("/핑", 6), "/핑   ");
        assert_eq!(super::pad("/ping", 6), "/ping ");
        assert_eq!(super::pad("/로드밸런서", 6), "/로드밸런서");
    }

    #[test]
    fn instance_columns_are_explained() {
        let text = report().render();
        // The last "#1" row: the one of the instance table, after the served matrix.
        let row = text.lines().rfind(|l| l.starts_with("#1 ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..7], ["#1", "25", "0", "0", "22", "0", "3"], "{row}");
        assert!(text.contains("answered = acked"), "{text}");
    }
}
