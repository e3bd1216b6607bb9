/* circuits explorer: draws the circuit embedded by circuits/render/explorer.py (JSON in #circuit-data).
   Plain JavaScript, no libraries, nothing fetched. Positions come from Python; this file only selects
   edges (top k + dangling-edge removal, or the saved circuit), merges them (q/k/v, heads) and updates
   the SVG elements that changed. window.explorer exposes the state for tests and the console. */
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("circuit-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const E = D.edges, N = D.nodes, nE = E.rank.length, nN = N.length;
  const INPUT = N.findIndex((n) => n.name === "input"), LOGITS = N.findIndex((n) => n.name === "logits");
  const SLOT_NAME = { q: "query", k: "key", v: "value", "": "" };
  const SLOT_OFFSET = { q: -12, k: 0, v: 12, "": 0 };
  const NODE_H = 20;
  const state = { k: D.circuit_edges > 0 ? null : Math.min(D.top, 50), merge: D.options.merge_qkv,
                  collapse: D.options.collapse_heads, selected: null, query: "" };
  const api = { state: state, data: D, redraws: 0, lastRedrawMs: 0, drawn: [], highlighted: [], matches: [] };
  window.explorer = api;

  // ------------------------------------------------------------------ page
  function el(tag, attrs, parent, ns) {
    const e = ns ? document.createElementNS(NS, tag) : document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  const header = el("header", {}, document.body);
  el("h1", {}, header).textContent = D.title;
  el("div", { class: "meta" }, header).textContent = Object.keys(D.meta).map((k) => {
    const v = D.meta[k];
    return k + ": " + (typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : v);
  }).join(" · ");
  const controls = el("div", { id: "controls" }, header);
  const sliderLabel = el("label", {}, controls);
  sliderLabel.append("top ");
  const slider = el("input", { id: "slider", type: "range", min: Math.min(1, D.top), max: D.top, step: 1 }, sliderLabel);
  slider.value = state.k === null ? Math.min(D.top, Math.max(1, D.circuit_edges)) : state.k;
  const kinfo = el("span", { id: "kinfo" }, sliderLabel);
  const circuitBtn = el("button", { id: "circuit-btn", type: "button" }, controls);
  circuitBtn.textContent = "saved circuit (" + D.circuit_edges + " edges)";
  circuitBtn.disabled = D.circuit_edges === 0;
  const faith = el("span", { id: "faith" }, controls);
  const mergeBox = el("input", { id: "merge", type: "checkbox" }, el("label", {}, controls));
  mergeBox.parentNode.append(" merge q/k/v");
  const collapseBox = el("input", { id: "collapse", type: "checkbox" }, el("label", {}, controls));
  collapseBox.parentNode.append(" collapse heads");
  mergeBox.checked = state.merge;
  collapseBox.checked = state.collapse;
  const search = el("input", { id: "search", type: "search", placeholder: "find node (Enter: zoom to it)" }, controls);
  const fitBtn = el("button", { id: "fit", type: "button" }, controls);
  fitBtn.textContent = "fit";
  const legend = el("span", { id: "legend" }, controls);
  legend.innerHTML = '<span class="sw" style="border-color:' + D.colors.positive + '"></span>positive' +
    '<span class="sw" style="border-color:' + D.colors.negative + '"></span>negative' +
    ' · solid q, dashed k, dotted v · width ∝ |score|' +
    D.groups.map((g) => ' · <span style="background:' + g.fill + ";border:1px solid " + g.border + '">&nbsp;' +
      g.name.replace(/[&<>]/g, (c) => "&#" + c.charCodeAt(0) + ";") + "&nbsp;</span>").join("");
  const status = el("div", { id: "status" }, document.body);
  const svg = el("svg", { id: "view", preserveAspectRatio: "xMidYMid meet" }, document.body, true);
  const rowsG = el("g", { id: "rows" }, svg, true), edgesG = el("g", { id: "edges" }, svg, true);
  const nodesG = el("g", { id: "nodes" }, svg, true);
  const tip = el("div", { id: "tip" }, document.body);
  for (const r of D.rows) {
    el("line", { class: "row-line", x1: 0, x2: D.width, y1: r.y, y2: r.y }, rowsG, true);
    el("text", { class: "row-label", x: 4, y: r.y - 4 }, rowsG, true).textContent = r.label;
  }

  // ------------------------------------------------------------------ nodes (created once, shown on demand)
  const groupOf = new Array(nN).fill(null);
  D.groups.forEach((g) => g.nodes.forEach((i) => { groupOf[i] = g; }));
  const nodeEls = N.map((n, i) => {
    const g = el("g", { class: "node " + n.kind, "data-i": i, "data-name": n.name,
                        transform: "translate(" + n.x + "," + n.y + ")" }, nodesG, true);
    const w = Math.max(34, 7 * n.name.length + 10);
    const r = el("rect", { x: -w / 2, y: -NODE_H / 2, width: w, height: NODE_H,
                           rx: n.kind === "head" || n.kind === "layer" ? 5 : n.kind === "mlp" ? 0 : 10 }, g, true);
    if (groupOf[i]) { r.style.fill = groupOf[i].fill; r.style.stroke = groupOf[i].border; }
    el("text", {}, g, true).textContent = n.name;
    g.style.display = "none";
    return g;
  });

  // ------------------------------------------------------------------ edge selection
  const byY = (a, b) => b - a;  // larger y = lower stage (input at the bottom)
  const senderOrder = [...Array(nE).keys()].sort((a, b) => byY(N[E.sender[a]].y, N[E.sender[b]].y));
  const receiverOrder = [...Array(nE).keys()].sort((a, b) => N[E.receiver[a]].y - N[E.receiver[b]].y);

  function selectedEdges() {  // embedded edge indices: top k (or the saved circuit) on input -> logits paths
    const inSel = new Uint8Array(nE);
    if (state.k === null) { for (let i = 0; i < nE; i++) inSel[i] = E.circuit[i]; }
    else { for (let i = 0; i < nE && E.rank[i] <= state.k; i++) inSel[i] = 1; }
    const fwd = new Uint8Array(nN), bwd = new Uint8Array(nN);
    fwd[INPUT] = 1; bwd[LOGITS] = 1;
    for (const i of senderOrder) if (inSel[i] && fwd[E.sender[i]]) fwd[E.receiver[i]] = 1;
    for (const i of receiverOrder) if (inSel[i] && bwd[E.receiver[i]]) bwd[E.sender[i]] = 1;
    const kept = [];
    for (let i = 0; i < nE; i++) if (inSel[i] && fwd[E.sender[i]] && bwd[E.receiver[i]]) kept.push(i);
    return kept;
  }

  function drawnEdges(kept) {  // merge q/k/v and/or collapse heads; scores summed (as the static diagram)
    const acc = new Map();
    for (const i of kept) {
      let s = E.sender[i], r = E.receiver[i];
      if (state.collapse) { s = N[s].collapsed; r = N[r].collapsed; }
      const slot = state.merge ? "" : E.slot[i];
      const key = s + ">" + r + ":" + slot;
      let d = acc.get(key);
      if (!d) { d = { key: key, s: s, r: r, slot: slot, score: 0, members: [] }; acc.set(key, d); }
      d.score += E.score[i] === null ? NaN : E.score[i];
      d.members.push(i);
    }
    return [...acc.values()];
  }

  // ------------------------------------------------------------------ drawing: only what changed
  const pool = new Map();  // key -> <path>
  let current = new Map();  // key -> drawn edge
  function pathFor(d) {
    const a = N[d.s], b = N[d.r];
    const x1 = a.x, y1 = a.y - NODE_H / 2, x2 = b.x + SLOT_OFFSET[d.slot], y2 = b.y + NODE_H / 2;
    const c = Math.max(20, (y1 - y2) * 0.4);
    const p = el("path", { d: "M" + x1 + " " + y1 + " C" + x1 + " " + (y1 - c) + " " + x2 + " " + (y2 + c) + " " + x2 + " " + y2,
                           class: d.slot, "data-k": d.key }, null, true);
    p._style = "";
    return p;
  }
  function setStyle(p, d, maxAbs) {
    const fin = Number.isFinite(d.score);
    const rel = fin && maxAbs > 0 ? Math.abs(d.score) / maxAbs : 0;
    const color = !fin || d.score === 0 ? D.colors.neutral : d.score > 0 ? D.colors.positive : D.colors.negative;
    const width = !fin ? 0.6 : maxAbs > 0 ? 0.6 + 4.4 * rel : 1.2;
    const style = "stroke:" + color + ";stroke-width:" + width.toFixed(2) + ";stroke-opacity:" + (0.45 + 0.55 * rel).toFixed(2);
    if (p._style !== style) { p.setAttribute("style", style); p._style = style; }
  }

  function redraw() {
    const t0 = performance.now();
    const drawn = drawnEdges(selectedEdges());
    let maxAbs = 0;
    for (const d of drawn) if (Number.isFinite(d.score)) maxAbs = Math.max(maxAbs, Math.abs(d.score));
    const next = new Map(), added = document.createDocumentFragment();
    for (const d of drawn) {
      let p = pool.get(d.key);
      if (!p) { p = pathFor(d); pool.set(d.key, p); }
      if (!current.has(d.key)) added.appendChild(p);
      setStyle(p, d, maxAbs);
      next.set(d.key, d);
    }
    edgesG.appendChild(added);
    for (const key of current.keys()) if (!next.has(key)) pool.get(key).remove();
    current = next;
    const visible = new Uint8Array(nN);
    visible[INPUT] = 1; visible[LOGITS] = 1;
    for (const d of drawn) { visible[d.s] = 1; visible[d.r] = 1; }
    for (let i = 0; i < nN; i++) {
      const show = visible[i] ? "" : "none";
      if (nodeEls[i].style.display !== show) nodeEls[i].style.display = show;
    }
    api.visible = visible;
    api.drawn = drawn;
    if (state.selected !== null && !visible[state.selected]) state.selected = null;
    highlight();
    applySearch();
    describeSize(drawn);
    api.redraws += 1;
    api.lastRedrawMs = performance.now() - t0;
  }

  // ------------------------------------------------------------------ size, faithfulness
  function fmt(x) { return Number.isFinite(x) ? x.toFixed(3) : "nan"; }
  function curveAt(k) {
    const c = D.curve;
    if (!c || c.n_requested.length === 0) return null;
    const n = c.n_requested, f = c.faithfulness;
    for (let i = 0; i < n.length; i++) {
      if (n[i] === k) return "faithfulness " + fmt(f[i]) + " (curve point, " + c.kind + ")";
      if (n[i] > k) {
        if (i === 0) return "below the curve's smallest circuit (top " + n[0] + ": faithfulness " + fmt(f[0]) + ")";
        const t = (k - n[i - 1]) / (n[i] - n[i - 1]);
        return "faithfulness ≈ " + fmt(f[i - 1] + t * (f[i] - f[i - 1])) + " (curve, interpolated between top " +
          n[i - 1] + " and top " + n[i] + ")";
      }
    }
    const j = n.length - 1;
    return "above the curve's largest circuit (top " + n[j] + ": faithfulness " + fmt(f[j]) + ")";
  }
  function describeSize(drawn) {
    const kept = new Set();
    for (const d of drawn) for (const i of d.members) kept.add(i);
    const shown = drawn.length === kept.size ? "" : " as " + drawn.length + " arrows";
    if (state.k === null) {
      kinfo.textContent = " saved circuit: " + kept.size + " edges" + shown;
      const f = D.meta.faithfulness;
      faith.textContent = typeof f === "number" ? "faithfulness " + fmt(f) + " (held out)" : (D.curve ? "" : "no curve");
      faith.className = typeof f === "number" || D.curve ? "" : "nocurve";
      return;
    }
    kinfo.textContent = " " + state.k + " of " + D.total_edges + " → " + kept.size + " edges without dangling ones" + shown;
    const text = curveAt(state.k);
    faith.textContent = text === null ? "no curve" : text;
    faith.className = text === null ? "nocurve" : "";
  }

  // ------------------------------------------------------------------ paths through a node
  function reach(drawn, start, forward) {
    const on = new Uint8Array(nN);
    on[start] = 1;
    const order = drawn.slice().sort(forward ? (a, b) => N[b.s].y - N[a.s].y : (a, b) => N[a.r].y - N[b.r].y);
    for (const d of order) {
      if (forward && on[d.s]) on[d.r] = 1;
      if (!forward && on[d.r]) on[d.s] = 1;
    }
    return on;
  }
  function highlight() {
    for (const p of edgesG.querySelectorAll("path.hl")) p.classList.remove("hl");
    for (const g of nodesG.querySelectorAll(".on-path, .selected")) g.classList.remove("on-path", "selected");
    api.highlighted = [];
    const x = state.selected;
    svg.classList.toggle("highlighting", x !== null);
    if (x === null) { if (!state.query) status.textContent = "click a node to highlight the input → logits paths through it"; return; }
    const drawn = api.drawn;
    const fromIn = reach(drawn, INPUT, true), toOut = reach(drawn, LOGITS, false);
    const toX = reach(drawn, x, false), fromX = reach(drawn, x, true);
    nodeEls[x].classList.add("selected", "on-path");
    if (!(fromIn[x] && toOut[x])) { status.textContent = N[x].name + ": no input → logits path through it among the drawn edges"; return; }
    for (const d of drawn) {
      if ((fromIn[d.s] && toX[d.r]) || (fromX[d.s] && toOut[d.r])) {
        pool.get(d.key).classList.add("hl");
        nodeEls[d.s].classList.add("on-path");
        nodeEls[d.r].classList.add("on-path");
        api.highlighted.push(d.key);
      }
    }
    status.textContent = N[x].name + ": " + api.highlighted.length + " drawn edges on input → " + N[x].name +
      " → logits paths (click the background or press Esc to clear)";
  }

  // ------------------------------------------------------------------ search
  function applySearch() {
    const q = state.query.trim().toLowerCase();
    api.matches = [];
    api.matchIndex = [];
    for (let i = 0; i < nN; i++) {
      const hit = q !== "" && api.visible[i] === 1 && N[i].name.toLowerCase().includes(q);
      nodeEls[i].classList.toggle("match", hit);
      if (hit) { api.matches.push(N[i].name); api.matchIndex.push(i); }
    }
    svg.classList.toggle("searching", q !== "");
    if (q !== "") status.textContent = "search “" + state.query.trim() + "”: " + api.matches.length + " drawn node" +
      (api.matches.length === 1 ? "" : "s") + (api.matches.length ? ": " + api.matches.slice(0, 12).join(", ") : "");
  }

  // ------------------------------------------------------------------ tooltips
  function edgeText(d) {
    const name = (i) => N[E.sender[i]].name + "->" + N[E.receiver[i]].name + (E.slot[i] ? "<" + E.slot[i] + ">" : "");
    const score = "score " + (Number.isFinite(d.score) ? (d.score >= 0 ? "+" : "") + d.score.toPrecision(4) : "nan");
    if (d.members.length === 1) {
      const i = d.members[0];
      return name(i) + "\n" + score + "\nrank " + E.rank[i] + " of " + D.total_edges + (D.absolute ? " by |score|" : " by score") +
        "\nslot " + (E.slot[i] ? E.slot[i] + " (" + SLOT_NAME[E.slot[i]] + ")" : "— (" + N[E.receiver[i]].kind + " input)");
    }
    const slots = [...new Set(d.members.map((i) => E.slot[i]).filter((s) => s))];
    return N[d.s].name + "->" + N[d.r].name + (d.slot ? "<" + d.slot + ">" : "") + "  (sum of " + d.members.length + " edges)\n" +
      score + "\nranks " + d.members.map((i) => E.rank[i]).sort((a, b) => a - b).slice(0, 10).join(", ") +
      (d.members.length > 10 ? ", …" : "") + "\nslots " + (slots.join(", ") || "—") + "\n" +
      d.members.slice(0, 6).map(name).join("\n") + (d.members.length > 6 ? "\n…" : "");
  }
  edgesG.addEventListener("mouseover", (ev) => {
    const d = current.get(ev.target.getAttribute("data-k"));
    if (!d) return;
    tip.textContent = edgeText(d);
    tip.style.display = "block";
  });
  edgesG.addEventListener("mousemove", (ev) => { tip.style.left = ev.clientX + 14 + "px"; tip.style.top = ev.clientY + 14 + "px"; });
  edgesG.addEventListener("mouseout", () => { tip.style.display = "none"; });

  // ------------------------------------------------------------------ pan and zoom (the SVG viewBox)
  let vb = null;
  function setView(v) { vb = v; svg.setAttribute("viewBox", v.x + " " + v.y + " " + v.w + " " + v.h); }
  function fit() { setView({ x: 0, y: 0, w: D.width, h: D.height }); }
  function zoomTo(idx) {  // the view around these nodes (at least a few rows and columns)
    if (!idx.length) return;
    const xs = idx.map((i) => N[i].x), ys = idx.map((i) => N[i].y);
    const x0 = Math.min(...xs) - 80, x1 = Math.max(...xs) + 80, y0 = Math.min(...ys) - 60, y1 = Math.max(...ys) + 60;
    const w = Math.max(x1 - x0, 320), h = Math.max(y1 - y0, 240);
    setView({ x: (x0 + x1 - w) / 2, y: (y0 + y1 - h) / 2, w: w, h: h });
  }
  function toSvg(ev) {
    const pt = svg.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    return pt.matrixTransform(svg.getScreenCTM().inverse());
  }
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const p = toSvg(ev), f = Math.exp(Math.max(-100, Math.min(100, ev.deltaY)) * 0.002);
    setView({ x: p.x - (p.x - vb.x) * f, y: p.y - (p.y - vb.y) * f, w: vb.w * f, h: vb.h * f });
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, vb: vb, moved: false, target: ev.target }; });
  window.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    drag.moved = true;
    svg.classList.add("dragging");
    const unit = 1 / svg.getScreenCTM().a;
    setView({ x: drag.vb.x - dx * unit, y: drag.vb.y - dy * unit, w: drag.vb.w, h: drag.vb.h });
  });
  window.addEventListener("pointerup", () => {
    if (!drag) return;
    const d = drag;
    drag = null;
    svg.classList.remove("dragging");
    if (d.moved) return;
    const g = d.target.closest ? d.target.closest(".node") : null;
    state.selected = g ? Number(g.getAttribute("data-i")) : null;
    highlight();
    applySearch();
  });
  window.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { state.selected = null; highlight(); applySearch(); }
  });

  // ------------------------------------------------------------------ controls
  slider.addEventListener("input", () => { state.k = Number(slider.value); redraw(); });
  circuitBtn.addEventListener("click", () => { state.k = null; redraw(); });
  mergeBox.addEventListener("change", () => { state.merge = mergeBox.checked; state.selected = null; redraw(); });
  collapseBox.addEventListener("change", () => { state.collapse = collapseBox.checked; state.selected = null; redraw(); });
  search.addEventListener("input", () => { state.query = search.value; applySearch(); if (!state.query) highlight(); });
  search.addEventListener("keydown", (ev) => { if (ev.key === "Enter") zoomTo(api.matchIndex); });
  fitBtn.addEventListener("click", fit);
  api.redraw = redraw;
  api.label = (key) => { const d = current.get(key); return N[d.s].name + "->" + N[d.r].name + (d.slot ? "<" + d.slot + ">" : ""); };
  api.drawnNames = () => api.drawn.map((d) => api.label(d.key));
  api.highlightedNames = () => api.highlighted.map(api.label);
  fit();
  redraw();
})();
