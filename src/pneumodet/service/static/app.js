// Plain JS for the overview and try-it pages (review.js: the review page): no build step. Everything the server
// sends is data, never markup: pages are built with el(), which sets text, so a verdict, a view name or a
// metrics.json value from someone else's run shows as the characters it holds (the server's Content-Security-
// Policy also refuses any script but these files).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
function fmt(x, d = 3) { return (x === null || x === undefined) ? '–' : (typeof x === 'number' ? x.toFixed(d) : String(x)); }

// The JSON body of a response, or {detail} saying what came back instead (a proxy's HTML page, a dropped
// connection): a reviewer always reads what went wrong.
async function jsonOf(response) {
  try { return await response.json(); } catch (e) { return {detail: 'the server answered HTTP ' + response.status + ' without a readable reason'}; }
}
async function request(url, options) {
  try { const r = await fetch(url, options); return {ok: r.ok, status: r.status, body: await jsonOf(r)}; }
  catch (e) { return {ok: false, status: 0, body: {detail: 'the server could not be reached (' + e.message + ')'}}; }
}
function detailText(body) {
  const d = body && body.detail;
  return typeof d === 'string' ? d : JSON.stringify(d);
}

function row(label, ...cells) { return el('tr', {}, el('th', {text: label}), cells.map(c => el('td', {}, c))); }

async function loadOverview() {
  const r = await request('/api/summary');
  const metrics = document.getElementById('metrics'), plots = document.getElementById('plots');
  if (!r.ok) { metrics.replaceChildren(el('p', {class: 'error', text: detailText(r.body)})); return; }
  const s = r.body, m = s.metrics;
  document.getElementById('title').textContent = 'Run ' + s.run;
  if (!m) {
    metrics.replaceChildren(el('p', {class: 'error'}, 'No metrics.json yet: run ', el('code', {text: 'pneumodet evaluate'}),
      ' on this run.'));
  } else {
    const pp = m.postprocess || {}, il = m.image_level || {};
    const summary = el('table', {},
      row('val RSNA mAP', el('span', {id: 'rsna-map', text: fmt(m.rsna_map, 4)})),
      row('before tuning', fmt(m.rsna_map_before_tuning, 4)),
      row('images (counted)', fmt(m.n_images, 0) + ' (' + fmt(m.n_images_counted, 0) + ')'),
      row('post-processing', 'threshold ' + fmt(pp.score_threshold, 2) + ', NMS ' + fmt(pp.nms_iou, 2) + ', max ' +
          fmt(pp.max_boxes, 0) + ' boxes, shrink ' + fmt(pp.shrink, 3) + ', gate threshold ' + fmt(pp.gate_threshold ?? 0, 2)),
      m.rsna_map_without_gate !== undefined ? row('without the gate', fmt(m.rsna_map_without_gate, 4)) : null,
      row('image level', 'ROC AUC ' + fmt(il.roc_auc) + ' (gate ' + fmt(il.gate_roc_auc) + ', highest box ' +
          fmt(il.max_box_roc_auc) + '), sensitivity ' + fmt(il.sensitivity) + ', specificity ' + fmt(il.specificity)));
    const perThreshold = Object.entries(m.per_threshold || {});
    const thresholds = el('table', {},
      el('tr', {}, el('th', {text: 'IoU threshold'}), perThreshold.map(([k]) => el('th', {text: k}))),
      el('tr', {}, el('th', {text: 'precision'}), perThreshold.map(([, v]) => el('td', {text: fmt(v)}))));
    const views = el('table', {},
      el('tr', {}, ['view', 'RSNA mAP', 'ROC AUC', 'images'].map(h => el('th', {text: h}))),
      Object.entries(m.by_view || {}).map(([v, b]) => el('tr', {}, el('td', {text: v}), el('td', {text: fmt(b.rsna_map, 4)}),
        el('td', {text: fmt(b.roc_auc)}), el('td', {text: fmt(b.images, 0)}))));
    metrics.replaceChildren(summary, thresholds, views);
  }
  plots.replaceChildren(...s.plots.map(p => el('img', {src: '/plots/' + encodeURIComponent(p), alt: p, title: p})));
}

async function uploadAll() {
  const files = document.getElementById('files').files, out = document.getElementById('results');
  out.replaceChildren();
  for (const f of files) {
    const box = el('div', {class: 'result', text: f.name + ': predicting…'});
    out.appendChild(box);
    const body = new FormData(); body.append('file', f);
    const r = await request('/api/predict?image=true', {method: 'POST', body});
    if (!r.ok) { box.replaceChildren(el('span', {class: 'error', text: f.name + ': ' + detailText(r.body)})); continue; }
    const s = r.body;
    box.replaceChildren(
      s.image_png && s.image_png.startsWith('data:image/png;base64,') ? el('img', {class: 'prediction', src: s.image_png, alt: 'prediction'}) : null,
      el('div', {}, el('h3', {text: f.name}),
        el('p', {}, 'image score ', el('b', {class: 'image-score', text: fmt(s.image_score)})),
        el('p', {text: 'view ' + fmt(s.view) + ' · age ' + fmt(s.age, 0) + ' · sex ' + fmt(s.sex)}),
        el('p', {text: s.boxes.length + ' box(es)'}),
        el('ul', {}, s.boxes.map(b => el('li', {text: 'score ' + fmt(b.score) + ': x ' + b.x + ', y ' + b.y + ', ' + b.width +
                                                       '×' + b.height})))));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const page = document.body.dataset.page;
  if (page === 'overview') loadOverview();
  if (page === 'try') document.getElementById('go').addEventListener('click', uploadAll);
});
