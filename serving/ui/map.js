// The embedding map: 2,000 MNIST test digits where the served model's last hidden layer puts
// them (t-SNE, computed when the model was packaged: /embedding), coloured by label. Hovering a
// dot shows its digit (from /embedding_sprite); the user's digit is a star placed by its
// nearest test digits (/embed), which are shown as thumbnails.

import { ApiError, api, imageForm, isAbort } from "./api.js";
import { $, el } from "./dom.js";

// tab10, as convlens.embedding.COLOURS draws the PCA pictures in MLflow.
export const COLOURS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];
const DEBOUNCE_MS = 250;
const DOT = 2.5;
const INSET = 12;
const CELL = 28;

export function createEmbeddingMap() {
  const canvas = $("embedding-map");
  const ctx = canvas.getContext("2d");
  const hover = $("map-hover");
  let data = null; // /embedding's answer
  let sprite = null; // an ImageBitmap of /embedding_sprite
  let placed = null; // /embed's answer for the current digit
  let hovered = -1;
  let timer = null;
  let controller = null;
  let lastPad = null; // the pad of the latest change, placed once the map has loaded

  const toCanvas = ([x, y]) => [
    INSET + x * (canvas.width - 2 * INSET),
    INSET + (1 - y) * (canvas.height - 2 * INSET),
  ];

  function status(text, state) {
    $("map-status").textContent = text;
    $("embedding-card").dataset.state = state;
  }

  function star(cx, cy, r) {
    ctx.beginPath();
    for (let i = 0; i < 10; i++) {
      const radius = i % 2 ? r * 0.45 : r;
      const angle = -Math.PI / 2 + (i * Math.PI) / 5;
      ctx.lineTo(cx + radius * Math.cos(angle), cy + radius * Math.sin(angle));
    }
    ctx.closePath();
  }

  function draw() {
    ctx.fillStyle = getComputedStyle(canvas).getPropertyValue("--map-bg") || "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!data) return;
    data.positions.forEach((p, i) => {
      const [x, y] = toCanvas(p);
      ctx.fillStyle = COLOURS[data.labels[i]];
      ctx.fillRect(x - DOT / 2, y - DOT / 2, DOT, DOT);
    });
    const rings = placed ? placed.neighbours.map((n) => n.index) : [];
    if (hovered >= 0) rings.push(hovered);
    ctx.lineWidth = 1.5;
    for (const i of rings) {
      const [x, y] = toCanvas(data.positions[i]);
      ctx.strokeStyle = "#111";
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, 2 * Math.PI);
      ctx.stroke();
    }
    if (placed) {
      const [x, y] = toCanvas(placed.position);
      star(x, y, 11);
      ctx.fillStyle = "#111";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 2;
      ctx.stroke();
    }
  }

  function drawDigit(target, index) {
    const hctx = target.getContext("2d");
    hctx.imageSmoothingEnabled = false;
    hctx.fillStyle = "#000";
    hctx.fillRect(0, 0, target.width, target.height);
    if (!sprite || index < 0) return;
    const cols = data.sprite_columns;
    const sx = (index % cols) * CELL;
    const sy = Math.floor(index / cols) * CELL;
    hctx.drawImage(sprite, sx, sy, CELL, CELL, 0, 0, target.width, target.height);
  }

  function showHover(index) {
    hovered = index;
    drawDigit(hover, index);
    $("map-hover-caption").textContent =
      index < 0
        ? "Hover a dot to see its digit."
        : `Test digit #${data.test_indices[index]}, label ${data.labels[index]}`;
    draw();
  }

  canvas.addEventListener("mousemove", (event) => {
    if (!data) return;
    const scale = canvas.width / canvas.clientWidth;
    const mx = event.offsetX * scale;
    const my = event.offsetY * scale;
    let best = -1;
    let bestDistance = 8 * 8;
    data.positions.forEach((p, i) => {
      const [x, y] = toCanvas(p);
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d < bestDistance) {
        bestDistance = d;
        best = i;
      }
    });
    if (best !== hovered) showHover(best);
  });
  canvas.addEventListener("mouseleave", () => showHover(-1));

  function legend() {
    $("map-legend").replaceChildren(
      ...COLOURS.map((colour, digit) =>
        el("span", { className: "map-key" }, el("i", { style: `background:${colour}` }), `${digit}`),
      ),
    );
  }

  async function load() {
    legend();
    draw();
    drawDigit(hover, -1);
    status("Loading the map…", "loading");
    try {
      data = await (await api("/embedding", { json: {} })).json();
      const blob = await (await api("/embedding_sprite", { json: {} })).blob();
      sprite = await createImageBitmap(blob);
      status(
        `${data.count} test digits, t-SNE of ${data.layer} (the served model's last hidden layer).`,
        "ready",
      );
      draw();
      if (lastPad) schedule(lastPad, 0);
    } catch (error) {
      data = null;
      const missing = error instanceof ApiError && error.status === 404;
      status(error.message, missing ? "missing" : "error");
    }
  }

  function clear() {
    placed = null;
    $("map-neighbours").replaceChildren();
    draw();
  }

  async function update(blob) {
    if (controller) controller.abort();
    controller = new AbortController();
    try {
      const answer = await api("/embed", { form: imageForm(blob), signal: controller.signal });
      placed = await answer.json();
    } catch (error) {
      if (isAbort(error)) return;
      placed = null;
      $("map-neighbours").replaceChildren();
      if (data) status(error.message, "error");
      draw();
      return;
    }
    const same = placed.neighbours.filter((n) => n.label === placed.label).length;
    $("map-neighbours").replaceChildren(
      ...placed.neighbours.map((n) =>
        el(
          "figure",
          { className: "neighbour" },
          el("img", {
            src: n.png,
            className: "pixelated",
            width: 56,
            height: 56,
            alt: `Test digit ${n.test_index}, label ${n.label}`,
          }),
          el("figcaption", {}, el("i", { style: `background:${COLOURS[n.label]}` }), `${n.label}`),
        ),
      ),
    );
    $("map-neighbours").dataset.count = String(placed.neighbours.length);
    status(
      `Your digit (★, read as ${placed.label}): ${same} of its ${placed.neighbours.length} ` +
        "nearest test digits share that label.",
      "placed",
    );
    draw();
  }

  // Called whenever the pad changes: place the new digit once the drawing pauses.
  function schedule(pad, delay = DEBOUNCE_MS) {
    lastPad = pad;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!data) return;
      if (!pad.hasInk()) {
        clear();
        return;
      }
      update(await pad.input());
    }, delay);
  }

  load();
  return { schedule, clear };
}
