//! The report's charts, written as inline SVG by the code (no script, no external fetch).
//!
//! Every chart is one `<svg class="chart" data-points="N">` whose data marks carry the class
//! `pt` (N of them), so a reader — or a test in a browser — can count what is drawn. Text is
//! escaped; only numbers, times and fixed labels appear.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::controls::Coverage;
use crate::model::{Drill, RpoPoint, Window};

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A time axis over the window and a linear value axis from 0 to `max`.
struct Frame {
    from: i64,
    to: i64,
    max: f64,
}

impl Frame {
    fn new(window: &Window, max: f64) -> Self {
        let from = window.from.timestamp();
        Self {
            from,
            to: window.to.timestamp().max(from + 1),
            max: if max > 0.0 { max * 1.1 } else { 1.0 },
        }
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        let f = (t.timestamp() - self.from) as f64 / (self.to - self.from) as f64;
        LEFT + f.clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        TOP + (1.0 - (v / self.max).clamp(0.0, 1.0)) * (H - TOP - BOTTOM)
    }
}

fn open(id: &str, label: &str, points: usize) -> String {
    format!(
        "<svg id=\"{id}\" class=\"chart\" data-points=\"{points}\" viewBox=\"0 0 {W} {H}\" \
         width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(label)
    )
}

/// Axes, the window's dates under the x axis and `unit` ticks at 0, half and the top.
fn axes(s: &mut String, f: &Frame, window: &Window, unit: &dyn Fn(f64) -> String) {
    let (x0, x1, y0) = (LEFT, W - RIGHT, H - BOTTOM);
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{x0}\" y1=\"{TOP}\" x2=\"{x0}\" y2=\"{y0}\"/>\
         <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\"/>"
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = f.max / 1.1 * frac;
        let y = f.y(v);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            escape(&unit(v))
        );
    }
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let _ = write!(
        s,
        "<text class=\"tick\" x=\"{x0}\" y=\"{:.1}\">{}</text>\
         <text class=\"tick\" x=\"{x1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        y0 + 18.0,
        fmt(window.from),
        y0 + 18.0,
        fmt(window.to)
    );
}

fn empty_note(s: &mut String, what: &str) {
    let _ = write!(
        s,
        "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        W / 2.0,
        H / 2.0,
        escape(what)
    );
}

fn objective_line(s: &mut String, f: &Frame, v: f64, label: &str) {
    let y = f.y(v);
    let _ = write!(
        s,
        "<line class=\"objective\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>\
         <text class=\"objective-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        W - RIGHT,
        W - RIGHT - 4.0,
        y - 4.0,
        escape(label)
    );
}

pub fn bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

pub fn seconds(v: f64) -> String {
    if v >= 86_400.0 {
        format!("{:.1} d", v / 86_400.0)
    } else if v >= 3600.0 {
        format!("{:.1} h", v / 3600.0)
    } else if v >= 60.0 {
        format!("{:.1} min", v / 60.0)
    } else {
        format!("{v:.1} s")
    }
}

/// Snapshot times and sizes of the recovery points in the window.
pub fn backup_timeline(window: &Window, points: &[(DateTime<Utc>, i64)]) -> String {
    let max = points.iter().map(|(_, b)| *b as f64).fold(0.0, f64::max);
    let f = Frame::new(window, max);
    let mut s = open(
        "chart-backups",
        "Backup timeline: snapshot time and size of each recovery point",
        points.len(),
    );
    axes(&mut s, &f, window, &bytes);
    if points.is_empty() {
        empty_note(&mut s, "no backup completed in the window");
    }
    for (t, size) in points {
        let (x, y) = (f.x(*t), f.y(*size as f64));
        let _ = write!(
            s,
            "<line class=\"stem\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{y:.1}\"/>\
             <circle class=\"pt\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"><title>{} · {}</title></circle>",
            H - BOTTOM,
            t.format("%Y-%m-%d %H:%M"),
            bytes(*size as f64)
        );
    }
    s.push_str("</svg>");
    s
}

/// The achieved RPO (gap to the previous recovery point) over the window, against the
/// objective.
pub fn achieved_rpo(window: &Window, points: &[RpoPoint], objective: Option<i64>) -> String {
    let max = points
        .iter()
        .map(|p| p.gap_seconds as f64)
        .chain(objective.map(|o| o as f64))
        .fold(0.0, f64::max);
    let f = Frame::new(window, max);
    let mut s = open(
        "chart-rpo",
        "Achieved RPO: gap before each recovery point, against the objective",
        points.len(),
    );
    axes(&mut s, &f, window, &seconds);
    if let Some(o) = objective {
        objective_line(
            &mut s,
            &f,
            o as f64,
            &format!("objective {}", seconds(o as f64)),
        );
    }
    if points.is_empty() {
        empty_note(&mut s, "fewer than two recovery points in the window");
    } else {
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", f.x(p.at), f.y(p.gap_seconds as f64)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    for p in points {
        let over = objective.is_some_and(|o| p.gap_seconds > o);
        let _ = write!(
            s,
            "<circle class=\"pt{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{} · gap {}</title></circle>",
            if over { " over" } else { "" },
            f.x(p.at),
            f.y(p.gap_seconds as f64),
            p.at.format("%Y-%m-%d %H:%M"),
            seconds(p.gap_seconds as f64)
        );
    }
    s.push_str("</svg>");
    s
}

/// Each drill's measured RTO against its objective.
pub fn drill_rto(window: &Window, drills: &[&Drill], policy_objective_ms: Option<i64>) -> String {
    let obj = |d: &Drill| d.rto_objective_ms.or(policy_objective_ms);
    let max = drills
        .iter()
        .filter_map(|d| d.measured_rto_ms)
        .chain(drills.iter().filter_map(|d| obj(d)))
        .chain(policy_objective_ms)
        .map(|ms| ms as f64 / 1000.0)
        .fold(0.0, f64::max);
    let f = Frame::new(window, max);
    let mut s = open(
        "chart-rto",
        "Drill RTO trend: measured restore time of each drill, against the objective",
        drills.len(),
    );
    axes(&mut s, &f, window, &seconds);
    if let Some(o) = policy_objective_ms {
        objective_line(
            &mut s,
            &f,
            o as f64 / 1000.0,
            &format!("objective {}", seconds(o as f64 / 1000.0)),
        );
    }
    if drills.is_empty() {
        empty_note(&mut s, "no drill measured a restore time in the window");
    } else {
        let path: Vec<String> = drills
            .iter()
            .map(|d| {
                format!(
                    "{:.1},{:.1}",
                    f.x(d.finished_at.unwrap_or(d.started_at)),
                    f.y(d.measured_rto_ms.unwrap_or(0) as f64 / 1000.0)
                )
            })
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    for d in drills {
        let at = d.finished_at.unwrap_or(d.started_at);
        let rto = d.measured_rto_ms.unwrap_or(0) as f64 / 1000.0;
        let over = obj(d).is_some_and(|o| d.measured_rto_ms.unwrap_or(0) > o);
        // A drill's own objective, when it differs from the policy's: a short mark.
        if let Some(o) = d
            .rto_objective_ms
            .filter(|o| Some(*o) != policy_objective_ms)
        {
            let (x, y) = (f.x(at), f.y(o as f64 / 1000.0));
            let _ = write!(
                s,
                "<line class=\"objective\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
                x - 8.0,
                x + 8.0
            );
        }
        let _ = write!(
            s,
            "<rect class=\"pt{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\"><title>{} · {} · {}</title></rect>",
            if over { " over" } else { "" },
            f.x(at) - 3.5,
            f.y(rto) - 3.5,
            at.format("%Y-%m-%d %H:%M"),
            seconds(rto),
            match d.passed {
                Some(true) => "passed",
                Some(false) => "failed",
                None => "unfinished",
            }
        );
    }
    s.push_str("</svg>");
    s
}

/// How many retained backups are verified within their cycle, stale, failed, never verified,
/// or not yet due: one bar each.
pub fn verification(c: &Coverage) -> String {
    let bars = [
        ("verified", "verified in cycle", c.verified.len()),
        ("stale", "verified, cycle ran out", c.stale.len()),
        ("failed", "verify failed", c.failed.len()),
        ("never", "never verified", c.never.len()),
        ("notdue", "not yet due", c.not_due.len()),
    ];
    let max = bars.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64;
    let h = 40.0 + 30.0 * bars.len() as f64;
    let mut s = format!(
        "<svg id=\"chart-verification\" class=\"chart\" data-points=\"{}\" viewBox=\"0 0 {W} {h}\" \
         width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"Verification coverage of the retained backups\" \
         xmlns=\"http://www.w3.org/2000/svg\">",
        bars.len()
    );
    let label_w = 170.0;
    let span = W - label_w - 80.0;
    for (i, (class, label, n)) in bars.iter().enumerate() {
        let y = 14.0 + 30.0 * i as f64;
        let w = (*n as f64 / max * span).max(1.0);
        let _ = write!(
            s,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"pt bar-{class}\" data-count=\"{n}\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"20\"/>\
             <text class=\"count\" x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
            label_w - 8.0,
            y + 15.0,
            escape(label),
            label_w + w + 6.0,
            y + 15.0
        );
    }
    if let Some(share) = c.share() {
        let _ = write!(
            s,
            "<text class=\"share\" x=\"{label_w}\" y=\"{:.1}\">{:.1}% of the due backups verified in cycle</text>",
            h - 8.0,
            share * 100.0
        );
    }
    s.push_str("</svg>");
    s
}
