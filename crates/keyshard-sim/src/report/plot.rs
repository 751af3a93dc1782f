//! `keyshard-sim run --plot PATH.svg`: one hand-written SVG of a run over time, in four
//! stacked panels sharing the time axis: interactions offered per second; answers per second
//! per instance; queue depth per instance (from the sampled heartbeats); each provider lane's
//! use against its limit (admitted requests per bucket ÷ what the keys allow in it). Kills,
//! SIGTERMs, restarts and other chaos are vertical marks across every panel.
//!
//! [`PlotData`] is plain series (seconds since the first dispatch), built by the scenario from
//! what it already records; [`svg`] is a pure function of it, so it is tested without a run.

use std::fmt::Write;

/// One bucket of a lane's use: start (s), length (s), admitted ÷ what the keys allow.
pub type LaneBucket = (f64, f64, f64);

/// Everything the picture shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlotData {
    pub title: String,
    /// Seconds shown (the x axis runs from 0 to this).
    pub span_s: f64,
    /// Interactions dispatched in each second.
    pub offered: Vec<f64>,
    /// `answers[i]`: instance `i + 1`'s final answers in each second.
    pub answers: Vec<Vec<f64>>,
    /// `(seconds, queue depth of each instance; None while its heartbeat is missing)`.
    pub queue: Vec<(f64, Vec<Option<u64>>)>,
    /// `(lane, [(bucket start s, bucket length s, use ÷ limit)])`.
    pub lanes: Vec<(String, Vec<LaneBucket>)>,
    /// `(seconds, label)`: chaos and process events.
    pub marks: Vec<(f64, String)>,
}

/// Per-second counts of `times` (seconds since the start) over `span_s`.
pub fn per_second(times: impl IntoIterator<Item = f64>, span_s: f64) -> Vec<f64> {
    let n = span_s.ceil().max(1.0) as usize;
    let mut out = vec![0.0; n];
    for t in times {
        if t >= 0.0 {
            let i = (t.floor() as usize).min(n - 1);
            out[i] += 1.0;
        }
    }
    out
}

const W: f64 = 960.0;
const PANEL_H: f64 = 150.0;
const GAP: f64 = 36.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;

/// A colour per series, distinct for 16 instances.
fn colour(i: usize) -> &'static str {
    const C: [&str; 16] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    ];
    C[i % C.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document. Long but flat: the four panels drawn one after another on the shared
/// time axis, then the marks.
pub fn svg(d: &PlotData) -> String {
    let panels = 4.0;
    let h = TOP + panels * (PANEL_H + GAP) + 10.0;
    let pw = W - LEFT - RIGHT;
    let span = d.span_s.max(1.0);
    let x = |t: f64| LEFT + (t / span).clamp(0.0, 1.0) * pw;
    let mut out = String::with_capacity(64 * 1024);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&d.title)
    );
    let top = |k: usize| TOP + k as f64 * (PANEL_H + GAP);

    // 1. Offered load.
    let max1 = max_of(d.offered.iter().copied());
    panel(&mut out, top(0), "interactions offered / s", max1, span, &x);
    polyline(&mut out, &steps(&d.offered), top(0), max1, &x, "#333", 1.5);

    // 2. Answers per instance.
    let max2 = max_of(d.answers.iter().flatten().copied());
    panel(&mut out, top(1), "answers / s per instance", max2, span, &x);
    for (i, a) in d.answers.iter().enumerate() {
        polyline(&mut out, &steps(a), top(1), max2, &x, colour(i), 1.2);
    }
    legend(
        &mut out,
        top(1),
        (1..=d.answers.len()).map(|i| format!("#{i}")),
    );

    // 3. Queue depth per instance.
    let n = d.queue.iter().map(|(_, q)| q.len()).max().unwrap_or(0);
    let max3 = max_of(
        d.queue
            .iter()
            .flat_map(|(_, q)| q.iter().flatten().map(|v| *v as f64)),
    );
    panel(&mut out, top(2), "queue depth per instance", max3, span, &x);
    for i in 0..n {
        // A missing heartbeat breaks the line (the instance is down).
        let mut run: Vec<(f64, f64)> = Vec::new();
        for (t, q) in &d.queue {
            match q.get(i).copied().flatten() {
                Some(v) => run.push((*t, v as f64)),
                None => {
                    polyline(&mut out, &run, top(2), max3, &x, colour(i), 1.2);
                    run.clear();
                }
            }
        }
        polyline(&mut out, &run, top(2), max3, &x, colour(i), 1.2);
    }
    legend(&mut out, top(2), (1..=n).map(|i| format!("#{i}")));

    // 4. Lane use against the limit (1.0 = the keys' limit).
    let max4 = max_of(d.lanes.iter().flat_map(|(_, v)| v.iter().map(|p| p.2))).max(1.0);
    panel(&mut out, top(3), "lane use ÷ limit", max4, span, &x);
    let y1 = top(3) + PANEL_H - PANEL_H / max4;
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" x2="{}" y1="{y1:.1}" y2="{y1:.1}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
        LEFT + pw
    );
    for (i, (_, buckets)) in d.lanes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = buckets
            .iter()
            .flat_map(|(t, len, u)| [(*t, *u), (*t + *len, *u)])
            .collect();
        polyline(&mut out, &pts, top(3), max4, &x, colour(i + 8), 1.5);
    }
    legend(&mut out, top(3), d.lanes.iter().map(|(l, _)| l.clone()));

    // Marks across every panel.
    for (t, label) in &d.marks {
        let xm = x(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{xm:.1}" x2="{xm:.1}" y1="{}" y2="{}" stroke="#d62728" stroke-width="1"/><text x="{:.1}" y="{}" fill="#d62728" font-size="10">{}</text>"##,
            top(0),
            top(3) + PANEL_H,
            xm + 2.0,
            top(0) - 4.0,
            esc(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn max_of(v: impl Iterator<Item = f64>) -> f64 {
    let m = v.fold(0.0f64, f64::max);
    if m > 0.0 {
        m * 1.1
    } else {
        1.0
    }
}

/// A per-second series as a step line.
fn steps(v: &[f64]) -> Vec<(f64, f64)> {
    v.iter()
        .enumerate()
        .flat_map(|(i, y)| [(i as f64, *y), (i as f64 + 1.0, *y)])
        .collect()
}

/// Frame, title, y scale and the time axis of one panel.
fn panel(out: &mut String, top: f64, title: &str, max: f64, span: f64, x: &dyn Fn(f64) -> f64) {
    let pw = W - LEFT - RIGHT;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{LEFT}" y="{}" font-weight="bold">{}</text>"##,
        top - 4.0,
        esc(title)
    );
    let shown = if max >= 10.0 { max / 1.1 } else { max };
    for frac in [0.0, 0.5, 1.0] {
        let y = top + PANEL_H - frac * PANEL_H * shown / max;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            y + 4.0,
            fmt_num(frac * shown)
        );
    }
    let step = nice_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let xt = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{}" y2="{}" stroke="#999"/><text x="{xt:.1}" y="{}" text-anchor="middle" fill="#555">{}s</text>"##,
            top + PANEL_H,
            top + PANEL_H + 4.0,
            top + PANEL_H + 15.0,
            t
        );
        t += step;
    }
}

fn nice_step(span: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| span / s <= 12.0)
        .unwrap_or(1200.0)
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn polyline(
    out: &mut String,
    pts: &[(f64, f64)],
    top: f64,
    max: f64,
    x: &dyn Fn(f64) -> f64,
    colour: &str,
    width: f64,
) {
    if pts.is_empty() {
        return;
    }
    let mut p = String::with_capacity(pts.len() * 14);
    for (t, v) in pts {
        let y = top + PANEL_H - (v / max).clamp(0.0, 1.0) * PANEL_H;
        let _ = write!(p, "{:.1},{y:.1} ", x(*t));
    }
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>"#,
        p.trim_end()
    );
}

fn legend(out: &mut String, top: f64, names: impl Iterator<Item = String>) {
    let lx = W - RIGHT + 12.0;
    for (i, name) in names.enumerate().take(16) {
        let y = top + 10.0 + i as f64 * 13.0;
        let c = if name.starts_with('#') {
            colour(i)
        } else {
            colour(i + 8)
        };
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{:.1}" width="10" height="3" fill="{c}"/><text x="{}" y="{:.1}">{}</text>"#,
            y - 4.0,
            lx + 14.0,
            y,
            esc(&name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_buckets_and_clamps() {
        assert_eq!(
            per_second([0.1, 0.9, 1.5, 9.0, -1.0], 3.0),
            vec![2.0, 1.0, 1.0]
        );
    }

    #[test]
    fn the_picture_has_every_panel_series_and_mark() {
        let d = PlotData {
            title: "run <1>".into(),
            span_s: 10.0,
            offered: vec![5.0; 10],
            answers: vec![vec![2.0; 10], vec![3.0; 10]],
            queue: vec![(0.0, vec![Some(1), Some(0)]), (1.0, vec![None, Some(2)])],
            lanes: vec![("openai_chat".into(), vec![(0.0, 5.0, 0.9), (5.0, 5.0, 1.0)])],
            marks: vec![(4.0, "kill #2".into())],
        };
        let s = svg(&d);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("run &lt;1&gt;"), "title escaped");
        for title in [
            "interactions offered / s",
            "answers / s per instance",
            "queue depth per instance",
            "lane use ÷ limit",
            "kill #2",
            "openai_chat",
        ] {
            assert!(s.contains(title), "{title}");
        }
        // offered + 2 answers + queue (#1 broken by its missing heartbeat: 1 run; #2: 1) + 1 lane.
        assert_eq!(s.matches("<polyline").count(), 6);
    }
}
