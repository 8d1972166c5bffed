// PNG / SVG of a plotly chart on the page, through plotly's own image export (the chart's
// toolbar camera), with the format chosen here. data: {chart: <st.plotly_chart key>, name}.

export default function (component) {
  const { data, parentElement } = component;
  const host = parentElement;
  host.textContent = "";
  host.classList.add("ix-figexport");
  const note = document.createElement("span");
  note.className = "ix-figexport-note";
  for (const format of ["png", "svg"]) {
    const b = document.createElement("button");
    b.className = "ix-btn";
    b.textContent = format.toUpperCase();
    b.dataset.format = format;
    b.onclick = () => {
      const gd = document.querySelector(`.st-key-${data.chart} .js-plotly-plot`);
      const btn = gd && gd.querySelector('.modebar-btn[data-title^="Download plot"]');
      if (!gd || !gd._context || !btn) { note.textContent = "scroll the figure into view, then try again"; return; }
      const saved = gd._context.toImageButtonOptions;
      gd._context.toImageButtonOptions = { ...(saved || {}), format, filename: data.name, scale: format === "png" ? 2 : 1 };
      try { btn.click(); } finally { gd._context.toImageButtonOptions = saved; }
      note.textContent = "";
      host.dataset.exported = format;
    };
    host.appendChild(b);
  }
  host.appendChild(note);
}
