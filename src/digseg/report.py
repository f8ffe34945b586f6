"""`index.html`: a static, self-contained report of a `digseg predict` run.

One page, inline CSS and JS, no external URLs. Per image: the input with the colour overlay on top,
clipped by a vertical divider the reader drags (or moves with the range input under the image); the
legend with each class's share of the pixels; links to the label map, the overlay with legend, the
per-image JSON, the per-class probability maps and the uncertainty map. Files that could not be read are
listed at the top, each with the reason. Images are referenced by paths relative to the report, so the
output folder can be moved or zipped as a whole.

All text (file names, class names, settings) is HTML-escaped, and file names in links are URL-quoted.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from .predict_records import open_atomically

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
THUMBNAILS_ALWAYS = 8  # show every probability map as a thumbnail up to this many; else only present classes

_CSS = """
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; }
h2 { font-size: 1.1rem; margin: 0; overflow-wrap: anywhere; }
h3 { font-size: 0.95rem; margin: 1rem 0 0.4rem; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; font-size: 0.9rem; }
dl.settings dt { font-weight: 600; }
dl.settings dd { margin: 0; overflow-wrap: anywhere; }
.hint { color: #555; font-size: 0.9rem; }
figure.entry { margin: 1.5rem 0; padding: 1rem; background: #fff; border: 1px solid #ddd; border-radius: 8px;
  display: grid; grid-template-columns: minmax(0, 3fr) minmax(14rem, 2fr); gap: 1.25rem; }
figure.entry > figcaption { grid-column: 1 / -1; display: flex; gap: 1rem; align-items: baseline; }
.size { color: #666; font-size: 0.85rem; white-space: nowrap; }
.compare { position: relative; width: 100%; max-width: 720px; overflow: hidden; cursor: ew-resize;
  touch-action: none; user-select: none; -webkit-user-select: none; background: #eee; }
.compare img { position: absolute; inset: 0; width: 100%; height: 100%; display: block; pointer-events: none; }
.compare.small img, .maps.small img { image-rendering: pixelated; }
.divider { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #fff;
  box-shadow: 0 0 0 1px rgba(0, 0, 0, 0.5); pointer-events: none; }
.tag { position: absolute; top: 4px; padding: 1px 6px; font-size: 0.75rem; color: #fff;
  background: rgba(0, 0, 0, 0.55); border-radius: 3px; pointer-events: none; }
.tag.left { left: 4px; } .tag.right { right: 4px; }
input.split { width: 100%; max-width: 720px; margin: 0.5rem 0 0; }
ul.legend { list-style: none; padding: 0; margin: 0; }
ul.legend li { display: flex; align-items: center; gap: 0.5rem; padding: 0.15rem 0; }
.swatch { width: 1rem; height: 1rem; border: 1px solid #000; flex: none; }
.swatch.untinted { background: repeating-linear-gradient(45deg, #fff 0 3px, #ccc 3px 6px); }
.name { overflow-wrap: anywhere; }
.frac { margin-left: auto; font-variant-numeric: tabular-nums; color: #333; }
.links a { margin-right: 0.75rem; }
.maps { display: flex; flex-wrap: wrap; gap: 0.5rem; }
.maps a { display: flex; flex-direction: column; align-items: center; font-size: 0.8rem; text-decoration: none;
  color: inherit; max-width: 7rem; }
.maps img { width: 6rem; height: auto; border: 1px solid #ccc; background: #000; }
.note { color: #666; font-size: 0.85rem; }
section.skipped { margin: 1rem 0; padding: 0.5rem 1rem; background: #fff4f0; border: 1px solid #e0b4a8; border-radius: 8px; }
section.skipped li { overflow-wrap: anywhere; }
@media (max-width: 800px) { figure.entry { grid-template-columns: 1fr; } }
"""

_JS = """
(function () {
  function setSplit(fig, pct) {
    pct = Math.min(100, Math.max(0, pct));
    fig.querySelector('.over').style.clipPath = 'inset(0 ' + (100 - pct) + '% 0 0)';
    fig.querySelector('.divider').style.left = pct + '%';
    fig.querySelector('input.split').value = String(pct);
  }
  document.querySelectorAll('figure.entry').forEach(function (fig) {
    var box = fig.querySelector('.compare');
    var range = fig.querySelector('input.split');
    range.addEventListener('input', function () { setSplit(fig, parseFloat(range.value)); });
    function follow(e) {
      var r = box.getBoundingClientRect();
      setSplit(fig, (e.clientX - r.left) / r.width * 100);
    }
    box.addEventListener('pointerdown', function (e) {
      box.setPointerCapture(e.pointerId);
      follow(e);
      e.preventDefault();
    });
    box.addEventListener('pointermove', function (e) {
      if (box.hasPointerCapture(e.pointerId)) follow(e);
    });
  });
})();
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _url(file_name: str) -> str:
    """A relative file name as an attribute-safe URL ('<b>&.png' -> '%3Cb%3E%26.png')."""
    return _esc(quote(file_name))


def _colour(value: str) -> str:
    return value if isinstance(value, str) and _HEX.match(value) else "#808080"


def _settings_block(settings: dict) -> str:
    rows = []
    for key, value in settings.items():
        if value is None:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        rows.append(f"<dt>{_esc(key)}</dt><dd>{_esc(shown)}</dd>")
    return f'<dl class="settings">{"".join(rows)}</dl>' if rows else ""


def _legend(entry: dict) -> str:
    items = []
    for c in entry["classes"]:
        swatch = (f'<span class="swatch" style="background:{_colour(c.get("colour"))}"></span>' if c.get("tinted", True)
                  else '<span class="swatch untinted" title="left untinted in the overlay"></span>')
        items.append(f'<li>{swatch}<span class="name">{_esc(c["name"])}</span>'
                     f'<span class="frac">{c["fraction"] * 100:.1f}%</span></li>')
    if entry.get("unlabelled_fraction"):
        items.append('<li><span class="swatch untinted" title="left untinted in the overlay"></span>'
                     '<span class="name">no class</span>'
                     f'<span class="frac">{entry["unlabelled_fraction"] * 100:.1f}%</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


def _maps(entry: dict, small: str) -> str:
    files = entry["files"]
    present = {c["name"] for c in entry["classes"]}
    maps = files.get("probabilities", [])
    thumbs, others = [], []
    for m in maps:
        name, file = _esc(m["class"]), _url(m["file"])
        if len(maps) <= THUMBNAILS_ALWAYS or m["class"] in present:
            thumbs.append(f'<a href="{file}"><img src="{file}" alt="probability of {name}" draggable="false">'
                          f'<span class="name">{name}</span></a>')
        else:
            others.append(f'<a href="{file}">{name}</a>')
    parts = ['<h3>Class probability maps</h3>']
    if thumbs:
        parts.append(f'<div class="maps{small}">{"".join(thumbs)}</div>')
    if others:
        parts.append(f'<details><summary>{len(others)} more (classes not in the label map)</summary>'
                     f'<p class="links">{" ".join(others)}</p></details>')
    parts.append('<h3>Uncertainty</h3>')
    if files.get("uncertainty"):
        u = _url(files["uncertainty"])
        parts.append(f'<div class="maps{small}"><a href="{u}"><img src="{u}" alt="ensemble uncertainty" draggable="false">'
                     '<span>ensemble spread (white = most)</span></a></div>')
    else:
        parts.append(f'<p class="note">{_esc(entry.get("uncertainty_note", "no uncertainty map"))}</p>')
    return "".join(parts)


def _figure(index: int, entry: dict) -> str:
    files = entry["files"]
    w, h = int(entry["image_size"]["width"]), int(entry["image_size"]["height"])
    name = _esc(entry["name"])
    small = " small" if max(w, h) < 256 else ""
    links = " ".join(f'<a href="{_url(files[key])}">{text}</a>' for key, text in
                     [("label", "label map"), ("overlay_legend", "overlay with legend"), ("summary", "JSON")] if files.get(key))
    return f"""
<figure class="entry" id="image-{index}">
  <figcaption><h2 class="file-name">{name}</h2><span class="size">{w} &times; {h} px</span></figcaption>
  <div class="view">
    <div class="compare{small}" style="aspect-ratio: {w} / {h}">
      <img class="under" src="{_url(files["input"])}" alt="input {name}" width="{w}" height="{h}" draggable="false">
      <img class="over" src="{_url(files["overlay"])}" alt="prediction for {name}" width="{w}" height="{h}"
           draggable="false" style="clip-path: inset(0 50% 0 0)">
      <div class="divider" style="left: 50%"></div>
      <span class="tag left">prediction</span><span class="tag right">input</span>
    </div>
    <input class="split" type="range" min="0" max="100" step="0.5" value="50"
           aria-label="divider between prediction and input for {name}">
  </div>
  <div class="details">
    {_legend(entry)}
    <p class="links">{links}</p>
    {_maps(entry, small)}
  </div>
</figure>"""


def _skipped_block(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    items = "".join(f'<li><span class="skipped-name">{_esc(e["name"])}</span>: {_esc(e["reason"])}</li>' for e in skipped)
    return (f'<section class="skipped"><h2>Skipped: {len(skipped)} file{"s" if len(skipped) != 1 else ""} '
            f'that could not be read</h2><ul>{items}</ul></section>')


def write_report(out_dir: Path, entries: Iterable[dict], settings: dict | None = None, title: str = "digseg predict",
                 skipped: list[dict] | None = None, num_entries: int | None = None) -> Path:
    """Write `<out_dir>/index.html` for `entries` (the per-image summaries of `predict_outputs`, whose
    file names are relative to `out_dir`) and return its path. `settings` are listed at the top, then the
    `skipped` files ({"name", "reason"} each), if any.

    `entries` may be an iterator (pass `num_entries` then): each panel is written to the file as it comes, so
    a report over many thousands of images is never held in memory. The page replaces an earlier one
    atomically."""
    out_dir = Path(out_dir)
    skipped = skipped or []
    n = len(entries) if num_entries is None else num_entries  # type: ignore[arg-type]
    count = f"{n} image{'s' if n != 1 else ''}" + (f", {len(skipped)} skipped" if skipped else "")
    head = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}: {count}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
  <h1>{_esc(title)}: {count}</h1>
  {_settings_block(settings or {})}
  <p class="hint">Drag across an image, or move the slider under it: the prediction is left of the divider,
  the input right of it. Percentages are shares of all pixels.</p>
  {_skipped_block(skipped)}
</header>
<main>"""
    path = out_dir / "index.html"
    with open_atomically(path) as f:
        f.write(head)
        for i, entry in enumerate(entries):
            f.write(_figure(i, entry))
        f.write(f"""
</main>
<script>{_JS}</script>
</body>
</html>
""")
    return path
