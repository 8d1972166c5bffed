// Attention explorer component (st.components.v2, no build step, no network).
//
// Python sends one layer's patterns (float16, base64) plus max-pooled uint8 thumbnails of
// every head. Switching head, hovering tokens and the colour scale are drawn here without the
// server; choices go back with setStateValue("sel", {...}) so the URL follows.
//
// State sync: every local change bumps `seq`; Python echoes the last seq it applied as
// `data.ack`. Data older than our last change (ack < seq) must not undo a newer local choice.

const STOPS = [[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
  [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]]; // ColorBrewer Blues
const LUT = (() => {
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (STOPS.length - 1), j = Math.min(STOPS.length - 2, Math.floor(x)), f = x - j;
    for (let c = 0; c < 3; c++) out[3 * i + c] = STOPS[j][c] + f * (STOPS[j + 1][c] - STOPS[j][c]);
  }
  return out;
})();
const MASKED = [236, 236, 236];

function rgb(v) { // v in [0, 1]
  const i = 3 * Math.max(0, Math.min(255, Math.round(255 * v)));
  return `rgb(${LUT[i]},${LUT[i + 1]},${LUT[i + 2]})`;
}

function bytes(b64) {
  const bin = atob(b64), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function float16(u8) {
  if (typeof Float16Array !== "undefined") return Float32Array.from(new Float16Array(u8.buffer, 0, u8.length >> 1));
  const h = new Uint16Array(u8.buffer, 0, u8.length >> 1), out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) {
    const s = h[i] & 0x8000 ? -1 : 1, e = (h[i] >> 10) & 0x1f, m = h[i] & 0x3ff;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return out;
}

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function build(host, S) {
  host.classList.add("ix-attn");
  const bar = el("div", "ix-bar", host);
  S.headGroup = el("span", "ix-group", bar);
  S.modeGroup = el("span", "ix-group", bar);
  S.dirGroup = el("span", "ix-group", bar);
  S.scaleGroup = el("span", "ix-group", bar);
  const exp = el("span", "ix-group ix-export", bar);
  el("span", "ix-lbl", exp, "Export");
  for (const [label, fn] of [["PNG", exportPng], ["SVG", exportSvg], ["CSV", exportCsv]]) {
    const b = el("button", "ix-btn", exp, label);
    b.onclick = () => fn(S);
  }
  S.tokHead = el("div", "ix-sub", host, "");
  S.tokens = el("div", "ix-tokens", host);
  const main = el("div", "ix-main", host);
  const left = el("div", "ix-left", main);
  S.title = el("div", "ix-title", left);
  S.note = el("div", "ix-note", left);
  const stack = el("div", "ix-stack", left);
  S.base = el("canvas", "ix-heat", stack);
  S.over = el("canvas", "ix-over", stack);
  S.legend = el("div", "ix-legend", left);
  const right = el("div", "ix-right", main);
  el("div", "ix-sub", right, "All heads (click one to select it)");
  S.grid = el("div", "ix-grid", right);
  S.tip = el("div", "ix-tip", host);
  S.over.addEventListener("mousemove", (e) => onHeatMove(S, e));
  S.over.addEventListener("mouseleave", () => { S.hover = null; S.tip.style.display = "none"; drawOverlay(S); drawTokenShades(S); });
  S.over.addEventListener("click", (e) => {
    const c = cellAt(S, e);
    if (!c) return;
    const i = S.cur.dir === "to" ? c.k : c.q;
    select(S, { pos: S.cur.pos === i ? -1 : i });
  });
}

function buttons(S, group, label, items, active, onPick) {
  group.textContent = "";
  el("span", "ix-lbl", group, label);
  for (const [value, text, title] of items) {
    const b = el("button", "ix-btn" + (value === active ? " ix-on" : ""), group, text);
    b.dataset.value = String(value);
    if (title) b.title = title;
    b.onclick = () => onPick(value);
  }
}

function select(S, change) {
  Object.assign(S.cur, change);
  S.seq += 1;
  draw(S);
  const sel = { ...S.cur, seq: S.seq };
  S.setStateValue("sel", sel);
}

// ------------------------------------------------------------------ data
function load(S, d) {
  if (d.patKey !== S.patKey) {
    S.patKey = d.patKey;
    S.T = d.T; S.H = d.H; S.L = d.L; S.patLayer = d.layer;
    S.pat = float16(bytes(d.pat));
    const T = S.T, n = T * T;
    S.mean = new Float32Array(n);
    for (let h = 0; h < S.H; h++) for (let i = 0; i < n; i++) S.mean[i] += S.pat[h * n + i] / S.H;
    S.labels = d.labels; S.pieces = d.pieces;
    S.baseKey = null;
  }
  if (d.thumbKey !== S.thumbKey) {
    S.thumbKey = d.thumbKey;
    S.thumbs = bytes(d.thumbs.data); S.t = d.thumbs.t; S.tmax = d.thumbs.max; S.tauto = d.thumbs.auto;
    S.gridKey = null;
  }
  S.name = d.name;
  const server = { layer: d.layer, head: d.head, mode: d.mode, dir: d.dir, scale: d.scale, pos: d.pos };
  S.ack = d.ack;
  if (!S.cur || d.ack >= S.seq) { S.cur = server; S.seq = d.ack; } // the server has seen every local change
}

function matrix(S) { // the pattern on display: (T*T) Float32Array view
  const n = S.T * S.T;
  return S.cur.mode === "mean" ? S.mean : S.pat.subarray(S.cur.head * n, (S.cur.head + 1) * n);
}

// The colour scale's top. "shared": 1. "auto": this panel's max off the first token's row and
// column: query 0 can only attend to itself (always 1) and many heads park attention on
// <bos>, so a plain max is ~1 everywhere and "auto" would look like "shared". Brighter cells
// (usually that column) saturate; the legend says so.
function zmax(S, P) {
  if (S.cur.scale === "shared") return 1;
  const T = S.T;
  let m = 0;
  for (let q = 1; q < T; q++) for (let k = 1; k <= q; k++) if (P[q * T + k] > m) m = P[q * T + k];
  if (m <= 1e-9) for (let i = 0; i < P.length; i++) if (P[i] > m) m = P[i]; // e.g. one token
  return m > 1e-9 ? m : 1;
}

function panelName(S) {
  return S.cur.mode === "mean" ? `L${S.patLayer} mean of ${S.H} heads` : `L${S.patLayer}H${S.cur.head}`;
}

// ------------------------------------------------------------------ heatmap
const GAP = 20, GRID_LABEL = 30;

const MIN_FONT = 10, LABEL_PX = 12; // tick labels: at least 10 px text on at least 12 px of axis each

function tickLabel(S, i, step) { // thinned axes name each labelled token's position too
  return step > 1 ? `${i} ${S.labels[i]}` : `${S.labels[i]}`;
}

function layout(S) {
  // Heatmap cells of >= 8 px (>= 2 px past 120 tokens); a token label on every row while
  // cells are >= LABEL_PX, else on every step-th (with its position), never below MIN_FONT.
  // The head grid sits to the right when it fits with thumbnails of >= 28 px, else below.
  const T = S.T, H = S.H, W = Math.max(400, S.hostWidth());
  const ctx = S.base.getContext("2d");
  const minCell = T <= 120 ? 8 : 2;
  ctx.font = "12px sans-serif";
  let widest = 0;
  for (let i = 0; i < T; i++) widest = Math.max(widest, ctx.measureText(`${T - 1} ${S.labels[i]}`).width);
  const margin = (font) => Math.ceil(Math.min(110, (widest * font) / 12 + 8));
  const gridFor = (thumb) => GRID_LABEL + H * (thumb + 8);
  let thumb = Math.floor((W - GAP - margin(8) - 4 - T * minCell - GRID_LABEL) / H) - 8;
  const below = thumb < 28;
  thumb = below ? Math.max(24, Math.min(64, Math.floor((W - GRID_LABEL) / H) - 8)) : Math.min(56, thumb);
  const room = below ? W : W - GAP - gridFor(thumb);
  let cell = Math.floor((room - margin(12) - 4) / T);
  cell = Math.max(minCell, Math.min(T <= 16 ? 40 : 24, cell));
  const step = cell >= LABEL_PX ? 1 : Math.ceil(LABEL_PX / cell);
  const font = Math.max(MIN_FONT, Math.min(12, cell * step - 2));
  const m = margin(font);
  return { T, cell, font, step, mL: m, mT: 4, mB: m, mR: 4, thumb };
}

function drawBase(S) {
  const P = matrix(S), z = zmax(S, P);
  const key = [S.patKey, S.cur.mode, S.cur.head, S.cur.scale, S.hostWidth()].join("|");
  if (key === S.baseKey) return;
  S.baseKey = key;
  const g = (S.geom = layout(S));
  const { T, cell, mL, mT, mB, mR } = g;
  const w = mL + T * cell + mR, h = mT + T * cell + mB, dpr = window.devicePixelRatio || 1;
  for (const c of [S.base, S.over]) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    c.style.width = w + "px"; c.style.height = h + "px";
  }
  const off = document.createElement("canvas");
  off.width = T; off.height = T;
  const img = off.getContext("2d").createImageData(T, T);
  for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
    const v = P[q * T + k], o = 4 * (q * T + k);
    if (k > q && v === 0) { img.data[o] = MASKED[0]; img.data[o + 1] = MASKED[1]; img.data[o + 2] = MASKED[2]; }
    else {
      const i = 3 * Math.max(0, Math.min(255, Math.round((255 * v) / z)));
      img.data[o] = LUT[i]; img.data[o + 1] = LUT[i + 1]; img.data[o + 2] = LUT[i + 2];
    }
    img.data[o + 3] = 255;
  }
  off.getContext("2d").putImageData(img, 0, 0);
  const ctx = S.base.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, mL, mT, T * cell, T * cell);
  ctx.fillStyle = "#333";
  ctx.font = `${g.font}px sans-serif`;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let i = 0; i < T; i += g.step) ctx.fillText(tickLabel(S, i, g.step), mL - 4, mT + (i + 0.5) * cell);
  ctx.save();
  ctx.translate(mL, mT + T * cell + 4);
  ctx.rotate(-Math.PI / 2);
  for (let i = 0; i < T; i += g.step) ctx.fillText(tickLabel(S, i, g.step), 0, (i + 0.5) * cell);
  ctx.restore();
  S.z = z;
  S.title.textContent = `${panelName(S)} · ${T} tokens · rows = query, columns = key` +
    (S.cur.pos >= 0 ? ` · pinned ${S.cur.dir === "to" ? "key" : "query"} ${S.cur.pos} ${S.labels[S.cur.pos]}` : "");
  const nth = g.step + ({ 2: "nd", 3: "rd" }[g.step] || "th");
  S.note.textContent = g.step > 1 ? `Axis labels: every ${nth} token, with its position (${T} tokens); hover a cell for its tokens.` : "";
  S.note.style.display = g.step > 1 ? "" : "none";
  S.legend.innerHTML = "";
  el("span", "", S.legend, "0");
  const bar = el("span", "ix-ramp", S.legend);
  bar.style.background = `linear-gradient(to right, ${rgb(0)}, ${rgb(0.25)}, ${rgb(0.5)}, ${rgb(0.75)}, ${rgb(1)})`;
  el("span", "", S.legend, `${z.toFixed(3)}  (${S.cur.scale === "shared" ? "shared scale 0–1" :
    "this panel's max off the first token's row and column; brighter cells saturate"})`);
}

function drawOverlay(S) {
  const g = S.geom;
  if (!g) return;
  const { T, cell, mL, mT } = g, dpr = window.devicePixelRatio || 1;
  const ctx = S.over.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, S.over.width, S.over.height);
  const band = (i, color, width) => {
    ctx.strokeStyle = color; ctx.lineWidth = width;
    if (S.cur.dir === "to") ctx.strokeRect(mL + i * cell, mT, cell, T * cell);
    else ctx.strokeRect(mL, mT + i * cell, T * cell, cell);
  };
  if (S.cur.pos >= 0 && S.cur.pos < T) band(S.cur.pos, "#e4572e", 2);
  if (S.hover) {
    ctx.strokeStyle = "rgba(228,87,46,0.6)"; ctx.lineWidth = 1;
    ctx.strokeRect(mL + S.hover.k * cell, mT + S.hover.q * cell, cell, cell);
  }
}

function cellAt(S, e) {
  const g = S.geom;
  if (!g) return null;
  const r = S.over.getBoundingClientRect();
  const k = Math.floor((e.clientX - r.left - g.mL) / g.cell), q = Math.floor((e.clientY - r.top - g.mT) / g.cell);
  return q >= 0 && q < g.T && k >= 0 && k < g.T ? { q, k } : null;
}

function onHeatMove(S, e) {
  const c = cellAt(S, e);
  if (!c) { S.hover = null; S.tip.style.display = "none"; drawOverlay(S); return; }
  S.hover = c;
  const v = matrix(S)[c.q * S.T + c.k];
  S.tip.textContent = `${panelName(S)}  query ${c.q} ${S.labels[c.q]}  →  key ${c.k} ${S.labels[c.k]}:  ${v.toFixed(4)}`;
  S.tip.style.display = "block";
  const hr = S.host.getBoundingClientRect();
  S.tip.style.left = (e.clientX - hr.left + 14) + "px";
  S.tip.style.top = (e.clientY - hr.top + 14) + "px";
  drawOverlay(S);
  drawTokenShades(S, S.cur.dir === "to" ? c.k : c.q);
}

// ------------------------------------------------------------------ token view
function buildTokens(S) {
  const key = [S.patKey, S.cur.mode === "all"].join("|");
  if (key === S.tokKey) return;
  S.tokKey = key;
  S.tokens.textContent = "";
  S.spans = [];
  const lines = S.cur.mode === "all" ? [...Array(S.H).keys()] : [null];
  for (const h of lines) {
    const line = el("div", "ix-line", S.tokens);
    if (h !== null) el("span", "ix-hl", line, `H${h}`);
    const spans = [];
    S.pieces.forEach((p, i) => {
      const nl = p.includes("\n");
      const s = el("span", "ix-tok", line, nl ? p.replace(/\n/g, "⏎") : p);
      s.dataset.i = i;
      s.onmouseenter = () => drawTokenShades(S, i);
      s.onmouseleave = () => drawTokenShades(S);
      s.onclick = () => select(S, { pos: S.cur.pos === i ? -1 : i });
      spans.push(s);
      if (nl) el("br", "", line);
    });
    S.spans.push({ h, spans });
  }
}

function drawTokenShades(S, focus) {
  S.tokHead.textContent = `Token view (${S.cur.mode === "all" ? "every head of L" + S.patLayer : panelName(S)}): hover a token `
    + `to shade the tokens it attends ${S.cur.dir === "to" ? "from (it as key)" : "to (it as query)"}; click to pin it.`;
  const f = focus !== undefined ? focus : S.cur.pos;
  const T = S.T, n = T * T, to = S.cur.dir === "to";
  for (const { h, spans } of S.spans) {
    const P = h === null ? matrix(S) : S.pat.subarray(h * n, (h + 1) * n);
    let z = 1;
    if (f >= 0 && S.cur.scale !== "shared") { // this token's max, off the first token (as zmax)
      z = 0;
      for (let j = 1; j < T; j++) z = Math.max(z, to ? P[j * T + f] : P[f * T + j]);
      if (z <= 1e-9) for (let j = 0; j < T; j++) z = Math.max(z, to ? P[j * T + f] : P[f * T + j]);
      z = z > 1e-9 ? z : 1;
    }
    spans.forEach((s, j) => {
      s.classList.toggle("ix-focus", j === f);
      s.classList.toggle("ix-pin", j === S.cur.pos);
      if (f < 0 || f >= T) { s.style.background = ""; s.style.color = ""; s.title = ""; return; }
      const v = to ? P[j * T + f] : P[f * T + j];
      s.style.background = v > 0 ? rgb(v / z) : "";
      s.style.color = v / z > 0.6 ? "#fff" : "";
      s.title = `${j} ${S.labels[j]}: ${v.toFixed(4)}`;
    });
  }
}

// ------------------------------------------------------------------ thumbnails
function drawGrid(S) {
  const key = [S.thumbKey, S.cur.scale, S.geom.thumb].join("|");
  if (key !== S.gridKey) {
    S.gridKey = key;
    S.grid.textContent = "";
    const { L, H, t } = S, size = S.geom.thumb;
    S.grid.style.gridTemplateColumns = `${GRID_LABEL - 4}px repeat(${H}, ${size + 4}px)`;
    el("span", "", S.grid);
    for (let h = 0; h < H; h++) el("span", "ix-gh", S.grid, `H${h}`);
    S.thumbEls = [];
    for (let l = 0; l < L; l++) {
      el("span", "ix-gl", S.grid, `L${l}`);
      for (let h = 0; h < H; h++) {
        const c = el("canvas", "ix-thumb", S.grid);
        c.width = t; c.height = t;
        c.style.width = c.style.height = size + "px";
        const img = c.getContext("2d").createImageData(t, t), off = (l * H + h) * t * t, mx = S.tmax[l * H + h];
        const top = S.cur.scale === "shared" ? 1 : S.tauto[l * H + h]; // same rule as the heatmap's zmax
        for (let i = 0; i < t * t; i++) {
          const u = S.thumbs[off + i], v = ((u / 255) * mx) / top;
          const j = 3 * Math.round(255 * Math.min(1, v));
          img.data[4 * i] = LUT[j]; img.data[4 * i + 1] = LUT[j + 1]; img.data[4 * i + 2] = LUT[j + 2]; img.data[4 * i + 3] = 255;
        }
        c.getContext("2d").putImageData(img, 0, 0);
        c.title = `L${l}H${h} (max ${mx.toFixed(3)}; off the first token ${S.tauto[l * H + h].toFixed(3)})`;
        c.dataset.layer = l; c.dataset.head = h;
        c.onclick = () => select(S, { layer: l, head: h, mode: S.cur.mode === "mean" ? "head" : S.cur.mode });
        S.thumbEls.push(c);
      }
    }
  }
  for (const c of S.thumbEls) {
    const l = +c.dataset.layer, h = +c.dataset.head;
    c.classList.toggle("ix-sel", l === S.cur.layer && (h === S.cur.head || S.cur.mode === "mean"));
    c.classList.toggle("ix-row", l === S.cur.layer);
  }
}

// ------------------------------------------------------------------ controls + draw
function drawBar(S) {
  const heads = [...Array(S.H).keys()].map((h) => [h, `H${h}`]);
  buttons(S, S.headGroup, `Layer ${S.cur.layer} head`, heads, S.cur.mode === "mean" ? -1 : S.cur.head,
    (h) => select(S, { head: h, mode: S.cur.mode === "mean" ? "head" : S.cur.mode }));
  buttons(S, S.modeGroup, "Show", [["head", "one head"], ["all", "all heads", "token view: one line per head"],
    ["mean", "mean of heads"]], S.cur.mode, (m) => select(S, { mode: m }));
  buttons(S, S.dirGroup, "Attention", [["from", "from token", "the hovered token is the query"],
    ["to", "to token", "the hovered token is the key"]], S.cur.dir, (v) => select(S, { dir: v }));
  buttons(S, S.scaleGroup, "Colour", [["auto", "each panel's max"], ["shared", "shared 0–1"]], S.cur.scale,
    (v) => select(S, { scale: v }));
}

function draw(S) {
  const waiting = S.cur.layer !== S.patLayer;
  const shown = waiting ? { ...S.cur, layer: S.patLayer } : S.cur;
  const cur = S.cur;
  S.cur = shown;
  drawBar(S);
  drawBase(S);
  drawOverlay(S);
  buildTokens(S);
  drawTokenShades(S);
  if (S.cur.pos >= 0 && S.cur.pos !== S.scrolledTo && S.spans.length) { // keep the pinned token in view
    const span = S.spans[0].spans[S.cur.pos], box = S.tokens;
    if (span) box.scrollTop = Math.max(0, span.offsetTop - box.offsetTop - box.clientHeight / 2);
    S.scrolledTo = S.cur.pos;
  }
  S.cur = cur;
  drawGrid(S);
  S.host.classList.toggle("ix-wait", waiting);
  // what was drawn, for tests and benchmarks; `pending`: drawn before Python saw this choice
  const rec = { layer: S.patLayer, head: S.cur.head, mode: S.cur.mode, scale: S.cur.scale, dir: S.cur.dir,
    pos: S.cur.pos, T: S.T, waiting, pending: S.seq > S.ack, zmax: S.z, font: S.geom.font, tickStep: S.geom.step,
    cell: S.geom.cell };
  requestAnimationFrame(() => {
    rec.painted = performance.now();
    S.host.dataset.ixState = JSON.stringify(rec);
    (window.__ixLog = window.__ixLog || []).push(rec);
  });
}

// ------------------------------------------------------------------ export
function exportPng(S) {
  const c = document.createElement("canvas");
  c.width = S.base.width; c.height = S.base.height;
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(S.base, 0, 0);
  c.toBlob((b) => download(`${S.name}_${panelName(S).replace(/ /g, "_")}.png`, b));
}

function exportSvg(S) {
  const P = matrix(S), { T, cell, mL, mT, mB, mR, step, font } = S.geom, z = S.z;
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${mL + T * cell + mR}" height="${mT + T * cell + mB}" font-family="sans-serif" font-size="${font}">`];
  for (let q = 0; q < T; q++) for (let k = 0; k <= q; k++) {
    out.push(`<rect x="${mL + k * cell}" y="${mT + q * cell}" width="${cell}" height="${cell}" fill="${rgb(P[q * T + k] / z)}"/>`);
  }
  for (let i = 0; i < T; i += step) {
    out.push(`<text x="${mL - 4}" y="${mT + (i + 0.5) * cell}" text-anchor="end" dominant-baseline="middle">${esc(S.labels[i])}</text>`);
    const x = mL + (i + 0.5) * cell, y = mT + T * cell + 4;
    out.push(`<text transform="translate(${x},${y}) rotate(-90)" text-anchor="end" dominant-baseline="middle">${esc(S.labels[i])}</text>`);
  }
  out.push("</svg>");
  download(`${S.name}_${panelName(S).replace(/ /g, "_")}.svg`, new Blob([out.join("\n")], { type: "image/svg+xml" }));
}

function exportCsv(S) {
  const P = matrix(S), T = S.T, q = (s) => `"${String(s).replace(/"/g, '""')}"`;
  const rows = [["query\\key", ...S.labels.map((l, i) => q(`${i}:${l}`))].join(",")];
  for (let i = 0; i < T; i++) rows.push([q(`${i}:${S.labels[i]}`), ...Array.from(P.subarray(i * T, (i + 1) * T), (v) => v.toPrecision(5))].join(","));
  download(`${S.name}_${panelName(S).replace(/ /g, "_")}.csv`, new Blob([rows.join("\n")], { type: "text/csv" }));
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  const host = parentElement;
  let S = host.__ix;
  if (!S) {
    S = host.__ix = { seq: 0, host, spans: [] };
    S.hostWidth = () => host.getBoundingClientRect().width || 1200;
    build(host, S);
    let lastW = 0;
    S.resize = new ResizeObserver(() => {
      const w = Math.round(S.hostWidth());
      if (S.pat && Math.abs(w - lastW) > 8) { lastW = w; draw(S); }
    });
    S.resize.observe(host);
  }
  S.setStateValue = setStateValue;
  load(S, data);
  draw(S);
  return () => { if (S.resize) S.resize.disconnect(); delete host.__ix; };
}
