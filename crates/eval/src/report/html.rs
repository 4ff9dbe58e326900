//! A self-contained HTML page: no scripts, no external resources; charts are inline SVG
//! drawn here (accuracy per task with 95% intervals, pass@k curves, response-length
//! histograms), followed by the per-sample table.

use std::fmt::Write;

use super::Report;

const COLORS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn accuracy_chart(r: &Report) -> String {
    let (w, row, left) = (640.0, 28.0, 170.0);
    let h = 30.0 + row * r.tasks.len() as f64;
    let x = |v: f64| left + v * (w - left - 20.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="pass@1 per task">"#
    );
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{0}" x2="{0}" y1="5" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" font-size="10" text-anchor="middle">{3}%</text>"##,
            x(v),
            h - 18.0,
            h - 5.0,
            t * 25
        );
    }
    for (i, t) in r.tasks.iter().enumerate() {
        let y = 8.0 + row * i as f64;
        let m = &t.metrics;
        let _ = write!(
            s,
            r##"<text x="{tx}" y="{ty}" font-size="12" text-anchor="end">{name}</text><rect x="{l}" y="{y}" width="{bw}" height="16" fill="{c}"/><line x1="{lo}" x2="{hi}" y1="{cy}" y2="{cy}" stroke="#000"/><line x1="{lo}" x2="{lo}" y1="{a}" y2="{b}" stroke="#000"/><line x1="{hi}" x2="{hi}" y1="{a}" y2="{b}" stroke="#000"/><text x="{vx}" y="{ty}" font-size="11">{v:.1}%</text>"##,
            tx = left - 6.0,
            ty = y + 12.0,
            name = esc(&t.name),
            l = left,
            bw = x(m.pass1) - left,
            c = COLORS[i % COLORS.len()],
            lo = x(m.pass1_ci[0]),
            hi = x(m.pass1_ci[1]),
            cy = y + 8.0,
            a = y + 3.0,
            b = y + 13.0,
            vx = x(m.pass1_ci[1]) + 4.0,
            v = 100.0 * m.pass1,
        );
    }
    s + "</svg>"
}

fn pass_at_k_chart(r: &Report) -> String {
    let (w, h, l, b) = (640.0, 260.0, 50.0, 30.0);
    let kmax = r.tasks.iter().map(|t| t.k).max().unwrap_or(1).max(2) as f64;
    let x = |k: f64| l + (k.ln() / kmax.ln()) * (w - l - 150.0);
    let y = |v: f64| 10.0 + (1.0 - v) * (h - b - 10.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="pass@k curves">"#
    );
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{0}" y2="{0}" stroke="#ddd"/><text x="{tx}" y="{ty}" font-size="10" text-anchor="end">{1}%</text>"##,
            y(v),
            t * 25,
            x2 = w - 150.0,
            tx = l - 4.0,
            ty = y(v) + 3.0
        );
    }
    let mut k = 1.0;
    while k <= kmax {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">k={k}</text>"#,
            x(k),
            h - 10.0
        );
        k *= 2.0;
    }
    for (i, t) in r.tasks.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = t
            .metrics
            .pass_at_k
            .iter()
            .map(|(k, v)| format!("{:.1},{:.1}", x(*k as f64), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap();
            let _ = write!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>"#);
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="11" fill="{c}">{}</text>"#,
            w - 140.0,
            20.0 + 14.0 * i as f64,
            esc(&t.name)
        );
    }
    s + "</svg>"
}

fn length_histograms(r: &Report) -> String {
    let mut s = String::new();
    for (i, t) in r.tasks.iter().enumerate() {
        let lens: Vec<f64> = t.samples.iter().map(|x| x.chars as f64).collect();
        let max = lens.iter().cloned().fold(1.0, f64::max);
        let bins = 20usize;
        let mut counts = vec![0usize; bins];
        for l in &lens {
            counts[((l / max) * (bins as f64 - 1.0)).round() as usize] += 1;
        }
        let top = *counts.iter().max().unwrap_or(&1).max(&1) as f64;
        let (w, h) = (300.0, 110.0);
        let bw = (w - 20.0) / bins as f64;
        let _ = write!(
            s,
            r#"<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="lengths {0}">"#,
            esc(&t.name)
        );
        for (b, c) in counts.iter().enumerate() {
            let bh = (*c as f64 / top) * (h - 30.0);
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{c}</title></rect>"#,
                10.0 + bw * b as f64,
                h - 20.0 - bh,
                bw - 1.0,
                COLORS[i % COLORS.len()]
            );
        }
        let _ = write!(
            s,
            r#"<text x="10" y="{}" font-size="10">0</text><text x="{}" y="{}" font-size="10" text-anchor="end">{max:.0} chars</text></svg><figcaption>{}</figcaption></figure>"#,
            h - 6.0,
            w - 10.0,
            h - 6.0,
            esc(&t.name)
        );
    }
    s
}

/// Renders the page.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Evaluation report: {0}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}.ok{{background:#e6f4e6}}.bad{{background:#fbe6e6}}figure{{display:inline-block;margin:0 1em 1em 0}}details{{margin:1em 0}}</style></head><body>
<h1>Evaluation report: {0}</h1>"#,
        esc(&r.name)
    );
    let md = super::markdown::render(r);
    s += "<h2>Summary</h2><table><tr><th>task</th><th>checker</th><th>problems</th><th>k</th><th>pass@1</th><th>95% CI</th><th>cons@k</th><th>format</th><th>mean chars</th></tr>";
    for t in &r.tasks {
        let m = &t.metrics;
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}–{:.1}%</td><td>{}</td><td>{:.1}%</td><td>{:.0}</td></tr>",
            esc(&t.name), t.checker, t.problems, t.k, 100.0 * m.pass1, 100.0 * m.pass1_ci[0], 100.0 * m.pass1_ci[1],
            m.cons_at_k.map(|c| format!("{:.1}%", 100.0 * c)).unwrap_or_else(|| "–".into()),
            100.0 * m.format_rate, m.chars.mean
        );
    }
    s += "</table><h2>pass@1 per task (95% bootstrap interval)</h2>";
    s += &accuracy_chart(r);
    s += "<h2>pass@k</h2>";
    s += &pass_at_k_chart(r);
    s += "<h2>Response lengths</h2>";
    s += &length_histograms(r);
    let _ = write!(
        s,
        "<details><summary>Markdown summary</summary><pre>{}</pre></details>",
        esc(&md)
    );
    for t in &r.tasks {
        let _ = write!(s, "<details><summary>{} samples</summary><table><tr><th>id</th><th>sample</th><th>verdict</th><th>extracted</th><th>format</th><th>chars</th></tr>", esc(&t.name));
        for x in &t.samples {
            let _ = write!(
                s,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if x.correct { "ok" } else { "bad" },
                esc(&x.id), x.sample, if x.correct { "correct" } else { "wrong" },
                esc(x.extracted.as_deref().or(x.error.as_deref()).unwrap_or("")), x.format, x.chars
            );
        }
        s += "</table></details>";
    }
    s + "</body></html>\n"
}
