// How one value of a feature map comes about: click a pixel of the enlarged channel, and
// /receptive_field answers with the input pixels it sees (outlined on the digit) and its
// arithmetic with the served model's own weights: a conv layer's patch, kernel, bias, sum and
// ReLU (for many input channels, the largest contributions); a pooling window and its maximum.

import { api, imageForm, isAbort } from "./api.js";
import { $, el } from "./dom.js";
import { zoomedChannel } from "./zoom.js";

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));
const signed = (v) => (v >= 0 ? `+${fmt(v)}` : fmt(v));

function table(rows, mark) {
  return el(
    "table",
    { className: "numbers" },
    el(
      "tbody",
      {},
      ...rows.map((row, y) =>
        el(
          "tr",
          {},
          ...row.map((v, x) =>
            el("td", { className: mark && mark(y, x) ? "max" : "" }, fmt(Number(v)))
          )
        )
      )
    )
  );
}

const term = (caption, ...content) =>
  el("figure", { className: "term" }, ...content, el("figcaption", {}, caption));

function convMath(data) {
  const c = data.conv;
  const parts = [];
  if (c.kernel) {
    parts.push(
      term(`input patch (normalized)`, table(c.patch)),
      el("span", { className: "op" }, "×"),
      term(`kernel of channel ${data.channel + 1}`, table(c.kernel))
    );
  } else {
    parts.push(
      el(
        "ol",
        { className: "contributions" },
        ...c.contributions.map((k) =>
          el(
            "li",
            { dataset: { inChannel: String(k.in_channel) } },
            `${data.input} channel ${k.in_channel + 1}: ${signed(k.contribution)}`
          )
        ),
        el(
          "li",
          { className: "rest" },
          `the other ${c.in_channels - c.contributions.length} channels: ${signed(c.rest)}`
        )
      )
    );
  }
  const relu = c.activation === "relu" ? ` → ReLU → ${fmt(c.result)}` : "";
  parts.push(
    el(
      "p",
      { className: "sum" },
      `sum of products ${signed(c.sum - c.bias)}, bias ${signed(c.bias)}: ${fmt(c.sum)}${relu}`
    )
  );
  return parts;
}

function poolMath(data) {
  const p = data.pool;
  const w = data.input_window;
  return [
    term(
      `${w.height}×${w.width} window of ${data.input} channel ${data.channel + 1}`,
      table(p.window, (y, x) => w.top + y === p.argmax.y && w.left + x === p.argmax.x)
    ),
    el("p", { className: "sum" }, `maximum: ${fmt(p.max)}`),
  ];
}

function drawField(field) {
  const canvas = $("receptive-field");
  const ctx = canvas.getContext("2d");
  const scale = canvas.width / 28;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const digit = $("preprocessed");
  ctx.imageSmoothingEnabled = false;
  if (digit.complete && digit.naturalWidth) ctx.drawImage(digit, 0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#ff3b30";
  ctx.lineWidth = 2;
  ctx.strokeRect(
    field.left * scale + 1,
    field.top * scale + 1,
    field.width * scale - 2,
    field.height * scale - 2
  );
}

export function createReceptive(currentInput) {
  const box = $("receptive");
  let controller = null;

  async function explainPixel(layer, channel, y, x) {
    const input = currentInput();
    if (!input) return;
    if (controller) controller.abort();
    controller = new AbortController();
    box.hidden = false;
    box.dataset.state = "loading";
    $("receptive-title").textContent = `${layer} channel ${channel + 1} at (${y}, ${x})`;
    try {
      const form = imageForm(input, { layer, channel, y, x });
      const data = await (await api("/receptive_field", { form, signal: controller.signal })).json();
      const f = data.field;
      $("receptive-title").textContent =
        `${layer} channel ${channel + 1} at (${y}, ${x}) = ${fmt(data.value)}: ` +
        `sees the ${f.height}×${f.width} input pixels outlined`;
      drawField(f);
      $("receptive-math").replaceChildren(...(data.conv ? convMath(data) : poolMath(data)));
      box.dataset.state = "done";
      box.dataset.value = String(data.value);
      box.dataset.field = `${f.top},${f.left},${f.height},${f.width}`;
    } catch (error) {
      if (isAbort(error)) return;
      $("receptive-math").replaceChildren(el("p", { className: "error" }, error.message));
      box.dataset.state = "error";
    }
  }

  const zoom = $("zoom");
  zoom.addEventListener("click", (event) => {
    const shown = zoomedChannel();
    if (!shown || shown.layer === undefined) return;
    const x = Math.floor((event.offsetX / zoom.clientWidth) * shown.w);
    const y = Math.floor((event.offsetY / zoom.clientHeight) * shown.h);
    if (x >= 0 && y >= 0 && x < shown.w && y < shown.h) explainPixel(shown.layer, shown.channel, y, x);
  });

  return {
    clear() {
      if (controller) controller.abort();
      box.hidden = true;
      delete box.dataset.value;
    },
  };
}
