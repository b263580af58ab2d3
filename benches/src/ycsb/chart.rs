//! A horizontal grouped bar chart of ratios on a logarithmic axis, written as plain SVG text (no
//! fonts or system libraries needed: the viewer renders the `<text>` elements).

use std::fmt::Write;

/// One group of bars: a label and `(series, ratio)` pairs.
pub struct Group {
    /// The group's label (a workload row).
    pub label: String,
    /// One bar per series; ratios must be positive.
    pub bars: Vec<(String, f64)>,
}

const COLORS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#9c755f"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG document: `title`, subtitle lines, the groups, and a vertical line at 1x.
pub fn svg(title: &str, subtitle: &[&str], groups: &[Group]) -> String {
    let series: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for g in groups {
            for (s, _) in &g.bars {
                if !v.contains(s) {
                    v.push(s.clone());
                }
            }
        }
        v
    };
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|b| b.1))
        .filter(|r| r.is_finite() && *r > 0.0)
        .collect();
    let lo = all.iter().copied().fold(1.0f64, f64::min).log10().floor().min(0.0);
    let hi = all.iter().copied().fold(1.0f64, f64::max).log10().ceil().max(1.0);
    let (left, right, top, bar_h, gap) = (210.0, 60.0, 84.0, 11.0, 12.0);
    let plot_w = 620.0;
    let group_h = |g: &Group| g.bars.len() as f64 * bar_h + gap;
    let plot_h: f64 = groups.iter().map(group_h).sum();
    let width = left + plot_w + right;
    let legend_y = top + plot_h + 40.0;
    let lo = lo - 0.3; // room for the labels of bars below 1x
    let height = legend_y + 30.0;
    let x_of = |r: f64| left + (r.log10() - lo) / (hi - lo) * plot_w;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="12" y="22" font-size="15" font-weight="bold">{}</text>"##,
        esc(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="12" y="{}" fill="#555">{}</text>"##,
            40 + 14 * i,
            esc(line)
        );
    }
    // Grid: one line per power of ten, and the 2x/5x minor ticks.
    let mut e = lo.ceil();
    while e <= hi + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let r = 10f64.powf(e) * m;
            if r.log10() > hi + 1e-9 {
                continue;
            }
            let x = x_of(r);
            let (stroke, w) = if m == 1.0 { ("#bbb", 1.0) } else { ("#e5e5e5", 0.7) };
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{w}"/>"##,
                top + plot_h
            );
            if m != 1.0 && hi - lo > 3.5 {
                continue;
            }
            let label = if r >= 1.0 { format!("{r:.0}x") } else { format!("{r}x") };
            let _ = writeln!(
                s,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
                top + plot_h + 14.0
            );
        }
        e += 1.0;
    }
    let x1 = x_of(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{:.1}" stroke="black" stroke-width="1.5"/>"##,
        top - 6.0,
        top + plot_h
    );
    let _ = writeln!(
        s,
        r##"<text x="{x1:.1}" y="{}" text-anchor="middle">1x = equal</text>"##,
        top - 9.0
    );
    let mut y = top;
    for g in groups {
        let gh = group_h(g) - gap;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{}</text>"##,
            left - 8.0,
            y + gh / 2.0,
            esc(&g.label)
        );
        for (name, r) in &g.bars {
            let c = COLORS[series.iter().position(|x| x == name).unwrap_or(0) % COLORS.len()];
            if r.is_finite() && *r > 0.0 {
                let (xa, xb) = (x_of(1.0), x_of(*r));
                let (x, w) = if xb >= xa { (xa, xb - xa) } else { (xb, xa - xb) };
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{c}"><title>{}: {r:.2}x</title></rect>"##,
                    y + 0.5,
                    w.max(0.5),
                    bar_h - 1.0,
                    esc(name)
                );
                let (tx, anchor) = if xb >= xa {
                    (xb + 3.0, "start")
                } else {
                    (xb - 3.0, "end")
                };
                let text = if *r >= 10.0 {
                    format!("{r:.0}x")
                } else if *r >= 0.1 {
                    format!("{r:.2}x")
                } else {
                    format!("{r:.3}x")
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{tx:.1}" y="{:.1}" font-size="9" text-anchor="{anchor}" dominant-baseline="middle">{text}</text>"##,
                    y + bar_h / 2.0
                );
            }
            y += bar_h;
        }
        y += gap;
    }
    let mut lx = left;
    for (i, name) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            legend_y - 10.0,
            COLORS[i % COLORS.len()],
            lx + 16.0,
            legend_y,
            esc(name)
        );
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    s.push_str("</svg>\n");
    s
}
