// Usage charts, drawn with the vendored uPlot over the numbers the page's tables also show:
// without JavaScript the tables are the whole page, so the charts only ever add to it.
(() => {
  "use strict";
  const source = document.getElementById("usage-data");
  const section = document.getElementById("charts");
  if (!source || !section || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const dark = window.matchMedia("(prefers-color-scheme: dark)");
  // Distinct in hue and readable on either background: the same order in both schemes.
  const PALETTES = {
    light: ["#0b57d0", "#c2410c", "#15803d", "#7e22ce", "#b42318", "#0e7490", "#57606a"],
    dark: ["#7cacf8", "#fdba74", "#6fdd8b", "#d8b4fe", "#ff8a80", "#67e8f9", "#9aa4ae"],
  };
  const HEIGHT = 220;
  const whole = new Intl.NumberFormat("en-US");
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  // Whole-number steps for counts (1, 2, 5, 10, 20, 50, …): no "0.5 requests" ticks.
  const COUNT_STEPS = [];
  for (let e = 0; e < 13; e++) for (const m of [1, 2, 5]) COUNT_STEPS.push(m * 10 ** e);

  const charts = {};
  window.llmrelayCharts = charts; // for tests and the curious

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const day = (ts) => new Date(ts * 1000).toISOString().slice(0, 10);
  const count = (u, v) => (v == null ? "—" : whole.format(v));
  const dollars = (u, v) =>
    v == null ? "—" : "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });

  function dollarTicks(u, splits) {
    const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1;
    const digits = Math.min(10, Math.max(2, Math.ceil(-Math.log10(step || 1))));
    return splits.map((v) => "$" + v.toFixed(digits));
  }

  // An axis as wide as its longest label (uPlot's default is fixed).
  function fitWidth(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
    if (longest) {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio;
    }
    return Math.ceil(size) + 4;
  }

  function lines(kind) {
    if (kind === "tokens") {
      return [
        { label: "Prompt", values: data.prompt, value: count },
        { label: "Completion", values: data.completion, value: count },
      ];
    }
    const rows = kind === "cost" ? data.cost : data.requests;
    const value = kind === "cost" ? dollars : count;
    return data.models.map((label, i) => ({ label, values: rows[i], value }));
  }

  function options(kind, width, series) {
    const colors = PALETTES[dark.matches ? "dark" : "light"];
    const axis = {
      stroke: cssVar("--muted"),
      grid: { stroke: cssVar("--line"), width: 1 },
      ticks: { stroke: cssVar("--line"), width: 1 },
      font: "12px system-ui, sans-serif",
    };
    const y = { ...axis, size: fitWidth };
    if (kind === "cost") y.values = dollarTicks;
    else {
      y.values = (u, splits) => splits.map((v) => compact.format(v));
      y.incrs = COUNT_STEPS;
    }
    const single = series.length === 1;
    return {
      width,
      height: HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"), // days are UTC days
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ ...axis }, y],
      legend: { live: true },
      cursor: { points: { size: 7 } },
      series: [
        { label: "Day", value: (u, ts) => (ts == null ? "—" : day(ts)) },
        ...series.map((s, i) => {
          const color = colors[i % colors.length];
          return {
            label: s.label,
            stroke: color,
            width: 2,
            fill: single ? color + "26" : undefined,
            points: { size: 5, fill: color },
            value: s.value,
          };
        }),
      ],
    };
  }

  function draw() {
    for (const el of section.querySelectorAll("[data-chart]")) {
      const kind = el.dataset.chart;
      if (charts[kind]) charts[kind].destroy();
      const series = lines(kind);
      const width = Math.max(200, el.clientWidth);
      charts[kind] = new uPlot(options(kind, width, series), [data.x, ...series.map((s) => s.values)], el);
    }
  }

  section.hidden = false;
  draw();
  // Redraw in the new colours when the scheme changes, and at the new width on resize.
  dark.addEventListener("change", draw);
  const resize = new ResizeObserver(() => {
    for (const el of section.querySelectorAll("[data-chart]")) {
      const chart = charts[el.dataset.chart];
      const width = Math.max(200, el.clientWidth);
      if (chart && Math.abs(chart.width - width) > 1) chart.setSize({ width, height: HEIGHT });
    }
  });
  for (const el of section.querySelectorAll("[data-chart]")) resize.observe(el);
})();
