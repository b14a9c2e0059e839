"""`adapt hub site`: a static explore website for a registry. Plain HTML, one stylesheet and a few lines of
JavaScript for the filters; the data is in the pages themselves, so it works from file:// and from any
static host. Filters live in the URL (``index.html?model=...&arch=...&q=...``) so a filtered view can be shared.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..fsutil import atomic_directory
from .registry import Registry, latest

CSS = """
:root { --fg:#1d2330; --muted:#5d6678; --line:#dde2ea; --accent:#2f5fd0; --bg:#f6f8fb; --chip:#e8eefc; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2a4a; color:#fff; padding:18px 32px; }
header h1 { margin:0; font-size:22px; } header p { margin:4px 0 0; color:#c6d0e6; font-size:13px; }
header a { color:#fff; }
main { max-width:1100px; margin:0 auto; padding:20px 32px 48px; }
.filters { display:flex; gap:12px; flex-wrap:wrap; align-items:end; background:#fff; border:1px solid var(--line);
  border-radius:8px; padding:12px 16px; position:sticky; top:0; z-index:1; }
.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
.filters select, .filters input { font:inherit; padding:4px 8px; border:1px solid var(--line); border-radius:6px; min-width:180px; }
.count { margin-left:auto; color:var(--muted); font-size:13px; }
section.task { margin-top:24px; } section.task > h2 { margin:0 0 6px; font-size:19px; }
.dataset { background:#fff; border:1px solid var(--line); border-radius:8px; margin:10px 0; padding:8px 16px 12px; }
.dataset h3 { margin:4px 0 6px; font-size:16px; }
.dataset table { table-layout:fixed; } .dataset td { overflow-wrap:anywhere; }
.dataset th:nth-child(1) { width:30%; } .dataset th:nth-child(2) { width:8%; } .dataset th:nth-child(3) { width:28%; }
.dataset th:nth-child(4) { width:13%; } .dataset th:nth-child(5) { width:9%; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; font-size:14px; }
th { color:var(--muted); font-weight:600; font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
tr:last-child td { border-bottom:none; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.chip { display:inline-block; background:var(--chip); border-radius:10px; padding:0 8px; font-size:12px; margin-right:4px; }
code, pre { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:13px; }
pre { background:#101827; color:#e8edf7; padding:12px 14px; border-radius:8px; overflow-x:auto; white-space:pre-wrap; }
.meta th { width:220px; text-transform:none; font-size:14px; letter-spacing:0; }
.empty { color:var(--muted); padding:24px 0; }
[hidden] { display:none !important; }
"""

FILTER_JS = """
(function () {
  var params = new URLSearchParams(location.search);
  var model = document.getElementById('f-model'), arch = document.getElementById('f-arch'), text = document.getElementById('f-text');
  model.value = params.get('model') || ''; arch.value = params.get('arch') || ''; text.value = params.get('q') || '';
  function apply() {
    var m = model.value, a = arch.value, words = text.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    document.querySelectorAll('tr.adapter').forEach(function (row) {
      var ok = (!m || row.dataset.model === m) && (!a || row.dataset.arch === a) &&
        words.every(function (w) { return row.dataset.text.indexOf(w) >= 0; });
      row.hidden = !ok; if (ok) shown++;
    });
    document.querySelectorAll('.dataset, section.task').forEach(function (box) {
      box.hidden = !box.querySelector('tr.adapter:not([hidden])');
    });
    document.getElementById('count').textContent = shown + ' adapter' + (shown === 1 ? '' : 's');
    document.getElementById('none').hidden = shown > 0;
    var q = new URLSearchParams();
    if (m) q.set('model', m); if (a) q.set('arch', a); if (text.value) q.set('q', text.value);
    var s = q.toString(); history.replaceState(null, '', s ? '?' + s : location.pathname);
  }
  [model, arch].forEach(function (el) { el.addEventListener('change', apply); });
  text.addEventListener('input', apply);
  apply();
})();
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page_name(record: dict[str, Any]) -> str:
    raw = (f"{record['task']}_{record['dataset']}@{record['author']}_{record['base_model']['id']}_"
           f"{record.get('architecture')}_{record['version']}")
    return re.sub(r"[^A-Za-z0-9_.@\-]", "-", raw) + ".html"


def _metric(record: dict[str, Any]) -> str:
    metrics = record.get("metrics") or {}
    key = record.get("main_metric") or next(iter(metrics), None)
    return f"{key} {metrics[key]:.3f}" if key in metrics and isinstance(metrics[key], (int, float)) else ""


def _rf(record: dict[str, Any]) -> str:
    rf = record.get("reduction_factor")
    return f"{rf:g}" if isinstance(rf, (int, float)) else "—"


def _layout(title: str, body: str, root: str, subtitle: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f'<link rel="stylesheet" href="{root}style.css"></head><body>'
            f'<header><h1><a href="{root}index.html">{esc(title)}</a></h1><p>{subtitle}</p></header>'
            f"<main>{body}</main></body></html>\n")


def model_argument(base_model_id: str) -> str:
    """How ``adapt --model`` names a base model: ``minilm`` for the embedded all-MiniLM-L6-v2 (it resolves to the
    installed copy, offline), else its id."""
    from ..defaults import EMBEDDED_ID, canonical_model_id

    return "minilm" if canonical_model_id(base_model_id) == EMBEDDED_ID else base_model_id


def use_command(record: dict[str, Any], registry: str, unique: bool = True) -> str:
    """The command that runs this adapter, pulling it on the fly from the registry. When its id is published
    in several architectures for this base model, the architecture has to be chosen while pulling."""
    from shlex import quote  # every part comes from the registry: quote it so a copied command runs as shown

    from .pull import entry_id

    model = quote(model_argument(record["base_model"]["id"]))
    ref, reg = quote(f"{record['id']}:{record['version']}"), quote(registry)
    if unique:
        return f"ADAPT_REGISTRY={reg} adapt infer --model {model} -a {ref} 'Your text here'"
    local = quote(entry_id(record["task"], record["dataset"], record["author"], record.get("architecture")))
    return (f"adapt pull {ref} --arch {quote(str(record.get('architecture')))} --registry {reg} --model {model} && "
            f"adapt infer --model {model} -a {local} 'Your text here'")


def _index_page(records: list[dict[str, Any]], title: str, registry: str) -> str:
    tree: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        tree[r["task"]][r["dataset"]].append(r)
    models = sorted({r["base_model"]["id"] for r in records})
    archs = sorted({str(r.get("architecture") or "custom") for r in records})
    options = lambda values: "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    parts = [f'<div class="filters"><label>Base model<select id="f-model"><option value="">all</option>'
             f'{options(models)}</select></label><label>Architecture<select id="f-arch"><option value="">all</option>'
             f'{options(archs)}</select></label><label>Search<input id="f-text" type="search" '
             f'placeholder="name, author, text"></label><span class="count" id="count"></span></div>',
             '<p class="empty" id="none" hidden>No adapter matches these filters.</p>']
    for task in sorted(tree):
        parts.append(f'<section class="task" id="task-{esc(task)}"><h2>{esc(task)}</h2>')
        for dataset in sorted(tree[task]):
            rows = []
            for r in sorted(tree[task][dataset], key=lambda r: (r["base_model"]["id"], r["author"])):
                text = " ".join(str(r.get(k) or "") for k in ("id", "name", "author", "description", "architecture"))
                rows.append(
                    f'<tr class="adapter" data-model="{esc(r["base_model"]["id"])}" '
                    f'data-arch="{esc(r.get("architecture") or "custom")}" data-text="{esc(text.lower())}">'
                    f'<td><a href="adapters/{esc(page_name(r))}">{esc(r["id"])}</a></td><td>{esc(r["version"])}</td>'
                    f'<td>{esc(r["base_model"]["id"])}</td><td><span class="chip">{esc(r.get("architecture"))}</span></td>'
                    f'<td>{_rf(r)}</td><td>{esc(_metric(r))}</td></tr>')
            parts.append(f'<div class="dataset" id="ds-{esc(task)}-{esc(dataset)}"><h3>{esc(dataset)}</h3><table>'
                         '<tr><th>adapter</th><th>version</th><th>base model</th><th>architecture</th>'
                         f'<th>reduction factor</th><th>dev</th></tr>{"".join(rows)}</table></div>')
        parts.append("</section>")
    if not records:
        parts.append('<p class="empty">This registry holds no adapters yet. Publish one with '
                     f'<code>adapt publish NAME --to {esc(registry)}</code>.</p>')
    parts.append(f"<script>{FILTER_JS}</script>")
    subtitle = f"{len(records)} adapters from <code>{esc(registry)}</code> · task → dataset → adapter"
    return _layout(title, "".join(parts), "", subtitle)


def _adapter_page(r: dict[str, Any], title: str, registry: str, archive_url: str, unique: bool) -> str:
    base = r["base_model"]
    rows = [("id", f"<code>{esc(r['id'])}</code>"), ("version", esc(r["version"])), ("name", esc(r.get("name"))),
            ("kind", esc(r.get("kind"))), ("task / dataset", f"{esc(r['task'])} / {esc(r['dataset'])}"),
            ("author", esc(r["author"])),
            ("base model", f"{esc(base['id'])} ({esc(base.get('model_type'))}, hidden {esc(base.get('hidden_size'))}"
                           + (f", {esc(base.get('num_layers'))} layers" if base.get("num_layers") else "") + ")"),
            ("base model revision", esc(base.get("revision") or "not recorded")),
            ("method / architecture", f"{esc(r.get('method'))} / {esc(r.get('architecture'))}"),
            *([("rank", esc(r.get("rank")) if r.get("rank") is not None else "— (learned scaling vectors)")]
              if r.get("method") == "lora" else
              [("reduction factor", _rf(r)), ("non-linearity", esc(r.get("non_linearity")))]),
            ("parameters", f"{r['parameters']:,}" if isinstance(r.get("parameters"), int) else "—")]
    head = r.get("head")
    if head:
        labels = ", ".join(head.get("labels") or []) or "—"
        rows.append(("prediction head", f"{esc(head.get('type'))}, {esc(head.get('num_labels'))} outputs ({esc(labels)})"))
    for key, value in (r.get("metrics") or {}).items():
        rows.append((f"dev {esc(key)}", f"{value:.4f}" if isinstance(value, (int, float)) else esc(value)))
    rows += [("license", esc(r.get("license") or "not stated")), ("published", esc(r.get("published"))),
             ("archive", f'<a href="{esc(archive_url)}">{esc(Path(r["archive"]).name)}</a> ({esc(r.get("size"))} bytes)'),
             ("sha256", f"<code>{esc(r['sha256'])}</code>")]
    if str(r.get("url") or "").startswith(("https://", "http://")):
        rows.append(("more", f'<a href="{esc(r["url"])}" rel="nofollow noopener">{esc(r["url"])}</a>'))
    body = [f"<h2>{esc(r['id'])} <span class=\"chip\">v{esc(r['version'])}</span></h2>"]
    if r.get("description"):
        body.append(f"<p>{esc(r['description'])}</p>")
    body.append("<h3>Use it</h3><pre id=\"use\">" + esc(use_command(r, registry, unique)) + "</pre>")
    body.append('<h3>Card</h3><table class="meta">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
                + "</table>")
    if r.get("citation"):
        body.append(f"<h3>Cite</h3><pre>{esc(r['citation'])}</pre>")
    body.append('<p><a href="../index.html">← all adapters</a></p>')
    return _layout(title, "".join(body), "../", f"{esc(r['task'])} → {esc(r['dataset'])} → {esc(r['id'])}")


def build_site(registry: Registry, output: Path, title: str = "Adapter hub") -> dict[str, Any]:
    """Write the site into ``output`` (replaced atomically); returns what was written."""
    records = registry.read_index()["adapters"]
    current = latest(records)
    with atomic_directory(output) as tmp:
        (tmp / "style.css").write_text(CSS, encoding="utf-8")
        (tmp / "index.html").write_text(_index_page(current, title, registry.spec), encoding="utf-8")
        (tmp / "adapters").mkdir()
        archs: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in records:
            archs[(r["id"], r["base_model"]["id"])].add(str(r.get("architecture")))
        for r in records:
            unique = len(archs[(r["id"], r["base_model"]["id"])]) == 1
            url = registry.url_of(r)
            if not url.startswith(("http://", "https://")):
                url = Path(url).resolve().as_uri()
            (tmp / "adapters" / page_name(r)).write_text(_adapter_page(r, title, registry.spec, url, unique), encoding="utf-8")
        (tmp / "site.json").write_text(json.dumps({"registry": registry.spec, "adapters": current}, indent=1),
                                       encoding="utf-8")
    output = Path(output).resolve()
    return {"index": str(output / "index.html"), "pages": len(records) + 1, "adapters": len(current),
            "tasks": len({r["task"] for r in current})}
