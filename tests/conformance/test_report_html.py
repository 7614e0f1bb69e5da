"""The run report's HTML page (pipeline/src/report/html.rs) in a real browser:
headless Chromium lays it out, a measuring script (added to a copy of the page,
test-side only) checks that every plot has a size and that its points and bars
are drawn inside it, and a screenshot of the page as written shows the plots'
colours where the plots are. The page comes from the `render_report` example
until the CLI has a report command."""

import hashlib
import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

from conftest import REPO, need, run

CHROMIUM_HINT = ("install it with `DEBIAN_FRONTEND=noninteractive apt-get install -y chromium` "
                 "(scripts/setup-env.sh installs it), or point EDGEC_CHROMIUM at a Chromium binary")

LAYERS = 30
# kind, shape (rows, cols), written type
LAYER_KINDS = [
    ("attn_q", (2048, 2048), "Q4_K"),
    ("attn_k", (256, 2048), "Q4_K"),
    ("attn_v", (256, 2048), "Q6_K"),
    ("attn_output", (2048, 2048), "Q4_K"),
    ("ffn_gate", (5632, 2048), "Q4_K"),
    ("ffn_up", (5632, 2048), "Q4_K"),
    ("ffn_down", (2048, 5632), "Q6_K"),
]
BPW = {"Q4_K": 4.5, "Q6_K": 6.5625, "F32": 32.0}
BASE_ERROR = {"Q4_K": 0.085, "Q6_K": 0.021, "F32": 0.0}
# The page's colours (html.rs): series palette, size bars, gates, verdict.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#9c755f"]
BEFORE, AFTER, OK, BAD = "#a9b4c0", "#2f6fdb", "#1a7f37", "#cf222e"
RECIPE = "recipes/q4_k_m <mixed> & \"quoted\" 'kld'.toml"

# Appended to a copy of the page: measures every <svg> and its drawn shapes and
# writes the result into the DOM, which --dump-dom prints.
MEASURE = """<script>
(function () {
  const out = {svgs: [], scrollWidth: document.documentElement.scrollWidth,
               innerWidth: window.innerWidth, height: document.documentElement.scrollHeight,
               title: document.title, recipe: document.querySelector('header dd code').textContent};
  const box = (r) => ({x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height});
  out.verdict = box(document.getElementById('verdict').getBoundingClientRect());
  const details = document.querySelector('details.tensors');
  out.tensorRows = details ? details.querySelectorAll('tbody tr').length : -1;
  out.tensorsOpen = details ? details.open : null;
  for (const svg of document.querySelectorAll('svg')) {
    const r = svg.getBoundingClientRect();
    const s = {plot: svg.dataset.plot, box: box(r), drawn: {}, outside: []};
    for (const el of svg.querySelectorAll('circle, rect, line, polyline, path, text')) {
      const b = el.getBBox();
      if (!(b.width > 0 || b.height > 0)) continue;
      const key = el.tagName + (el.getAttribute('class') ? '.' + el.getAttribute('class').split(' ').join('.') : '');
      s.drawn[key] = (s.drawn[key] || 0) + 1;
      const e = el.getBoundingClientRect();
      if (e.left < r.left - 2 || e.right > r.right + 2 || e.top < r.top - 2 || e.bottom > r.bottom + 2)
        s.outside.push(key + ' ' + (el.textContent || '').slice(0, 40));
    }
    out.svgs.push(s);
  }
  const pre = document.createElement('pre');
  pre.id = 'edgec-measure';
  pre.style.display = 'none';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def plausible_report() -> dict:
    """A 30-layer model quantized to Q4_K/Q6_K, with one passing and one failing gate."""
    def tensor(name, kind, layer, shape, ty, error):
        n = shape[0] * shape[1]
        return {"name": name, "kind": kind, "layer": layer, "shape": list(shape), "type": ty,
                "bits_per_weight": BPW[ty], "bytes_before": n * 2, "bytes_after": int(n * BPW[ty] / 8),
                "sparsity": 0.0 if ty == "F32" else 0.0021, "error": error}

    tensors = [tensor("token_embd.weight", "token_embd", None, (32000, 2048), "Q6_K", 0.0197)]
    for layer in range(LAYERS):
        # The first and last layers are the hardest to quantize, as in real models.
        shape_of_depth = 1.0 + 0.35 * math.exp(-layer / 3) + 0.25 * math.exp((layer - LAYERS + 1) / 3)
        for k, (kind, shape, ty) in enumerate(LAYER_KINDS):
            error = BASE_ERROR[ty] * shape_of_depth * (1 + 0.04 * k) * (1 + 0.03 * math.sin(layer + k))
            tensors.append(tensor(f"blk.{layer}.{kind}.weight", kind, layer, shape, ty, round(error, 6)))
    tensors.append(tensor("output_norm.weight", "output_norm", None, (1, 2048), "F32", 0.0))
    tensors.append(tensor("output.weight", "output", None, (32000, 2048), "Q6_K", 0.0188))

    def file(name, path, size):
        return {"name": name, "path": path, "bytes": size, "sha256": hashlib.sha256(path.encode()).hexdigest()}

    steps = [
        ("read", {"path": "models/llama-1b/model.safetensors"}, 3.41, 2_400_000_000, True, None),
        ("calibrate", {"dataset": "wikitext-2", "samples": 128, "seq_len": 512}, 412.7, 5_100_000_000, False,
         {"tokens": 65536}),
        ("quantize", {"type": "Q4_K_M", "imatrix": True}, 96.2, 5_300_000_000, False, {"tensors": len(tensors)}),
        ("write", {"path": "out/model-q4_k_m.gguf", "format": "gguf"}, 2.05, 5_300_000_000, False, None),
        ("eval", {"dataset": "wikitext-2", "max_kld": 0.05, "min_top1": 0.95}, 188.4, 6_000_000_000, False, None),
    ]
    return {
        "edgec_version": "0.1.0",
        "recipe": RECIPE,
        "inputs": [file("input", "models/llama-1b/model.safetensors", 2_200_119_000),
                   file("wikitext-2", "data/wikitext-2-raw/wiki.train.raw", 10_918_892)],
        "steps": [{"index": i, "pass": p, "params": params, "seconds": secs, "peak_rss_bytes": rss,
                   "cached": cached, "summary": summary}
                  for i, (p, params, secs, rss, cached, summary) in enumerate(steps)],
        "tensors": tensors,
        "evals": [{
            "step": 4,
            "metrics": {"kld": 0.0312, "ppl_candidate": 10.9231, "ppl_reference": 10.4127, "top1_agreement": 0.9312},
            "gates": [{"name": "max_kld", "threshold": 0.05, "value": 0.0312, "passed": True},
                      {"name": "min_top1", "threshold": 0.95, "value": 0.9312, "passed": False}],
            "passed": False,
        }],
        "outputs": [file("write", "out/model-q4_k_m.gguf", 668_000_000)],
        "passed": False,
    }


def chromium() -> str:
    path = os.environ.get("EDGEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    need(Path(path).is_file() and os.access(path, os.X_OK), f"headless Chromium ({path}) is missing: {CHROMIUM_HINT}")
    return path


def browse(browser: str, page: Path, profile: Path, *args) -> subprocess.CompletedProcess:
    """Headless Chromium on a local page: no network, a fresh profile, sRGB at scale 1."""
    profile.mkdir(parents=True, exist_ok=True)
    return run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--force-color-profile=srgb", f"--user-data-dir={profile}", *args, page.as_uri()], timeout=180)


def rgb(hex_colour: str) -> tuple:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def count_colour(image, colour: str, tolerance: int = 8) -> int:
    """Pixels of `image` (RGB) within `tolerance` of `colour` in every channel."""
    want = rgb(colour)
    return sum(n for n, px in image.getcolors(image.width * image.height)
               if all(abs(a - b) <= tolerance for a, b in zip(px, want)))


def test_report_html_renders_in_chromium(tmp_path):
    from PIL import Image

    browser = chromium()
    cargo = shutil.which("cargo")
    need(cargo is not None, "cargo is missing: the page comes from `cargo run -p edgec-pipeline --example render_report`")
    report_json, page = tmp_path / "report.json", tmp_path / "report.html"
    report = plausible_report()
    report_json.write_text(json.dumps(report, indent=1))
    run([cargo, "run", "-q", "-p", "edgec-pipeline", "--example", "render_report", "--", report_json, page],
        timeout=3600, cwd=REPO)
    text = page.read_text(encoding="utf-8")

    # Self-contained: nothing to fetch, nothing to run.
    for needle in ("<script", "<link", "src=", "href=", "url(", "@import", "http://", "https://"):
        assert needle not in text, f"the page holds {needle!r}"
    assert "Content-Security-Policy" in text
    # Deterministic: the same report renders to the same bytes.
    again = tmp_path / "again.html"
    run([cargo, "run", "-q", "-p", "edgec-pipeline", "--example", "render_report", "--", report_json, again],
        timeout=600, cwd=REPO)
    assert again.read_bytes() == page.read_bytes()

    # A copy without the page's CSP (which forbids scripts), with the measuring script.
    measured = tmp_path / "measured.html"
    copy = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?', "", text, count=1)
    measured.write_text(copy.replace("</body>", MEASURE + "\n</body>", 1), encoding="utf-8")
    dom = browse(browser, measured, tmp_path / "profile-dom", "--window-size=1280,1000", "--dump-dom").stdout.decode()
    found = re.search(r'<pre id="edgec-measure"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"the measuring script did not run; the DOM ends with:\n{dom[-2000:]}"
    m = json.loads(html.unescape(found.group(1)))

    # Escaped strings come back as they were written.
    assert m["recipe"] == RECIPE
    assert m["title"] == f"edgec run report: {RECIPE}"
    # The page fits the window; the tensor table is folded but complete.
    assert m["scrollWidth"] <= m["innerWidth"], m
    assert m["tensorsOpen"] is False
    assert m["tensorRows"] == len(report["tensors"])

    plots = {s["plot"]: s for s in m["svgs"]}
    assert sorted(plots) == ["gates", "layer-error", "size"], [s["plot"] for s in m["svgs"]]
    assert len(m["svgs"]) == 3
    for name, s in plots.items():
        assert s["box"]["w"] >= 600 and s["box"]["h"] >= 60, (name, s["box"])
        assert not s["outside"], f"{name}: drawn outside the plot: {s['outside']}"
    err, size, gates = plots["layer-error"]["drawn"], plots["size"]["drawn"], plots["gates"]["drawn"]
    # 30 layers x 7 kinds, one line per kind; token_embd and output beside them.
    assert err.get("circle.pt") == LAYERS * len(LAYER_KINDS), err
    assert err.get("polyline.series") == len(LAYER_KINDS), err
    assert err.get("circle.pt.apart") == 2, err
    # Before and after bars for the 10 kinds (the 8 KiB norm still gets a pixel).
    assert size.get("rect.bar.before") == 10 and size.get("rect.bar.after") == 10, size
    assert gates.get("rect.gate-bar") == 2 and gates.get("line.gate-threshold") == 2, gates

    # A screenshot of the page as written (its CSP on), tall enough for the whole page.
    height = min(int(m["height"]) + 20, 8000)
    shot = tmp_path / "report.png"
    browse(browser, page, tmp_path / "profile-shot", f"--window-size=1280,{height}", f"--screenshot={shot}")
    need(shot.is_file(), f"Chromium wrote no screenshot {shot}")
    image = Image.open(shot).convert("RGB")
    assert image.width == 1280, image.size

    def crop(b):
        return image.crop((int(b["x"]), int(b["y"]), int(b["x"] + b["w"]), int(b["y"] + b["h"])))

    for name, s in plots.items():
        region = crop(s["box"])
        colours = region.getcolors(region.width * region.height)
        white = sum(n for n, px in colours if min(px) >= 250)
        assert len(colours) > 20 and white < 0.97 * region.width * region.height, f"{name} plot looks blank"
    layer_plot = crop(plots["layer-error"]["box"])
    for i, colour in enumerate(PALETTE):
        assert count_colour(layer_plot, colour) >= 30, f"series {LAYER_KINDS[i][0]} ({colour}) not visible"
    size_plot = crop(plots["size"]["box"])
    assert count_colour(size_plot, BEFORE) >= 500 and count_colour(size_plot, AFTER) >= 500
    gate_plot = crop(plots["gates"]["box"])
    assert count_colour(gate_plot, OK) >= 100, "the passing gate is not green"
    assert count_colour(gate_plot, BAD) >= 100, "the failing gate is not red"
    # The verdict badge is styled (the page's own CSS survives its CSP): red, FAILED.
    badge = crop(m["verdict"])
    assert count_colour(badge, BAD, tolerance=12) >= 0.4 * badge.width * badge.height, "the FAILED badge is not red"
