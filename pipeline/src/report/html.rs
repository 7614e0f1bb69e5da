//! The run report as one self-contained HTML page: [`render_html`].
//!
//! Everything is inline: the CSS in a `<style>`, the plots as `<svg>`, no
//! script, and nothing (font, image, style sheet) fetched from anywhere; a
//! Content-Security-Policy meta forbids both, so even a missed escape could
//! not run or load anything. Every string taken from the report is escaped.
//! The page is a pure function of the report: the same report gives the same
//! bytes (no clock, no hash-map order).
//!
//! The plots are drawn here rather than with a plotting crate: they are three
//! simple figures (lines with markers, grouped bars, value-against-threshold
//! bars), a few hundred lines of SVG writing. `plotters`, the maintained
//! choice, would add a dependency tree to the pipeline crate (with its default
//! features, font loading and image codecs) and still not give us what the
//! page uses: a responsive `viewBox`, `<title>` tooltips on every mark, and
//! classes that the CSS and the tests address.

use std::fmt::{self, Write as _};

use super::{EvalRecord, FileRecord, GateRecord, RunReport, StepRecord, TensorRecord};

/// `write!` into a `String`, which cannot fail.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        let _ = write!($dst, $($arg)*);
    }};
}

const OK: &str = "#1a7f37";
const BAD: &str = "#cf222e";
const BEFORE: &str = "#a9b4c0";
const AFTER: &str = "#2f6fdb";
/// Series colours (Tableau 10, yellow moved late: it is the faintest on white).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#9c755f", "#ff9da7",
    "#edc948", "#bab0ac",
];
/// Width of every plot's `viewBox` (the page's column is wider; the plots
/// shrink with a narrower window).
const PLOT_W: f64 = 960.0;
/// At most this many tensors outside the layers get a slot beside the
/// per-layer error plot; all of them are listed in its caption.
const MAX_APART_SLOTS: usize = 4;

const MIB: f64 = 1024.0 * 1024.0;

/// The report as one self-contained HTML page.
pub fn render_html(report: &RunReport) -> String {
    let mut h = String::with_capacity(32 * 1024 + report.tensors.len() * 512);
    head(&mut h, report);
    h.push_str("<body>\n<main>\n");
    header(&mut h, report);
    files_section(&mut h, report);
    steps_section(&mut h, &report.steps);
    error_section(&mut h, &report.tensors);
    size_section(&mut h, &report.tensors);
    evals_section(&mut h, &report.evals);
    tensors_section(&mut h, &report.tensors);
    w!(
        h,
        "<footer>Written by edgec {}.</footer>\n</main>\n</body>\n</html>\n",
        text_or_dash(&report.edgec_version)
    );
    h
}

// ------------------------------------------------------------------ escaping and numbers

/// `s` safe as HTML text and as a quoted attribute value. Control characters
/// (other than tab and newline) are not valid in HTML and become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\n' | '\t' => o.push(c),
            c if c.is_control() => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// Escaped `s`, or a dash when it is empty.
fn text_or_dash(s: &str) -> String {
    if s.is_empty() {
        "—".to_string()
    } else {
        escape(s)
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut (not escaped).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(n.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// `x` to `sig` significant digits: plain for 0.001 ≤ |x| < 10⁶, scientific
/// otherwise; `trim` drops trailing zeros (0.0500 → 0.05).
fn fmt_sig(x: f64, sig: usize, trim: bool) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞" } else { "−∞" }.to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let mag = x.abs().log10().floor() as i32;
    let sig = sig.max(1) as i32;
    let s = if (-3..6).contains(&mag) {
        format!("{:.*}", (sig - 1 - mag).max(0) as usize, x)
    } else {
        let s = format!("{:.*e}", (sig - 1) as usize, x);
        if !trim {
            return s;
        }
        // Trim the mantissa only: 5.00e-5 → 5e-5.
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') {
            m.trim_end_matches('0').trim_end_matches('.')
        } else {
            m
        };
        return format!("{m}e{e}");
    };
    if trim && s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Bytes in binary units: 512 B, 3.52 MiB, 45.3 MiB, 512 KiB.
fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let dec = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.dec$} {}", UNITS[u])
}

/// Seconds: 34 ms, 1.25 s, 12.5 s, 2 min 05 s, 1 h 02 min.
fn fmt_seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "—".to_string();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1000.0);
    }
    if s < 10.0 {
        return format!("{s:.2} s");
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{} h {:02} min", t / 3600, t % 3600 / 60)
    }
}

fn fmt_percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", x * 100.0)
    } else {
        fmt_sig(x, 3, true)
    }
}

fn fmt_ratio(before: u64, after: u64) -> Option<String> {
    (before > 0 && after > 0).then(|| format!("{:.2}×", before as f64 / after as f64))
}

/// An SVG coordinate: one decimal, never `-0.0`, finite.
struct P(f64);

impl fmt::Display for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.0.is_finite() && self.0.abs() >= 0.05 {
            self.0
        } else {
            0.0
        };
        write!(f, "{v:.1}")
    }
}

/// A "nice" step (1, 2 or 5 × 10^k) that splits `span` into about `parts`.
fn nice_step(span: f64, parts: f64) -> f64 {
    let raw = span / parts;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let n = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * p
}

/// A value axis from 0 that holds `max`: its top, tick step, number of
/// ticks above 0 and the decimals its labels need.
fn value_axis(max: f64) -> (f64, f64, usize, usize) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let step = nice_step(max, 5.0);
    let n = (max / step - 1e-9).ceil().max(1.0) as usize;
    let dec = (-step.log10().floor()).max(0.0) as usize;
    (n as f64 * step, step, n, dec)
}

/// Indexes of `key` in `keys`, appending it (first-appearance order).
fn slot<'a>(keys: &mut Vec<&'a str>, key: &'a str) -> usize {
    match keys.iter().position(|k| *k == key) {
        Some(i) => i,
        None => {
            keys.push(key);
            keys.len() - 1
        }
    }
}

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A second round of colours gets dashed lines, so series stay apart.
fn dash(i: usize) -> &'static str {
    if i >= PALETTE.len() {
        " stroke-dasharray=\"5 3\""
    } else {
        ""
    }
}

// ------------------------------------------------------------------ page frame

const CSS: &str = r#":root{--ok:#1a7f37;--bad:#cf222e;--muted:#57606a;--line:#d0d7de;--bg:#f6f8fa;--fg:#1f2328}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 12px;display:flex;align-items:center;gap:12px}
h2{font-size:17px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 8px;display:flex;align-items:center;gap:10px}
.badge{display:inline-block;padding:1px 10px;border-radius:12px;font-size:13px;font-weight:600;color:#fff;letter-spacing:.03em}
.badge.ok{background:var(--ok)}.badge.bad{background:var(--bad)}.badge.cached{background:#6e7781}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600;white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok-text{color:var(--ok);font-weight:600}.bad-text{color:var(--bad);font-weight:600}
code,pre{font:12px/1.4 "DejaVu Sans Mono","Liberation Mono",ui-monospace,monospace}
code{overflow-wrap:anywhere}
pre{margin:4px 0;white-space:pre-wrap;overflow-wrap:anywhere}
figure{margin:8px 0 0}
figcaption,.note{color:var(--muted);font-size:13px;margin:6px 0 0}
.empty{color:var(--muted);font-style:italic}
.muted{color:var(--muted)}
details>summary{cursor:pointer}
details.tensors>summary{padding:6px 0;font-weight:600}
details.tensors table{margin-top:6px}
.table-wrap{overflow-x:auto}
.metrics{max-width:520px;margin-top:8px}
svg.plot{display:block;width:100%;max-width:960px;height:auto;overflow:visible}
svg.plot.gates text{font-size:12px}
svg.plot text{font-size:11px;fill:var(--fg)}
svg.plot .tick text,svg.plot text.muted{fill:var(--muted)}
svg.plot .axis{stroke:#8c959f;stroke-width:1}
svg.plot .grid{stroke:#eaeef2;stroke-width:1}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"#;

fn head(h: &mut String, r: &RunReport) {
    let title = if r.recipe.is_empty() {
        "edgec run report".to_string()
    } else {
        format!("edgec run report: {}", clip(&r.recipe, 80))
    };
    w!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{CSS}</style>\n</head>\n",
        escape(&title)
    );
}

fn header(h: &mut String, r: &RunReport) {
    let (class, verdict) = if r.passed {
        ("ok", "PASSED")
    } else {
        ("bad", "FAILED")
    };
    w!(
        h,
        "<header>\n<h1>edgec run report <span class=\"badge {class}\" id=\"verdict\">{verdict}</span></h1>\n<dl class=\"meta\">\n"
    );
    w!(
        h,
        "<dt>Recipe</dt><dd>{}</dd>\n<dt>edgec</dt><dd>{}</dd>\n",
        if r.recipe.is_empty() {
            "—".to_string()
        } else {
            format!("<code>{}</code>", escape(&r.recipe))
        },
        text_or_dash(&r.edgec_version)
    );
    let gates: Vec<&GateRecord> = r.evals.iter().flat_map(|e| &e.gates).collect();
    if gates.is_empty() {
        h.push_str("<dt>Gates</dt><dd>none</dd>\n");
    } else {
        let passed = gates.iter().filter(|g| g.passed).count();
        let class = if passed == gates.len() {
            "ok-text"
        } else {
            "bad-text"
        };
        w!(
            h,
            "<dt>Gates</dt><dd><span class=\"{class}\">{passed} of {} passed</span></dd>\n",
            gates.len()
        );
    }
    if !r.steps.is_empty() {
        let secs: f64 = r.steps.iter().map(|s| s.seconds).sum();
        let cached = r.steps.iter().filter(|s| s.cached).count();
        let peak = r.steps.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0);
        w!(
            h,
            "<dt>Time</dt><dd>{} over {} step{}{}</dd>\n<dt>Peak memory</dt><dd>{}</dd>\n",
            fmt_seconds(secs),
            r.steps.len(),
            if r.steps.len() == 1 { "" } else { "s" },
            if cached > 0 {
                format!(" ({cached} cached)")
            } else {
                String::new()
            },
            fmt_bytes(peak)
        );
    }
    if !r.tensors.is_empty() {
        let before: u64 = r.tensors.iter().map(|t| t.bytes_before).sum();
        let after: u64 = r.tensors.iter().map(|t| t.bytes_after).sum();
        w!(
            h,
            "<dt>Tensors</dt><dd>{} tensors, {} → {}{}</dd>\n",
            r.tensors.len(),
            fmt_bytes(before),
            fmt_bytes(after),
            fmt_ratio(before, after)
                .map(|x| format!(" ({x} smaller)"))
                .unwrap_or_default()
        );
    }
    h.push_str("</dl>\n</header>\n");
}

// ------------------------------------------------------------------ tables

fn short_hash(sha: &str) -> String {
    if sha.is_empty() {
        return "<span class=\"muted\">—</span>".to_string();
    }
    format!(
        "<code title=\"{}\">{}</code>",
        escape(sha),
        escape(&clip(sha, 13))
    )
}

fn files_section(h: &mut String, r: &RunReport) {
    h.push_str("<section id=\"files\">\n<h2>Inputs and outputs</h2>\n");
    if r.inputs.is_empty() && r.outputs.is_empty() {
        h.push_str("<p class=\"empty\">No files recorded.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<div class=\"table-wrap\"><table>\n<thead><tr><th></th><th>Name</th><th>Path</th>\
         <th class=\"num\">Size</th><th>SHA-256</th></tr></thead>\n<tbody>\n",
    );
    let rows = |h: &mut String, role: &str, files: &[FileRecord]| {
        for f in files {
            w!(
                h,
                "<tr><td class=\"muted\">{role}</td><td>{}</td><td><code>{}</code></td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>\n",
                text_or_dash(&f.name),
                text_or_dash(&f.path),
                fmt_bytes(f.bytes),
                short_hash(&f.sha256)
            );
        }
    };
    rows(h, "input", &r.inputs);
    rows(h, "output", &r.outputs);
    h.push_str("</tbody></table></div>\n</section>\n");
}

/// A JSON value for a table cell: compact, or folded when long.
fn json_cell(v: &serde_json::Value) -> String {
    let empty = match v {
        serde_json::Value::Null => true,
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if empty {
        return "<span class=\"muted\">—</span>".to_string();
    }
    let compact = serde_json::to_string(v).unwrap_or_default();
    if compact.chars().count() <= 120 {
        return format!("<code>{}</code>", escape(&compact));
    }
    let pretty = serde_json::to_string_pretty(v).unwrap_or_else(|_| compact.clone());
    format!(
        "<details><summary><code>{}</code></summary><pre>{}</pre></details>",
        escape(&clip(&compact, 60)),
        escape(&pretty)
    )
}

fn steps_section(h: &mut String, steps: &[StepRecord]) {
    h.push_str("<section id=\"steps\">\n<h2>Steps</h2>\n");
    if steps.is_empty() {
        h.push_str("<p class=\"empty\">No steps recorded.</p>\n</section>\n");
        return;
    }
    h.push_str(
        "<div class=\"table-wrap\"><table>\n<thead><tr><th class=\"num\">#</th><th>Pass</th>\
         <th class=\"num\">Time</th><th class=\"num\">Peak RSS</th><th></th><th>Parameters</th>\
         <th>Summary</th></tr></thead>\n<tbody>\n",
    );
    for s in steps {
        w!(
            h,
            "<tr><td class=\"num\">{}</td><td><strong>{}</strong></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            s.index,
            text_or_dash(&s.pass),
            fmt_seconds(s.seconds),
            fmt_bytes(s.peak_rss_bytes),
            if s.cached {
                "<span class=\"badge cached\">cached</span>"
            } else {
                ""
            },
            json_cell(&s.params),
            json_cell(&s.summary)
        );
    }
    h.push_str("</tbody></table></div>\n</section>\n");
}

fn tensors_section(h: &mut String, tensors: &[TensorRecord]) {
    h.push_str("<section id=\"tensors\">\n<h2>Tensors</h2>\n");
    if tensors.is_empty() {
        h.push_str("<p class=\"empty\">No tensors recorded.</p>\n</section>\n");
        return;
    }
    w!(
        h,
        "<details class=\"tensors\"><summary>All {} tensor{} (name, type, bits per weight, sizes, sparsity, error)</summary>\n\
         <div class=\"table-wrap\"><table>\n<thead><tr><th>Name</th><th>Kind</th><th class=\"num\">Layer</th>\
         <th>Shape</th><th>Type</th><th class=\"num\">bpw</th><th class=\"num\">Before</th>\
         <th class=\"num\">After</th><th class=\"num\">Sparsity</th><th class=\"num\">Error</th></tr></thead>\n<tbody>\n",
        tensors.len(),
        if tensors.len() == 1 { "" } else { "s" }
    );
    for t in tensors {
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        w!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            text_or_dash(&t.name),
            text_or_dash(&t.kind),
            t.layer.map(|l| l.to_string()).unwrap_or_else(|| "—".into()),
            if shape.is_empty() { "—".into() } else { shape },
            text_or_dash(&t.ty),
            if t.bits_per_weight.is_finite() {
                format!("{:.2}", t.bits_per_weight)
            } else {
                fmt_sig(t.bits_per_weight, 3, true)
            },
            fmt_bytes(t.bytes_before),
            fmt_bytes(t.bytes_after),
            if t.sparsity_before > 0.0 && t.sparsity_before != t.sparsity {
                format!("{} → {}", fmt_percent(t.sparsity_before), fmt_percent(t.sparsity))
            } else {
                fmt_percent(t.sparsity)
            },
            fmt_sig(t.error, 3, false)
        );
    }
    h.push_str("</tbody></table></div>\n</details>\n</section>\n");
}

// ------------------------------------------------------------------ per-layer error plot

fn error_section(h: &mut String, tensors: &[TensorRecord]) {
    h.push_str("<section id=\"error\">\n<h2>Quantization error per layer</h2>\n");
    if tensors.is_empty() {
        h.push_str("<p class=\"empty\">No tensors recorded.</p>\n</section>\n");
        return;
    }
    // Kinds that have a layered tensor with a non-zero error get a series (all
    // their layered tensors); kinds stored exactly everywhere (norms) are noted.
    let mut plotted_kinds: Vec<&str> = Vec::new();
    for t in tensors {
        if t.layer.is_some() && t.error.is_finite() && t.error != 0.0 {
            slot(&mut plotted_kinds, &t.kind);
        }
    }
    let mut layered: Vec<&TensorRecord> = Vec::new();
    let mut apart: Vec<&TensorRecord> = Vec::new();
    let mut apart_exact: Vec<&TensorRecord> = Vec::new();
    let mut exact_kinds: Vec<&str> = Vec::new();
    let mut exact_counts: Vec<usize> = Vec::new();
    let mut not_finite = 0usize;
    for t in tensors {
        if !t.error.is_finite() {
            not_finite += 1;
        } else if t.layer.is_some() {
            if plotted_kinds.contains(&t.kind.as_str()) {
                layered.push(t);
            } else {
                let i = slot(&mut exact_kinds, &t.kind);
                if i == exact_counts.len() {
                    exact_counts.push(0);
                }
                exact_counts[i] += 1;
            }
        } else if t.error != 0.0 {
            apart.push(t);
        } else {
            apart_exact.push(t);
        }
    }
    // One colour per kind, series first, then kinds seen only outside the layers.
    let mut kinds = plotted_kinds.clone();
    for t in &apart {
        slot(&mut kinds, &t.kind);
    }

    if layered.is_empty() && apart.is_empty() {
        h.push_str("<p class=\"empty\">No tensor has a quantization error to plot");
    } else {
        h.push_str("<figure>\n");
        error_plot(h, &kinds, &layered, &apart);
        h.push_str("<figcaption>Relative RMS error ‖W − Q(W)‖ / ‖W‖ of each written tensor, by layer; hover a point for its tensor.");
    }
    if !apart.is_empty() {
        h.push_str(" Outside the layers: ");
        let list: Vec<String> = apart
            .iter()
            .take(20)
            .map(|t| {
                format!(
                    "<code>{}</code> ({}) {}",
                    escape(&t.name),
                    escape(&t.ty),
                    fmt_sig(t.error, 3, false)
                )
            })
            .collect();
        h.push_str(&list.join("; "));
        if apart.len() > 20 {
            w!(h, "; and {} more (see the tensor table)", apart.len() - 20);
        }
        if apart.len() > MAX_APART_SLOTS {
            w!(h, " (the first {MAX_APART_SLOTS} are drawn at the right)");
        }
        h.push('.');
    }
    if !exact_kinds.is_empty() || !apart_exact.is_empty() {
        h.push_str(" Stored exactly (error 0), not drawn: ");
        let mut list: Vec<String> = exact_kinds
            .iter()
            .zip(&exact_counts)
            .map(|(k, n)| format!("{} ×{n}", escape(k)))
            .collect();
        list.extend(apart_exact.iter().take(10).map(|t| escape(&t.name)));
        if apart_exact.len() > 10 {
            list.push(format!("{} more", apart_exact.len() - 10));
        }
        h.push_str(&list.join(", "));
        h.push('.');
    }
    if not_finite > 0 {
        w!(
            h,
            " <span class=\"bad-text\">{not_finite} tensor{} with a non-finite error (not drawn).</span>",
            if not_finite == 1 { "" } else { "s" }
        );
    }
    if layered.is_empty() && apart.is_empty() {
        h.push_str("</p>\n</section>\n");
    } else {
        h.push_str("</figcaption>\n</figure>\n</section>\n");
    }
}

fn error_plot(h: &mut String, kinds: &[&str], layered: &[&TensorRecord], apart: &[&TensorRecord]) {
    let n_slots = apart.len().min(MAX_APART_SLOTS);
    let (ml, mt, mb): (f64, f64, f64) = (62.0, 12.0, 44.0);
    let legend_w = 132.0;
    let ph = 250.0;
    let slot_w = 66.0;
    let gap = if n_slots > 0 { 20.0 } else { 0.0 };
    let panel_w = n_slots as f64 * slot_w;
    let pw = PLOT_W - ml - legend_w - gap - panel_w - 8.0;
    let legend_h = 18.0 * kinds.len() as f64 + 8.0;
    let height = (mt + ph + mb).max(mt + legend_h + 8.0);
    let bottom = mt + ph;

    let max_err = layered
        .iter()
        .chain(apart.iter().take(n_slots))
        .map(|t| t.error)
        .fold(0.0, f64::max);
    let (top, step, n_ticks, dec) = value_axis(max_err);
    let y = |v: f64| bottom - v / top * ph;

    w!(
        h,
        "<svg class=\"plot\" data-plot=\"layer-error\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" \
         aria-label=\"Quantization error per layer, one series per tensor kind\">\n",
        P(PLOT_W),
        P(height),
        P(PLOT_W),
        P(height)
    );

    // Value axis: grid lines and ticks across the main plot and the panel.
    h.push_str("<g class=\"tick\">\n");
    for i in 0..=n_ticks {
        let v = i as f64 * step;
        let yy = y(v);
        w!(
            h,
            "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.*}</text>\n",
            P(ml),
            P(ml + pw),
            P(yy),
            P(yy),
            P(ml - 6.0),
            P(yy + 4.0),
            dec,
            v
        );
        if n_slots > 0 {
            let x0 = ml + pw + gap;
            w!(
                h,
                "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>\n",
                P(x0),
                P(x0 + panel_w),
                P(yy),
                P(yy)
            );
        }
    }
    h.push_str("</g>\n");
    w!(
        h,
        "<text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">relative RMS error</text>\n",
        P(mt + ph / 2.0),
        P(mt + ph / 2.0)
    );

    // Layer axis.
    if let (Some(lo), Some(hi)) = (
        layered.iter().filter_map(|t| t.layer).min(),
        layered.iter().filter_map(|t| t.layer).max(),
    ) {
        let n = (hi - lo + 1) as f64;
        let x = |l: usize| ml + ((l - lo) as f64 + 0.5) / n * pw;
        let lstep = nice_step(n, 10.0).ceil().max(1.0) as usize;
        h.push_str("<g class=\"tick\">\n");
        let mut l = lo.div_ceil(lstep) * lstep;
        while l <= hi {
            w!(
                h,
                "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n",
                P(x(l)),
                P(x(l)),
                P(bottom),
                P(bottom + 4.0),
                P(x(l)),
                P(bottom + 16.0)
            );
            l += lstep;
        }
        h.push_str("</g>\n");

        // Lines first, then the points over them.
        let mut series: Vec<(usize, Vec<&TensorRecord>)> = Vec::new();
        for (ki, kind) in kinds.iter().enumerate() {
            let mut pts: Vec<&TensorRecord> = layered
                .iter()
                .copied()
                .filter(|t| t.kind == *kind)
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by_key(|t| t.layer); // stable: report order within a layer
            series.push((ki, pts));
        }
        for (ki, pts) in &series {
            let points: Vec<String> = pts
                .iter()
                .map(|t| format!("{},{}", P(x(t.layer.unwrap_or(lo))), P(y(t.error))))
                .collect();
            w!(
                h,
                "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" stroke-linejoin=\"round\"{} points=\"{}\"/>\n",
                color(*ki),
                dash(*ki),
                points.join(" ")
            );
        }
        for (ki, pts) in &series {
            for t in pts {
                let l = t.layer.unwrap_or(lo);
                w!(
                    h,
                    "<circle class=\"pt\" cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"><title>{} (layer {l}, {}): error {}</title></circle>\n",
                    P(x(l)),
                    P(y(t.error)),
                    color(*ki),
                    escape(&t.name),
                    escape(&t.ty),
                    fmt_sig(t.error, 4, false)
                );
            }
        }
        w!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">layer</text>\n",
            P(ml + pw / 2.0),
            P(height - 8.0)
        );
    } else {
        w!(
            h,
            "<text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no layered tensor has an error</text>\n",
            P(ml + pw / 2.0),
            P(mt + ph / 2.0)
        );
    }
    w!(
        h,
        "<path class=\"axis\" fill=\"none\" d=\"M{} {}V{}H{}\"/>\n",
        P(ml),
        P(mt),
        P(bottom),
        P(ml + pw)
    );

    // Tensors outside the layers: a panel of their own on the same scale.
    if n_slots > 0 {
        let x0 = ml + pw + gap;
        w!(
            h,
            "<path class=\"axis\" fill=\"none\" d=\"M{} {}V{}H{}\"/>\n",
            P(x0),
            P(mt),
            P(bottom),
            P(x0 + panel_w)
        );
        for (i, t) in apart.iter().take(n_slots).enumerate() {
            let ki = kinds.iter().position(|k| *k == t.kind).unwrap_or(0);
            let cx = x0 + (i as f64 + 0.5) * slot_w;
            w!(
                h,
                "<circle class=\"pt apart\" cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\"><title>{} (no layer, {}): error {}</title></circle>\n\
                 <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\"><title>{}</title>{}</text>\n",
                P(cx),
                P(y(t.error)),
                color(ki),
                escape(&t.name),
                escape(&t.ty),
                fmt_sig(t.error, 4, false),
                P(cx),
                P(bottom + 16.0),
                escape(&t.name),
                escape(&clip(&t.kind, 11))
            );
        }
        w!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">not in a layer</text>\n",
            P(x0 + panel_w / 2.0),
            P(height - 8.0)
        );
    }

    // Legend.
    let lx = PLOT_W - legend_w + 14.0;
    h.push_str("<g class=\"legend\">\n");
    for (ki, kind) in kinds.iter().enumerate() {
        let ly = mt + 10.0 + 18.0 * ki as f64;
        w!(
            h,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"1.6\"{}/>\
             <circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\"><title>{}</title>{}</text>\n",
            P(lx),
            P(lx + 20.0),
            P(ly),
            P(ly),
            color(ki),
            dash(ki),
            P(lx + 10.0),
            P(ly),
            color(ki),
            P(lx + 26.0),
            P(ly + 4.0),
            escape(kind),
            escape(&clip(kind, 16))
        );
    }
    h.push_str("</g>\n</svg>\n");
}

// ------------------------------------------------------------------ size by kind

fn size_section(h: &mut String, tensors: &[TensorRecord]) {
    h.push_str("<section id=\"size\">\n<h2>Size by tensor kind</h2>\n");
    if tensors.is_empty() {
        h.push_str("<p class=\"empty\">No tensors recorded.</p>\n</section>\n");
        return;
    }
    let mut kinds: Vec<&str> = Vec::new();
    let mut sums: Vec<(u64, u64, usize)> = Vec::new();
    for t in tensors {
        let i = slot(&mut kinds, &t.kind);
        if i == sums.len() {
            sums.push((0, 0, 0));
        }
        sums[i].0 += t.bytes_before;
        sums[i].1 += t.bytes_after;
        sums[i].2 += 1;
    }
    let before: u64 = sums.iter().map(|s| s.0).sum();
    let after: u64 = sums.iter().map(|s| s.1).sum();

    h.push_str("<figure>\n");
    size_plot(h, &kinds, &sums);
    w!(
        h,
        "<figcaption>Bytes of the tensors of each kind before and after. Total {} → {}",
        fmt_bytes(before),
        fmt_bytes(after)
    );
    if let Some(r) = fmt_ratio(before, after) {
        w!(
            h,
            ": <strong id=\"size-ratio\">{r} smaller</strong> ({} of the original)",
            fmt_percent(after as f64 / before as f64)
        );
    }
    h.push_str(".</figcaption>\n</figure>\n");

    h.push_str(
        "<div class=\"table-wrap\"><table class=\"sizes\">\n<thead><tr><th>Kind</th><th class=\"num\">Tensors</th>\
         <th class=\"num\">Before</th><th class=\"num\">After</th><th class=\"num\">Ratio</th></tr></thead>\n<tbody>\n",
    );
    for (k, (b, a, n)) in kinds.iter().zip(&sums) {
        w!(
            h,
            "<tr><td>{}</td><td class=\"num\">{n}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            text_or_dash(k),
            fmt_bytes(*b),
            fmt_bytes(*a),
            fmt_ratio(*b, *a).unwrap_or_else(|| "—".into())
        );
    }
    w!(
        h,
        "<tr><th>Total</th><th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">{}</th><th class=\"num\">{}</th></tr>\n",
        tensors.len(),
        fmt_bytes(before),
        fmt_bytes(after),
        fmt_ratio(before, after).unwrap_or_else(|| "—".into())
    );
    h.push_str("</tbody></table></div>\n</section>\n");
}

fn size_plot(h: &mut String, kinds: &[&str], sums: &[(u64, u64, usize)]) {
    let max = sums.iter().map(|s| s.0.max(s.1)).max().unwrap_or(0) as f64;
    let (unit, div) = if max < MIB {
        ("KiB", 1024.0)
    } else {
        ("MiB", MIB)
    };
    let (ml, mr, mt) = (64.0, 12.0, 30.0);
    let ph = 220.0;
    let pw = PLOT_W - ml - mr;
    let gw = pw / kinds.len().max(1) as f64;
    const LABEL_CHARS: usize = 16;
    let labels: Vec<String> = kinds.iter().map(|k| clip(k, LABEL_CHARS)).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    // About 6.5 px a character at 11 px: turn the labels when they do not fit.
    let turn = longest * 6.5 + 6.0 > gw;
    let mb = if turn {
        30.0 + longest * 6.5 * 0.574
    } else {
        44.0
    };
    let height = mt + ph + mb;
    let bottom = mt + ph;
    let (top, step, n_ticks, dec) = value_axis(max / div);
    let y = |bytes: u64| bottom - bytes as f64 / div / top * ph;

    w!(
        h,
        "<svg class=\"plot\" data-plot=\"size\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" \
         aria-label=\"Size by tensor kind before and after\">\n<g class=\"tick\">\n",
        P(PLOT_W),
        P(height),
        P(PLOT_W),
        P(height)
    );
    for i in 0..=n_ticks {
        let v = i as f64 * step;
        let yy = bottom - v / top * ph;
        w!(
            h,
            "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.*}</text>\n",
            P(ml),
            P(ml + pw),
            P(yy),
            P(yy),
            P(ml - 6.0),
            P(yy + 4.0),
            dec,
            v
        );
    }
    h.push_str("</g>\n");
    w!(
        h,
        "<text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">size ({unit})</text>\n",
        P(mt + ph / 2.0),
        P(mt + ph / 2.0)
    );

    let bw = (gw * 0.34).min(30.0);
    for (i, ((kind, label), (b, a, n))) in kinds.iter().zip(&labels).zip(sums).enumerate() {
        let cx = ml + (i as f64 + 0.5) * gw;
        for (j, (bytes, fill, what)) in [(*b, BEFORE, "before"), (*a, AFTER, "after")]
            .into_iter()
            .enumerate()
        {
            let yy = y(bytes);
            // A kind too small for a pixel at this scale still shows.
            let bh = if bytes > 0 {
                (bottom - yy).max(1.0)
            } else {
                0.0
            };
            let x = if j == 0 { cx - bw - 1.0 } else { cx + 1.0 };
            w!(
                h,
                "<rect class=\"bar {what}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\">\
                 <title>{} {what}: {} ({n} tensor{})</title></rect>\n",
                P(x),
                P(bottom - bh),
                P(bw),
                P(bh),
                escape(kind),
                fmt_bytes(bytes),
                if *n == 1 { "" } else { "s" }
            );
        }
        if gw >= 34.0 {
            if let Some(r) = fmt_ratio(*b, *a) {
                w!(
                    h,
                    "<text class=\"muted\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
                    P(cx),
                    P(y((*b).max(*a)) - 4.0),
                    r.replace(".00×", "×")
                );
            }
        }
        if turn {
            w!(
                h,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-35 {} {})\"><title>{}</title>{}</text>\n",
                P(cx + 3.0),
                P(bottom + 14.0),
                P(cx + 3.0),
                P(bottom + 14.0),
                escape(kind),
                escape(label)
            );
        } else {
            w!(
                h,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\"><title>{}</title>{}</text>\n",
                P(cx),
                P(bottom + 16.0),
                escape(kind),
                escape(label)
            );
        }
    }
    w!(
        h,
        "<path class=\"axis\" fill=\"none\" d=\"M{} {}V{}H{}\"/>\n",
        P(ml),
        P(mt),
        P(bottom),
        P(ml + pw)
    );
    // Legend, top right.
    let lx = PLOT_W - mr - 150.0;
    w!(
        h,
        "<g class=\"legend\"><rect x=\"{}\" y=\"6\" width=\"12\" height=\"12\" fill=\"{BEFORE}\"/><text x=\"{}\" y=\"16\">before</text>\
         <rect x=\"{}\" y=\"6\" width=\"12\" height=\"12\" fill=\"{AFTER}\"/><text x=\"{}\" y=\"16\">after</text></g>\n</svg>\n",
        P(lx),
        P(lx + 17.0),
        P(lx + 75.0),
        P(lx + 92.0)
    );
}

// ------------------------------------------------------------------ evals and gates

fn evals_section(h: &mut String, evals: &[EvalRecord]) {
    h.push_str("<section id=\"evals\">\n<h2>Evals and gates</h2>\n");
    if evals.is_empty() {
        h.push_str("<p class=\"empty\">No eval steps in this run.</p>\n</section>\n");
        return;
    }
    for e in evals {
        let (class, verdict) = if e.passed {
            ("ok", "passed")
        } else {
            ("bad", "failed")
        };
        w!(
            h,
            "<h3>Eval, step {} <span class=\"badge {class}\">{verdict}</span></h3>\n",
            e.step
        );
        if e.gates.is_empty() {
            h.push_str("<p class=\"empty\">No gates.</p>\n");
        } else {
            gates_plot(h, &e.gates);
        }
        if e.metrics.is_empty() {
            h.push_str("<p class=\"empty\">No metrics.</p>\n");
        } else {
            h.push_str(
                "<table class=\"metrics\">\n<thead><tr><th>Metric</th><th class=\"num\">Value</th></tr></thead>\n<tbody>\n",
            );
            // BTreeMap: name order, deterministic.
            for (k, v) in &e.metrics {
                w!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{}</td></tr>\n",
                    text_or_dash(k),
                    fmt_sig(*v, 5, true)
                );
            }
            h.push_str("</tbody></table>\n");
        }
    }
    h.push_str("</section>\n");
}

/// The comparison a gate makes, from its name: `max_…` gates pass at or
/// below the threshold, `min_…` gates at or above it. The sign is HTML.
fn gate_sign(name: &str, passed: bool) -> (&'static str, &'static str) {
    if name.starts_with("max") {
        ("max", if passed { "≤" } else { "&gt;" })
    } else if name.starts_with("min") {
        ("min", if passed { "≥" } else { "&lt;" })
    } else {
        ("threshold", "vs")
    }
}

fn gates_plot(h: &mut String, gates: &[GateRecord]) {
    let row = 40.0;
    let mt = 6.0;
    let height = mt + row * gates.len() as f64 + 6.0;
    let tx = 190.0;
    let tw = PLOT_W - tx - 290.0;
    w!(
        h,
        "<svg class=\"plot gates\" data-plot=\"gates\" viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" \
         aria-label=\"Eval gates: value against threshold\">\n",
        P(PLOT_W),
        P(height),
        P(PLOT_W),
        P(height)
    );
    for (i, g) in gates.iter().enumerate() {
        let cy = mt + row * (i as f64 + 0.5);
        let fill = if g.passed { OK } else { BAD };
        let finite: Vec<f64> = [g.value, g.threshold, 0.0]
            .into_iter()
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(0.0, f64::min);
        let hi = finite.iter().copied().fold(0.0, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        let hi = hi + 0.15 * span;
        let x = |v: f64| tx + (v - lo) / (hi - lo) * tw;
        let (bound, sign) = gate_sign(&g.name, g.passed);
        w!(
            h,
            "<text x=\"4\" y=\"{}\" font-weight=\"600\"><title>{}</title>{}</text>\n\
             <rect class=\"track\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"16\" fill=\"#eef1f4\"/>\n",
            P(cy + 4.0),
            escape(&g.name),
            escape(&clip(&g.name, 22)),
            P(tx),
            P(cy - 8.0),
            P(tw)
        );
        if lo < 0.0 {
            // Zero, where a negative value's bar starts.
            w!(
                h,
                "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>\n",
                P(x(0.0)),
                P(x(0.0)),
                P(cy - 11.0),
                P(cy + 11.0)
            );
        }
        if g.value.is_finite() {
            let (x0, x1) = (x(0.0), x(g.value));
            w!(
                h,
                "<rect class=\"gate-bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"16\" fill=\"{fill}\">\
                 <title>{}: {} {sign} {bound} {}</title></rect>\n",
                P(x0.min(x1)),
                P(cy - 8.0),
                P((x1 - x0).abs().max(2.0)),
                escape(&g.name),
                fmt_sig(g.value, 4, true),
                fmt_sig(g.threshold, 4, true)
            );
        }
        if g.threshold.is_finite() {
            let xt = x(g.threshold);
            w!(
                h,
                "<line class=\"gate-threshold\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#1f2328\" stroke-width=\"2\"/>\n",
                P(xt),
                P(xt),
                P(cy - 13.0),
                P(cy + 13.0)
            );
        }
        w!(
            h,
            "<text x=\"{}\" y=\"{}\" fill=\"{fill}\" style=\"fill:{fill}\" font-weight=\"600\">{} {sign} {bound} {} {}</text>\n",
            P(tx + tw + 14.0),
            P(cy + 4.0),
            fmt_sig(g.value, 4, true),
            fmt_sig(g.threshold, 4, true),
            if g.passed { "✓ passed" } else { "✗ failed" }
        );
    }
    h.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, kind: &str, layer: Option<usize>, error: f64) -> TensorRecord {
        TensorRecord {
            name: name.to_string(),
            kind: kind.to_string(),
            layer,
            shape: vec![64, 64],
            ty: if error == 0.0 { "F32" } else { "Q4_K" }.to_string(),
            bits_per_weight: if error == 0.0 { 32.0 } else { 4.5 },
            bytes_before: 64 * 64 * 4,
            bytes_after: if error == 0.0 {
                64 * 64 * 4
            } else {
                64 * 64 * 9 / 16
            },
            sparsity: 0.01,
            sparsity_before: 0.0,
            error,
        }
    }

    /// 3 layers × (attn_q, ffn_down, attn_norm) + token_embd + output_norm.
    fn sample() -> RunReport {
        let mut tensors = vec![tensor("token_embd.weight", "token_embd", None, 0.02)];
        for l in 0..3 {
            tensors.push(tensor(
                &format!("blk.{l}.attn_q.weight"),
                "attn_q",
                Some(l),
                0.05 + 0.01 * l as f64,
            ));
            tensors.push(tensor(
                &format!("blk.{l}.ffn_down.weight"),
                "ffn_down",
                Some(l),
                0.04,
            ));
            tensors.push(tensor(
                &format!("blk.{l}.attn_norm.weight"),
                "attn_norm",
                Some(l),
                0.0,
            ));
        }
        tensors.push(tensor("output_norm.weight", "output_norm", None, 0.0));
        RunReport {
            edgec_version: "0.1.0".into(),
            recipe: "recipes/q4.toml".into(),
            inputs: vec![FileRecord {
                name: "input".into(),
                path: "model.safetensors".into(),
                bytes: 123_456_789,
                sha256: "ab".repeat(32),
            }],
            steps: vec![StepRecord {
                index: 0,
                pass: "quantize".into(),
                params: serde_json::json!({"type": "Q4_K"}),
                seconds: 12.5,
                peak_rss_bytes: 3 << 30,
                cached: false,
                summary: serde_json::Value::Null,
            }],
            tensors,
            evals: vec![EvalRecord {
                step: 1,
                metrics: [
                    ("kld".to_string(), 0.031),
                    ("top1_agreement".to_string(), 0.93),
                ]
                .into_iter()
                .collect(),
                gates: vec![
                    GateRecord {
                        name: "max_kld".into(),
                        threshold: 0.05,
                        value: 0.031,
                        passed: true,
                    },
                    GateRecord {
                        name: "min_top1".into(),
                        threshold: 0.95,
                        value: 0.93,
                        passed: false,
                    },
                ],
                passed: false,
            }],
            outputs: vec![],
            passed: false,
        }
    }

    fn svg<'a>(html: &'a str, plot: &str) -> &'a str {
        let start = html
            .find(&format!("data-plot=\"{plot}\""))
            .unwrap_or_else(|| panic!("no {plot} plot"));
        let end = start + html[start..].find("</svg>").expect("unclosed svg");
        &html[start..end]
    }

    #[test]
    fn plots_have_one_mark_per_tensor_and_bar_per_kind() {
        let html = render_html(&sample());
        let err = svg(&html, "layer-error");
        // attn_q and ffn_down over 3 layers, token_embd beside them; norms are noted.
        assert_eq!(err.matches("<circle class=\"pt\"").count(), 6);
        assert_eq!(err.matches("<circle class=\"pt apart\"").count(), 1);
        assert_eq!(err.matches("<polyline class=\"series\"").count(), 2);
        assert!(
            !err.contains("attn_norm"),
            "norms are stored exactly, not drawn"
        );
        assert!(html.contains("attn_norm ×3"), "the exact kinds are noted");
        assert!(html.contains("not in a layer"));
        // Legend: attn_q, ffn_down, token_embd.
        assert_eq!(err.matches("<g class=\"legend\">").count(), 1);
        assert_eq!(
            err[err.find("<g class=\"legend\">").unwrap()..]
                .matches("<circle")
                .count(),
            3
        );

        let size = svg(&html, "size");
        // 5 kinds (token_embd, attn_q, ffn_down, attn_norm, output_norm) × before/after.
        assert_eq!(size.matches("<rect class=\"bar before\"").count(), 5);
        assert_eq!(size.matches("<rect class=\"bar after\"").count(), 5);

        let gates = svg(&html, "gates");
        assert_eq!(gates.matches("class=\"gate-bar\"").count(), 2);
        assert_eq!(gates.matches("class=\"gate-threshold\"").count(), 2);
        assert!(gates.contains(&format!("fill=\"{OK}\"><title>max_kld")));
        assert!(gates.contains(&format!("fill=\"{BAD}\"><title>min_top1")));
        assert!(gates.contains("0.93 &lt; min 0.95 ✗ failed"));
        assert!(html.contains("1 of 2 passed"));
        assert!(html.contains("FAILED"));
        // The tensor table, folded: one row per tensor.
        let table = &html[html.find("<details class=\"tensors\">").unwrap()..];
        assert_eq!(table.matches("<tr><td><code>").count(), 11);
    }

    #[test]
    fn layer_axis_has_layer_ticks_and_value_ticks() {
        let html = render_html(&sample());
        let err = svg(&html, "layer-error");
        for l in 0..3 {
            assert!(
                err.contains(&format!("text-anchor=\"middle\">{l}</text>")),
                "tick {l}"
            );
        }
        // Errors up to 0.07: ticks 0, 0.02 … 0.08.
        assert!(err.contains(">0.08</text>"), "{err}");
        assert!(svg(&html, "size").contains("size (KiB)"));
    }

    #[test]
    fn strings_from_the_report_are_escaped() {
        let mut r = sample();
        r.recipe = "<script>alert(\"x\")</script> & 'q'".into();
        r.edgec_version = "1<2".into();
        r.tensors[1].name = "blk.0.<&\"evil'>".into();
        r.tensors[1].kind = "<b>kind</b>".into();
        r.tensors[1].ty = "Q4_K\"><img src=x>".into();
        r.inputs[0].path = "/tmp/<dir>/m&m.gguf".into();
        r.inputs[0].sha256 = "\"><i>".into();
        r.steps[0].pass = "<pass>".into();
        r.steps[0].params = serde_json::json!({"<key>": "a&b\"c"});
        r.evals[0].gates[0].name = "max_<gate>\"".into();
        r.evals[0].metrics.insert("<m>".into(), 1.0);
        let html = render_html(&r);
        for raw in [
            "<script>", "<b>", "<img", "<i>", "<pass>", "<key>", "<gate>", "<m>", "<dir>", "<&\"",
            "1<2",
        ] {
            assert!(!html.contains(raw), "unescaped {raw:?}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;")
        );
        assert!(html.contains("blk.0.&lt;&amp;&quot;evil&#39;&gt;"));
        assert!(html.contains("/tmp/&lt;dir&gt;/m&amp;m.gguf"));
        assert!(html.contains("&quot;&lt;key&gt;&quot;:&quot;a&amp;b\\&quot;c&quot;"));
        // The only tags are ours: every '<' opens a known element.
        for (i, _) in html.match_indices('<') {
            let rest = &html[i + 1..];
            let name: String = rest
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            assert!(
                [
                    "!DOCTYPE",
                    "html",
                    "head",
                    "meta",
                    "title",
                    "style",
                    "body",
                    "main",
                    "header",
                    "h1",
                    "h2",
                    "h3",
                    "span",
                    "dl",
                    "dt",
                    "dd",
                    "code",
                    "section",
                    "div",
                    "table",
                    "thead",
                    "tbody",
                    "tr",
                    "th",
                    "td",
                    "strong",
                    "details",
                    "summary",
                    "pre",
                    "figure",
                    "figcaption",
                    "svg",
                    "g",
                    "line",
                    "text",
                    "polyline",
                    "circle",
                    "path",
                    "rect",
                    "p",
                    "footer",
                ]
                .contains(&name.as_str()),
                "unexpected tag <{name} at {i}: {}",
                &html[i..(i + 60).min(html.len())]
            );
        }
    }

    #[test]
    fn empty_report_renders() {
        let html = render_html(&RunReport::default());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.ends_with("</html>\n"));
        assert!(!html.contains("<svg"));
        assert!(html.contains("No tensors recorded."));
        assert!(html.contains("No eval steps in this run."));
        assert!(html.contains("No steps recorded."));
        assert!(html.contains("No files recorded."));
        // `passed` is false in a default report: it says so.
        assert!(html.contains("FAILED"));

        // Tensors all stored exactly, an eval without gates or metrics.
        let mut r = RunReport {
            passed: true,
            ..Default::default()
        };
        r.tensors.push(tensor("norm.weight", "norm", Some(0), 0.0));
        r.evals.push(EvalRecord::default());
        let html = render_html(&r);
        assert!(!html.contains("data-plot=\"layer-error\""));
        assert!(html.contains("No tensor has a quantization error to plot"));
        assert!(html.contains("data-plot=\"size\""));
        assert!(html.contains("No gates."));
        assert!(html.contains("No metrics."));
        assert!(html.contains("PASSED"));
    }

    #[test]
    fn deterministic_self_contained_and_finite() {
        let mut r = sample();
        r.tensors[2].error = f64::NAN;
        r.tensors[3].error = f64::INFINITY;
        r.evals[0].gates[0].value = f64::NAN;
        let a = render_html(&r);
        assert_eq!(a, render_html(&r.clone()));
        for bad in [
            "<script", "<link", "src=", "href=", "url(", "@import", "http://", "https://",
        ] {
            assert!(!a.contains(bad), "{bad}");
        }
        // No NaN or inf made it into a coordinate.
        for plot in ["layer-error", "size", "gates"] {
            let s = svg(&a, plot);
            for attr in ["x=\"NaN", "y=\"NaN", "cy=\"NaN", "inf\""] {
                assert!(!s.contains(attr), "{plot}: {attr}");
            }
        }
        assert!(a.contains("2 tensors with a non-finite error (not drawn)"));
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_sig(0.012345, 3, false), "0.0123");
        assert_eq!(fmt_sig(0.05, 3, false), "0.0500");
        assert_eq!(fmt_sig(0.05, 3, true), "0.05");
        assert_eq!(fmt_sig(12.3456, 4, true), "12.35");
        assert_eq!(fmt_sig(0.00005, 3, true), "5e-5");
        assert_eq!(fmt_sig(1234567.0, 3, false), "1.23e6");
        assert_eq!(fmt_sig(0.0, 3, false), "0");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(fmt_bytes(45 * 1024 * 1024 + 300 * 1024), "45.3 MiB");
        assert_eq!(fmt_bytes(3 << 30), "3.00 GiB");
        assert_eq!(fmt_seconds(0.034), "34 ms");
        assert_eq!(fmt_seconds(1.254), "1.25 s");
        assert_eq!(fmt_seconds(125.0), "2 min 05 s");
        assert_eq!(fmt_seconds(3725.0), "1 h 02 min");
        let (top, step, n, dec) = value_axis(0.07);
        assert!((top - 0.08).abs() < 1e-12 && (step - 0.02).abs() < 1e-12 && n == 4 && dec == 2);
        let (top, _, n, dec) = value_axis(260.0);
        assert!((top - 300.0).abs() < 1e-9 && n == 3 && dec == 0);
        assert_eq!(P(-0.01).to_string(), "0.0");
        assert_eq!(P(f64::NAN).to_string(), "0.0");
    }
}
