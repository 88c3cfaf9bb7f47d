// Plain JS for the overview and try-it pages (review.js: the review page): no build step.
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function fmt(x, d = 3) { return (x === null || x === undefined) ? '–' : (typeof x === 'number' ? x.toFixed(d) : esc(x)); }

async function loadOverview() {
  const r = await fetch('/api/summary'); const s = await r.json();
  document.getElementById('title').textContent = 'Run ' + s.run;
  const m = s.metrics;
  let html = '';
  if (m) {
    const pp = m.postprocess, il = m.image_level;
    html += '<table><tr><th>val RSNA mAP</th><td id="rsna-map">' + fmt(m.rsna_map, 4) + '</td></tr>' +
      '<tr><th>before tuning</th><td>' + fmt(m.rsna_map_before_tuning, 4) + '</td></tr>' +
      '<tr><th>images (counted)</th><td>' + m.n_images + ' (' + m.n_images_counted + ')</td></tr>' +
      '<tr><th>post-processing</th><td>threshold ' + pp.score_threshold + ', NMS ' + pp.nms_iou + ', max ' +
      pp.max_boxes + ' boxes, shrink ' + pp.shrink + ', gate threshold ' + (pp.gate_threshold ?? 0) + '</td></tr>' +
      (m.rsna_map_without_gate !== undefined ? '<tr><th>without the gate</th><td>' + fmt(m.rsna_map_without_gate, 4) +
        '</td></tr>' : '') +
      '<tr><th>image level</th><td>ROC AUC ' + fmt(il.roc_auc) + ' (gate ' + fmt(il.gate_roc_auc) + ', highest box ' +
      fmt(il.max_box_roc_auc) + '), sensitivity ' + fmt(il.sensitivity) +
      ', specificity ' + fmt(il.specificity) + '</td></tr></table>';
    html += '<table><tr><th>IoU threshold</th>' + Object.keys(m.per_threshold).map(k => '<th>' + k + '</th>').join('') +
      '</tr><tr><th>precision</th>' + Object.values(m.per_threshold).map(v => '<td>' + fmt(v) + '</td>').join('') + '</tr></table>';
    html += '<table><tr><th>view</th><th>RSNA mAP</th><th>ROC AUC</th><th>images</th></tr>' +
      Object.entries(m.by_view).map(([v, b]) => '<tr><td>' + esc(v) + '</td><td>' + fmt(b.rsna_map, 4) + '</td><td>' +
      fmt(b.roc_auc) + '</td><td>' + b.images + '</td></tr>').join('') + '</table>';
  } else {
    html = '<p class="error">No metrics.json yet: run <code>pneumodet evaluate</code> on this run.</p>';
  }
  document.getElementById('metrics').innerHTML = html;
  document.getElementById('plots').innerHTML = s.plots.map(p => '<img src="/plots/' + encodeURIComponent(p) +
    '" alt="' + esc(p) + '" title="' + esc(p) + '">').join('');
}

async function uploadAll() {
  const files = document.getElementById('files').files, out = document.getElementById('results');
  out.innerHTML = '';
  for (const f of files) {
    const box = document.createElement('div'); box.className = 'result'; box.textContent = f.name + ': predicting…';
    out.appendChild(box);
    const body = new FormData(); body.append('file', f);
    const r = await fetch('/api/predict?image=true', {method: 'POST', body});
    const s = await r.json();
    if (!r.ok) { box.innerHTML = '<span class="error">' + esc(f.name) + ': ' + esc(s.detail) + '</span>'; continue; }
    box.innerHTML = '<img class="prediction" src="' + s.image_png + '" alt="prediction">' +
      '<div><h3>' + esc(f.name) + '</h3><p>image score <b class="image-score">' + fmt(s.image_score) + '</b></p>' +
      '<p>view ' + fmt(s.view) + ' · age ' + fmt(s.age, 0) + ' · sex ' + fmt(s.sex) + '</p>' +
      '<p>' + s.boxes.length + ' box(es)</p><ul>' + s.boxes.map(b => '<li>score ' + fmt(b.score) + ': x ' + b.x +
      ', y ' + b.y + ', ' + b.width + '×' + b.height + '</li>').join('') + '</ul></div>';
  }
}
