// The review page: cards worst first, and a large view to judge one image (verdicts, boxes drawn with the
// mouse, zoom, window/level, keyboard). Coordinates the server sees are always the image's own pixels.
const R = {items: [], pos: -1, detail: null, gray: null, shown: null, fit: 1, zoom: 1, panX: 0, panY: 0,
           boxes: [], drag: null, reviewed: 0};
const $ = id => document.getElementById(id);

async function initReview() {
  $('outcome').onchange = $('view').onchange = loadReview;
  const r = await request('/api/review');
  for (const v of (r.ok ? r.body.views : [])) $('view').appendChild(el('option', {text: v}));
  $('prev').onclick = () => move(-1); $('next').onclick = () => move(1);
  $('v-correct').onclick = () => judge('correct'); $('v-wrong').onclick = () => judge('wrong');
  $('v-clear').onclick = clearVerdict; $('close').onclick = closeItem;
  $('zoom-in').onclick = () => zoomBy(1.25); $('zoom-out').onclick = () => zoomBy(0.8);
  $('zoom-fit').onclick = () => { R.zoom = 1; R.panX = R.panY = 0; draw(); };
  $('ww').oninput = $('wl').oninput = () => { R.shown = null; draw(); };
  const c = $('canvas');
  c.addEventListener('mousedown', mouseDown); window.addEventListener('mousemove', mouseMove);
  window.addEventListener('mouseup', mouseUp);
  c.addEventListener('wheel', e => { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15, e); }, {passive: false});
  document.addEventListener('keydown', onKey);
  await loadReview();
}

async function loadReview() {
  const q = new URLSearchParams();
  if ($('outcome').value) q.set('outcome', $('outcome').value);
  if ($('view').value) q.set('view', $('view').value);
  const r = await request('/api/review?' + q);
  if (!r.ok) { $('note').textContent = detailText(r.body); return; }
  const s = r.body;
  R.items = s.items;
  $('note').textContent = s.note || '';
  $('count').textContent = s.items.length + ' of ' + s.total + ' images';
  $('grid').replaceChildren(...s.items.map((it, pos) => {
    const card = el('div', {class: 'card', 'data-index': it.index},
      el('img', {loading: 'lazy', src: '/api/review/' + it.index + '/image.png', alt: 'val image ' + it.index}),
      el('div', {class: 'meta'}, el('span', {class: OUTCOME_CLASS[it.outcome] || '', text: it.outcome}),
        ' · ' + it.view + ' · ', el('span', {title: SCORES[0][1], text: 'image RSNA score ' + fmt(it.score, 2)}), ' · ',
        el('span', {title: SCORES[1][1], text: 'image score ' + fmt(it.image_score, 2)}), ' · ' + it.n_truth + ' true, ' +
        it.n_pred + ' predicted'),
      el('div', {class: 'badge'}, badge(it.verdict)));
    card.addEventListener('click', () => openItem(pos));
    return card;
  }));
  R.reviewed = s.reviewed; showReviewed(s.reviewed);
}

const OUTCOME_CLASS = {'miss': 'miss', 'false alarm': 'false-alarm', 'hit': 'hit', 'true negative': 'true-negative'};

function badge(verdict) {
  return verdict ? el('span', {class: VERDICT_CLASS[verdict] || '', text: verdict}) : '';
}
const VERDICT_CLASS = {correct: 'verdict-correct', wrong: 'verdict-wrong', corrected: 'verdict-corrected'};

function showReviewed(n) { $('export').textContent = 'Export labels (' + n + ' reviewed)'; }

async function openItem(pos) {
  if (pos < 0 || pos >= R.items.length) return;
  R.pos = pos;
  const r = await request('/api/review/' + R.items[pos].index);
  if (!r.ok) { showError(detailText(r.body)); return; }
  R.detail = r.body;
  const v = R.detail.verdict;
  R.boxes = v && v.verdict === 'corrected' ? v.boxes.map(b => b.slice()) : [];
  const img = new Image();
  img.onload = () => {
    const off = document.createElement('canvas'); off.width = img.width; off.height = img.height;
    const ctx = off.getContext('2d'); ctx.drawImage(img, 0, 0);
    R.gray = ctx.getImageData(0, 0, img.width, img.height); R.shown = null;
    R.zoom = 1; R.panX = R.panY = 0;
    $('detail').hidden = false; sizeCanvas(); draw();
  };
  img.src = '/api/review/' + R.items[pos].index + '/raw.png';
  const d = R.detail;
  $('detail-text').textContent = (pos + 1) + '/' + R.items.length + ' · ' + d.outcome + ' · ' + d.view + ' · image score ' +
    fmt(d.image_score, 2) + ' · ' + d.n_truth + ' true, ' + d.n_pred + ' predicted';
  showVerdict(v);
}

function closeItem() { $('detail').hidden = true; R.pos = -1; }
function move(step) { if (R.pos >= 0) openItem(Math.min(Math.max(R.pos + step, 0), R.items.length - 1)); }

function sizeCanvas() {
  const c = $('canvas');
  c.width = Math.max(300, window.innerWidth - 80); c.height = Math.max(300, window.innerHeight - 140);
  R.fit = Math.min(c.width / R.gray.width, c.height / R.gray.height);
}

// screen <-> original pixels: screen = (orig * f) * scale + offset, f = cache px per original px
function view() {
  const c = $('canvas'), s = R.fit * R.zoom, f = R.gray.width / R.detail.original_size[1];
  const ox = (c.width - R.gray.width * s) / 2 + R.panX, oy = (c.height - R.gray.height * s) / 2 + R.panY;
  return {s, f, ox, oy};
}
function toOrig(e) {
  const r = $('canvas').getBoundingClientRect(), v = view();
  const sx = (e.clientX - r.left) * $('canvas').width / r.width, sy = (e.clientY - r.top) * $('canvas').height / r.height;
  const [h, w] = R.detail.original_size;
  return [Math.min(Math.max((sx - v.ox) / v.s / v.f, 0), w), Math.min(Math.max((sy - v.oy) / v.s / v.f, 0), h)];
}

function windowed() {  // the gray image through the window: width ww centred on level wl
  if (R.shown) return R.shown;
  const ww = +$('ww').value, wl = +$('wl').value, src = R.gray.data;
  const out = new ImageData(R.gray.width, R.gray.height), dst = out.data, lo = wl - ww / 2;
  for (let i = 0; i < src.length; i += 4) {
    const v = Math.max(0, Math.min(255, (src[i] - lo) * 255 / ww));
    dst[i] = dst[i + 1] = dst[i + 2] = v; dst[i + 3] = 255;
  }
  const off = document.createElement('canvas'); off.width = out.width; off.height = out.height;
  off.getContext('2d').putImageData(out, 0, 0);
  return (R.shown = off);
}

function draw() {
  if (!R.gray || $('detail').hidden) return;
  const c = $('canvas'), ctx = c.getContext('2d'), v = view();
  ctx.fillStyle = '#000'; ctx.fillRect(0, 0, c.width, c.height);
  ctx.imageSmoothingEnabled = R.zoom < 2;
  ctx.drawImage(windowed(), v.ox, v.oy, R.gray.width * v.s, R.gray.height * v.s);
  const rect = (b, color, label) => {
    const x = v.ox + b[0] * v.f * v.s, y = v.oy + b[1] * v.f * v.s, w = b[2] * v.f * v.s, h = b[3] * v.f * v.s;
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.strokeRect(x, y, w, h);
    if (label) { ctx.fillStyle = color; ctx.font = '15px system-ui'; ctx.fillText(label, x + 3, y + 16); }
  };
  for (const b of R.detail.truth) rect(b, '#0d0', 'truth');
  for (const b of R.detail.pred) rect(b, '#f44', b[4].toFixed(2));
  R.boxes.forEach((b, i) => rect(b, '#2df', 'yours ' + (i + 1)));
  if (R.drag && R.drag.mode === 'draw') rect(dragBox(R.drag), '#2df', '');
}

function dragBox(drag) {
  const [x0, y0] = drag.from, [x1, y1] = drag.to;
  return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
}

function mouseDown(e) {
  if (!R.detail) return;
  e.preventDefault();
  if (e.shiftKey || e.button === 1) R.drag = {mode: 'pan', x: e.clientX, y: e.clientY};
  else if (e.button === 0) { const p = toOrig(e); R.drag = {mode: 'draw', from: p, to: p}; }
}
function mouseMove(e) {
  if (!R.drag) return;
  if (R.drag.mode === 'pan') {
    R.panX += e.clientX - R.drag.x; R.panY += e.clientY - R.drag.y; R.drag.x = e.clientX; R.drag.y = e.clientY;
  } else R.drag.to = toOrig(e);
  draw();
}
function mouseUp() {
  if (!R.drag) return;
  const drag = R.drag; R.drag = null;
  if (drag.mode === 'draw') {
    const b = dragBox(drag);
    if (b[2] >= 2 && b[3] >= 2) { R.boxes.push(b.map(x => Math.round(x * 10) / 10)); judge('corrected'); }
  }
  draw();
}

function zoomBy(factor, e) {
  if (!R.gray) return;
  const c = $('canvas'), r = c.getBoundingClientRect();
  const cx = e ? (e.clientX - r.left) * c.width / r.width : c.width / 2, cy = e ? (e.clientY - r.top) * c.height / r.height : c.height / 2;
  const zoom = Math.min(Math.max(R.zoom * factor, 0.5), 16), k = zoom / R.zoom;
  // keep the point under the cursor in place
  R.panX = (cx - c.width / 2) * (1 - k) + R.panX * k; R.panY = (cy - c.height / 2) * (1 - k) + R.panY * k;
  R.zoom = zoom; draw();
}

// A verdict shows as saved only once the server says it is on disk; otherwise the reviewer reads why not.
async function judge(verdict) {
  if (R.pos < 0) return;
  const boxes = verdict === 'corrected' ? R.boxes : [];
  const r = await request('/api/review/' + R.items[R.pos].index + '/verdict', {method: 'PUT',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({verdict, boxes})});
  if (!r.ok) {  // the boxes on screen go back to what is saved
    const saved = R.detail.verdict;
    R.boxes = saved && saved.verdict === 'corrected' ? saved.boxes.map(b => b.slice()) : [];
    draw(); showError('not saved: ' + detailText(r.body)); return;
  }
  if (verdict !== 'corrected') R.boxes = [];
  recordVerdict(r.body); draw();
}

async function clearVerdict() {
  if (R.pos < 0) return;
  const r = await request('/api/review/' + R.items[R.pos].index + '/verdict', {method: 'DELETE'});
  if (!r.ok) { showError('not cleared: ' + detailText(r.body)); return; }
  R.boxes = []; recordVerdict(null); draw();
}

function showError(text) { $('verdict-state').replaceChildren(el('span', {class: 'error', text})); }

function recordVerdict(entry) {
  const it = R.items[R.pos], before = it.verdict;
  it.verdict = entry ? entry.verdict : null; R.detail.verdict = entry;
  const card = document.querySelector('.card[data-index="' + it.index + '"] .badge');
  if (card) card.replaceChildren(badge(it.verdict));
  R.reviewed += (it.verdict ? 1 : 0) - (before ? 1 : 0);
  showReviewed(R.reviewed);
  showVerdict(entry);
}

function showVerdict(entry) {
  $('verdict-state').textContent = entry ? 'saved: ' + entry.verdict +
    (entry.verdict === 'corrected' ? ' (' + entry.boxes.length + ' box' + (entry.boxes.length === 1 ? '' : 'es') + ')' : '')
    : 'not reviewed';
}

function onKey(e) {
  if (e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT') return;
  if (R.pos < 0) { if (e.key === 'Enter' && R.items.length) openItem(0); return; }
  const keys = {ArrowRight: () => move(1), ArrowLeft: () => move(-1), j: () => move(1), k: () => move(-1),
    c: () => judge('correct'), w: () => judge('wrong'), x: clearVerdict, Escape: closeItem,
    '+': () => zoomBy(1.25), '=': () => zoomBy(1.25), '-': () => zoomBy(0.8),
    0: () => { R.zoom = 1; R.panX = R.panY = 0; draw(); }};
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
}

window.addEventListener('resize', () => { if (R.gray && !$('detail').hidden) { sizeCanvas(); draw(); } });

document.addEventListener('DOMContentLoaded', () => { if (document.body.dataset.page === 'review') initReview(); });
