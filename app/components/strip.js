// A strip of tokens coloured by a value in [0, 1] (or by given colours), one click picks a
// token: setStateValue("pick", {i, seq}). Used for generated text (coloured by probability)
// and completions checked against a target.

function rgb(v) { // white -> ColorBrewer Greens
  const a = [247, 252, 245], b = [0, 109, 44], t = Math.max(0, Math.min(1, v));
  return `rgb(${a.map((x, c) => Math.round(x + t * (b[c] - x))).join(",")})`;
}

export default function (component) {
  const { data, setStateValue, parentElement } = component;
  const host = parentElement;
  let S = host.__strip;
  if (!S) {
    S = host.__strip = { seq: 0 };
    host.classList.add("ix-strip");
    S.box = document.createElement("div");
    S.box.className = "ix-strip-box";
    host.appendChild(S.box);
  }
  if (data.ack >= S.seq || S.sel === undefined) { S.sel = data.selected; S.seq = Math.max(S.seq, data.ack || 0); }
  const draw = () => {
    S.box.textContent = "";
    if (data.prefix) {
      const p = document.createElement("span");
      p.className = "ix-strip-prefix";
      p.textContent = data.prefix;
      S.box.appendChild(p);
    }
    data.tokens.forEach((t, i) => {
      const s = document.createElement("span");
      s.className = "ix-strip-tok" + (i === S.sel ? " ix-strip-sel" : "") + (data.clickable ? " ix-strip-click" : "");
      s.textContent = t;
      const v = data.values ? data.values[i] : null;
      s.style.background = data.colors && data.colors[i] ? data.colors[i] : v === null || v === undefined ? "" : rgb(v);
      if (v !== null && v !== undefined && v > 0.65 && !(data.colors && data.colors[i])) s.style.color = "#fff";
      if (data.titles) s.title = data.titles[i];
      s.dataset.i = i;
      if (data.clickable) s.onclick = () => { S.sel = i; S.seq += 1; draw(); setStateValue("pick", { i, seq: S.seq }); };
      S.box.appendChild(s);
    });
    host.dataset.selected = String(S.sel);
  };
  draw();
}
