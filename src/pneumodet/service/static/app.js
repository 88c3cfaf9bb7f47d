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

// '0.754 (0.710–0.790)': a figure and its 95 % bootstrap interval
function withCi(value, ci, d = 3) {
  if (value === null || value === undefined) return '–';
  return ci ? value.toFixed(d) + ' (' + ci[0].toFixed(d) + '–' + ci[1].toFixed(d) + ')' : value.toFixed(d);
}

function imageLevelRows(il) {
  return [
    row('the call', 'positive when any box is kept after the post-processing'),
    row('sensitivity', withCi(il.sensitivity, il.sensitivity_ci)), row('specificity', withCi(il.specificity, il.specificity_ci)),
    row('PPV / NPV', withCi(il.ppv, il.ppv_ci) + ' / ' + withCi(il.npv, il.npv_ci)),
    row('TP / FP / FN / TN', [il.tp, il.fp, il.fn, il.tn].join(' / ')),
    row('image-level ROC AUC', withCi(il.roc_auc, il.roc_auc_ci) + ' (gate ' + fmt(il.gate_roc_auc) + ', highest box ' +
        fmt(il.max_box_roc_auc) + ')')];
}

function boxRows(bl) {
  if (!bl) return [];
  return [row('FROC', fmt(bl.froc.mean_sensitivity) + ' mean sensitivity at 1/8–8 false positives per image'),
          row('COCO AP50 / AP[.5:.95]', fmt(bl.coco.ap50) + ' / ' + fmt(bl.coco.ap))];
}

function plotImages(names, base) {
  return names.map(p => el('img', {src: base + encodeURIComponent(p), alt: p, title: p}));
}

const SCORES = [
  ['image RSNA score', 'the challenge\'s metric for one image, 0–1: how well the predicted boxes overlap the true ones ' +
   'at IoU 0.40–0.75 (a true negative has none; the set\'s RSNA mAP is their mean)'],
  ['image score', 'the image-level gate\'s probability that the image holds any opacity (a model without a gate: ' +
   'its highest box confidence)'],
  ['box confidence', 'the detector\'s score for one box; boxes below the tuned threshold are not kept']];

async function loadOverview() {
  const r = await request('/api/summary');
  const metrics = document.getElementById('metrics'), plots = document.getElementById('plots');
  if (!r.ok) { metrics.replaceChildren(el('p', {class: 'error', text: detailText(r.body)})); return; }
  const s = r.body, m = s.metrics, parts = [];
  document.getElementById('title').textContent = 'Run ' + s.run;
  const ext = s.external && s.external[0];
  if (ext) {  // the honest figure first: a set the tuning never saw
    parts.push(el('h3', {text: 'External test: ' + ext.name}),
      el('p', {class: 'lead'}, 'RSNA mAP ', el('b', {id: 'external-map', text: withCi(ext.rsna_map, ext.rsna_map_ci)}),
         ' on ' + ext.n_images + ' images (' + ext.n_images_counted + ' counted); post-processing: ' + ext.tuned_on),
      el('table', {}, imageLevelRows(ext.image_level), boxRows(ext.box_level)),
      el('div', {class: 'plots'}, plotImages(ext.plots, '/external/' + encodeURIComponent(ext.name) + '/plots/')));
    if (s.external.length > 1) {
      parts.push(el('table', {}, el('tr', {}, ['other external sets', 'RSNA mAP', 'images'].map(h => el('th', {text: h}))),
        s.external.slice(1).map(e => el('tr', {}, el('td', {text: e.name}), el('td', {text: withCi(e.rsna_map, e.rsna_map_ci)}),
          el('td', {text: fmt(e.n_images, 0)})))));
    }
  }
  if (!m) {
    parts.push(el('p', {class: 'error'}, 'No metrics.json yet: run ', el('code', {text: 'pneumodet evaluate'}), ' on this run.'));
  } else {
    const il = m.image_level || {};
    parts.push(el('h3', {text: 'Validation (' + (m.tuned_on || 'val') + ')'}),
      el('p', {class: 'note', text: 'The post-processing was tuned on these images, so this figure is optimistic' +
        (ext ? '; the external test above is the honest one.' : '; score a set it never saw with pneumodet evaluate RUN ' +
        '--data CACHE --split all for the honest one.')}),
      el('table', {},
        row('val RSNA mAP, tuned on val', el('span', {id: 'rsna-map', text: fmt(m.rsna_map, 4)}),
            el('span', {class: 'ci', text: m.rsna_map_ci ? ' (95 % interval ' + m.rsna_map_ci[0].toFixed(3) + '–' +
                                                          m.rsna_map_ci[1].toFixed(3) + ')' : ''})),
        row('before tuning', fmt(m.rsna_map_before_tuning, 4)),
        row('images (counted)', fmt(m.n_images, 0) + ' (' + fmt(m.n_images_counted, 0) + ')'),
        row('post-processing', s.postprocess_words),
        m.rsna_map_without_gate !== undefined ? row('without the gate', fmt(m.rsna_map_without_gate, 4)) : null,
        imageLevelRows(il), boxRows(m.box_level)));
    const perThreshold = Object.entries(m.per_threshold || {});
    parts.push(el('table', {},
      el('tr', {}, el('th', {text: 'IoU threshold'}), perThreshold.map(([k]) => el('th', {text: k}))),
      el('tr', {}, el('th', {text: 'precision'}), perThreshold.map(([, v]) => el('td', {text: fmt(v)})))));
    parts.push(el('table', {},
      el('tr', {}, ['view', 'RSNA mAP', 'ROC AUC', 'images'].map(h => el('th', {text: h}))),
      Object.entries(m.by_view || {}).map(([v, b]) => el('tr', {}, el('td', {text: v}),
        el('td', {text: withCi(b.rsna_map, b.rsna_map_ci)}), el('td', {text: withCi(b.roc_auc, b.roc_auc_ci)}),
        el('td', {text: fmt(b.images, 0)})))));
  }
  if (s.outcomes && s.review_items) {
    parts.push(el('p', {id: 'outcomes', text: 'Val images by outcome: ' + Object.entries(s.outcomes)
      .map(([k, n]) => n + ' ' + k + (n === 1 || k.endsWith('s') ? '' : k === 'miss' ? 'es' : 's')).join(' · ')}));
  }
  parts.push(el('dl', {class: 'scores'}, SCORES.map(([term, says]) => [el('dt', {text: term}), el('dd', {text: says})])));
  metrics.replaceChildren(...parts);
  plots.replaceChildren(...plotImages(s.plots, '/plots/'));
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
    const s = r.body, sides = s.sides ? ' · image left = patient ' + s.sides.image_left + ', right = patient ' +
      s.sides.image_right : '';
    box.replaceChildren(
      s.image_png && s.image_png.startsWith('data:image/png;base64,') ? el('img', {class: 'prediction', src: s.image_png, alt: 'prediction'}) : null,
      el('div', {}, el('h3', {text: f.name}),
        el('p', {class: 'call ' + s.call}, el('b', {text: s.call === 'positive' ? 'Positive: opacity found' : 'Negative: no opacity found'}),
           ' (' + s.call_reason + ')'),
        el('p', {}, 'image score ', el('b', {class: 'image-score', text: fmt(s.image_score)}),
           el('span', {class: 'note', text: s.gate === null ? ' (its highest box confidence: this model has no gate)'
                                                             : ' (the gate\'s probability that the image holds any opacity)'})),
        el('p', {text: 'view ' + fmt(s.view) + ' · age ' + fmt(s.age, 0) + ' · sex ' + fmt(s.sex) + sides}),
        el('p', {text: s.boxes.length + ' box(es), each with its box confidence'}),
        el('ul', {}, s.boxes.map(b => el('li', {text: 'box confidence ' + fmt(b.score) + ': x ' + b.x + ', y ' + b.y + ', ' +
          b.width + '×' + b.height + ' px' + (b.width_mm !== undefined ? ' (' + b.width_mm + '×' + b.height_mm + ' mm)' : '')})))));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const page = document.body.dataset.page;
  if (page === 'overview') loadOverview();
  if (page === 'try') document.getElementById('go').addEventListener('click', uploadAll);
});
