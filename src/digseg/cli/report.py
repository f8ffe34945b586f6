"""The report of a `digseg predict` run: static, self-contained HTML pages (inline CSS and JS, no external URLs) of
REPORT_PAGE_SIZE panels each, `index.html` first, then `index-2.html`, ... Per image: the input with the colour
overlay on top, clipped by a divider the reader drags; the legend; links to the image's other files (any may be
missing). Files are referenced relative to the pages; all text is HTML-escaped, file names URL-quoted."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
from pathlib import Path
from itertools import islice
from typing import Iterable, Iterator, TextIO
from urllib.parse import quote

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
THUMBNAILS_ALWAYS = 8  # show every probability map as a thumbnail up to this many; else only present classes
REPORT_PAGE_SIZE = 100  # panels per report page
PAGE_NEIGHBOURS = 2  # the navigation links this many pages either side of the current one (and the first and last)
_PAGE_FILE = re.compile(r"index-(\d+)\.html")

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
.compare.small img, .maps.small img, img.plain.small { image-rendering: pixelated; }
img.plain { display: block; width: 100%; max-width: 720px; height: auto; background: #eee; }
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
nav.pages { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.4rem 1rem; margin: 1rem 0;
  padding: 0.5rem 1rem; background: #fff; border: 1px solid #ddd; border-radius: 8px; }
nav.pages .page-links { display: flex; gap: 0.5rem; }
nav.pages .current { font-weight: 600; }
nav.pages .disabled, nav.pages .gap { color: #999; }
nav.pages .page-of { margin-left: auto; }
nav.pages .range { color: #555; }
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
  document.querySelectorAll('figure.entry .compare').forEach(function (box) {
    var fig = box.closest('figure.entry');
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


def _legend(entry: dict) -> str:
    untinted = '<span class="swatch untinted" title="left untinted in the overlay"></span>'
    rows = []  # (swatch, escaped name, fraction)
    for c in entry["classes"]:
        colour = c.get("colour") if isinstance(c.get("colour"), str) and _HEX.match(c["colour"]) else "#808080"
        swatch = f'<span class="swatch" style="background:{colour}"></span>' if c.get("tinted", True) else untinted
        rows.append((swatch, _esc(c["name"]), c["fraction"]))
    if entry.get("unlabelled_fraction"):
        rows.append((untinted, "no class", entry["unlabelled_fraction"]))
    items = "".join(f'<li>{swatch}<span class="name">{name}</span><span class="frac">{fraction * 100:.1f}%</span></li>'
                    for swatch, name, fraction in rows)
    return f'<ul class="legend">{items}</ul>'


def _probability_maps(entry: dict, small: str) -> str:
    """Thumbnails (all of them up to THUMBNAILS_ALWAYS, else the classes in the label map), links for the rest."""
    maps = entry["files"].get("probabilities") or []
    if not maps:
        return ""
    present = {c["name"] for c in entry["classes"]}
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
    return "".join(parts)


def _uncertainty(entry: dict, small: str) -> str:
    """The uncertainty map, else the note saying why there is none; "" when the entry has neither."""
    file = entry["files"].get("uncertainty")
    if file:
        u = _url(file)
        return (f'<h3>Uncertainty</h3><div class="maps{small}"><a href="{u}"><img src="{u}" alt="ensemble uncertainty" '
                'draggable="false"><span>ensemble spread (white = most)</span></a></div>')
    if entry.get("uncertainty_note"):
        return f'<h3>Uncertainty</h3><p class="note">{_esc(entry["uncertainty_note"])}</p>'
    return ""


def _view(files: dict, name: str, w: int, h: int, small: str) -> str:
    """The prediction (the overlay, else the label map) over the input copy, clipped by a divider the reader drags
    or moves with the range; else whichever of them exists, plain; else a note."""
    prediction = files.get("overlay") or files.get("label")
    alt = f"prediction for {name}" if files.get("overlay") else f"label map for {name}"
    if prediction and files.get("input"):
        return f"""<div class="compare{small}" style="aspect-ratio: {w} / {h}">
      <img class="under" src="{_url(files["input"])}" alt="input {name}" width="{w}" height="{h}" draggable="false">
      <img class="over" src="{_url(prediction)}" alt="{alt}" width="{w}" height="{h}"
           draggable="false" style="clip-path: inset(0 50% 0 0)">
      <div class="divider" style="left: 50%"></div>
      <span class="tag left">prediction</span><span class="tag right">input</span>
    </div>
    <input class="split" type="range" min="0" max="100" step="0.5" value="50"
           aria-label="divider between prediction and input for {name}">"""
    picture, alt = (prediction, alt) if prediction else (files.get("input"), f"input {name}")
    if not picture:
        return '<p class="note">no picture was written for this image</p>'
    return f'<img class="plain{small}" src="{_url(picture)}" alt="{alt}" width="{w}" height="{h}">'


def _figure(index: int, entry: dict) -> str:
    """One image's panel, `id="image-<index>"`; any of its files may be missing (None or no key)."""
    files = entry["files"]
    w, h = int(entry["image_size"]["width"]), int(entry["image_size"]["height"])
    name = _esc(entry["name"])
    small = " small" if max(w, h) < 256 else ""
    links = " ".join(f'<a href="{_url(files[key])}">{text}</a>' for key, text in
                     [("label", "label map"), ("overlay_legend", "overlay with legend"), ("summary", "JSON")]
                     if files.get(key))
    return f"""
<figure class="entry" id="image-{index}">
  <figcaption><h2 class="file-name">{name}</h2><span class="size">{w} &times; {h} px</span></figcaption>
  <div class="view">
    {_view(files, name, w, h, small)}
  </div>
  <div class="details">
    {_legend(entry)}
    {f'<p class="links">{links}</p>' if links else ""}
    {_probability_maps(entry, small)}{_uncertainty(entry, small)}
  </div>
</figure>"""


def page_file_name(page: int) -> str:
    """The file of report page `page` (from 1): 'index.html', then 'index-2.html', 'index-3.html', ..."""
    return "index.html" if page == 1 else f"index-{page}.html"


def _page_link(page: int, text: str, attributes: str = "") -> str:
    return f'<a href="{page_file_name(page)}"{attributes}>{text}</a>'


def _navigation(page: int, pages: int, page_size: int, total: int) -> str:
    """previous / next, links to the first, the last and PAGE_NEIGHBOURS pages either side (a gap: an ellipsis),
    "page k of n" and the images shown. "" for a single page."""
    if pages == 1:
        return ""
    near = range(max(1, page - PAGE_NEIGHBOURS), min(pages, page + PAGE_NEIGHBOURS) + 1)
    links, last_linked = [], 0
    for k in sorted({1, pages, *near}):
        if k > last_linked + 1:
            links.append('<span class="gap">&hellip;</span>')
        links.append(f'<span class="current" aria-current="page">{k}</span>' if k == page else _page_link(k, str(k)))
        last_linked = k
    previous = (_page_link(page - 1, "&larr; previous", ' class="previous" rel="prev"') if page > 1
                else '<span class="previous disabled">&larr; previous</span>')
    following = (_page_link(page + 1, "next &rarr;", ' class="next" rel="next"') if page < pages
                 else '<span class="next disabled">next &rarr;</span>')
    first, last = (page - 1) * page_size + 1, min(page * page_size, total)
    return (f'<nav class="pages" aria-label="report pages">{previous} '
            f'<span class="page-links">{" ".join(links)}</span> '
            f'{following} <span class="page-of">page {page} of {pages}</span> '
            f'<span class="range">images {first:,}-{last:,} of {total:,}</span></nav>')


def _page_head(count: str, page: int, pages: int, settings: dict, skipped: list[dict]) -> str:
    """Title, settings, the hint and the skipped files (later pages: a link to page 1 for those)."""
    on_page = f" (page {page} of {pages})" if pages > 1 else ""
    shown = {key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
             for key, value in settings.items() if value is not None}
    rows = "".join(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>" for key, value in shown.items())
    if page > 1:
        skipped_block = f'<p class="hint">The files that could not be read are listed on {_page_link(1, "page 1")}.</p>'
    else:
        items = "".join(f'<li><span class="skipped-name">{_esc(e["name"])}</span>: {_esc(e["reason"])}</li>'
                        for e in skipped)
        skipped_block = (f'<section class="skipped"><h2>Skipped: {len(skipped)} file{"s" if len(skipped) != 1 else ""} '
                         f'that could not be read</h2><ul>{items}</ul></section>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>digseg predict: {count}{on_page}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
  <h1>digseg predict: {count}</h1>
  {f'<dl class="settings">{rows}</dl>' if rows else ""}
  <p class="hint">Drag across an image, or move the slider under it: the prediction is left of the divider,
  the input right of it. Percentages are shares of all pixels.</p>
  {skipped_block if skipped else ""}
</header>
"""


@contextlib.contextmanager
def open_atomically(path: Path) -> Iterator[TextIO]:
    """A text file to write `path` through: a temporary file beside it, moved over `path` with `os.replace`
    when the block ends without error (removed otherwise): readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(out_dir: Path, entries: Iterable[dict], settings: dict | None = None,
                 skipped: list[dict] | None = None, num_entries: int | None = None,
                 page_size: int = REPORT_PAGE_SIZE) -> Path:
    """Write the report for `entries` (the per-image records of `predict`) in pages of `page_size` panels
    -> the path of `index.html`. `settings` are listed at the top of every page; the `skipped` files ({"name",
    "reason"} each) on page 1. `entries` may be an iterator (pass `num_entries` then): each panel is written as it
    comes. Each page replaces an earlier one atomically."""
    out_dir = Path(out_dir)
    skipped = skipped or []
    total = len(entries) if num_entries is None else num_entries  # type: ignore[arg-type]
    count = f"{total:,} image{'s' if total != 1 else ''}" + (f", {len(skipped):,} skipped" if skipped else "")
    pages = max(1, -(-total // page_size))
    panels = enumerate(entries)
    for page in range(1, pages + 1):
        navigation = _navigation(page, pages, page_size, total)
        on_page = min(page_size, total - (page - 1) * page_size)
        with open_atomically(out_dir / page_file_name(page)) as f:  # an early end leaves the earlier file
            f.write(f"{_page_head(count, page, pages, settings or {}, skipped)}{navigation}\n<main>")
            written = 0
            for index, entry in islice(panels, on_page):
                f.write(_figure(index, entry))
                written += 1
            if written != on_page:
                raise ValueError("entries has fewer items than num_entries")
            f.write(f"\n</main>\n{navigation}\n<script>{_JS}</script>\n</body>\n</html>\n")
    if next(panels, None) is not None:
        raise ValueError(f"entries has more than num_entries={total} items")
    for path in out_dir.glob("index-*.html"):  # the pages of an earlier, larger report
        match = _PAGE_FILE.fullmatch(path.name)
        if match and int(match.group(1)) > pages:
            path.unlink(missing_ok=True)
    return out_dir / page_file_name(1)
