// "Building blocks, by hand": one row per kernel the service lists in /model_info, showing
// the kernel's weights and the input convolved, after ReLU and after 2x2 max pooling.

import { api, imageForm, isAbort } from "./api.js";
import { $, el } from "./dom.js";

const STEPS = [
  ["input", "input"],
  ["conv", "convolved"],
  ["relu", "ReLU"],
  ["pool", "max pool 2×2"],
];

// A kernel's name as a title: underscores to spaces, first letter capitalised.
export function kernelTitle(name) {
  const words = String(name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatWeight(w) {
  if (Number.isInteger(w)) return String(w);
  const ninths = w * 9;
  if (Math.abs(ninths - Math.round(ninths)) < 1e-6) return `${Math.round(ninths)}/9`;
  return w.toFixed(2);
}

function buildRow(kernel) {
  const title = kernelTitle(kernel);
  const figures = STEPS.map(([step, caption], i) =>
    el(
      "figure",
      { className: `step step-${step}` },
      i ? el("span", { className: "arrow", "aria-hidden": "true" }, "→") : null,
      el("img", { className: "pixelated", alt: `${title}: ${caption}`, width: 84, height: 84 }),
      el("figcaption", {}, caption, el("span", { className: "shape" }))
    )
  );
  return el(
    "div",
    { className: "block-row", dataset: { kernel } },
    el(
      "div",
      { className: "kernel" },
      el("h3", {}, title),
      el("table", { className: "weights", "aria-label": `${title} kernel weights` })
    ),
    el("div", { className: "steps" }, ...figures),
    el("p", { className: "error", role: "alert" })
  );
}

function showRow(row, data) {
  row.querySelector(".error").textContent = "";
  const weights = data.weights || [];
  row.querySelector(".weights").replaceChildren(
    ...weights.map((r) =>
      el("tr", {}, ...r.map((w) => el("td", { className: w < 0 ? "neg" : "" }, formatWeight(w))))
    )
  );
  const steps = data.steps || {};
  for (const [step] of STEPS) {
    const figure = row.querySelector(`.step-${step}`);
    const info = steps[step];
    const img = figure.querySelector("img");
    if (!info) {
      img.removeAttribute("src");
      continue;
    }
    img.src = info.png;
    const shape = (info.shape || []).join("×");
    figure.querySelector(".shape").textContent = shape ? ` ${shape}` : "";
    const range =
      typeof info.min === "number" && typeof info.max === "number"
        ? `, values ${info.min.toFixed(2)} to ${info.max.toFixed(2)}`
        : "";
    img.title = `${shape}${range}`;
  }
}

// The rows for `kernels` (the names /model_info lists), and how to fill or empty them.
export function createBlocks(kernels) {
  const rows = kernels.map(buildRow);
  $("blocks").replaceChildren(...rows);

  return {
    // One request per kernel for `blob`; each promise settles when its row is shown or failed.
    request(blob, signal, current) {
      return rows.map((row) =>
        api("/building_blocks", { form: imageForm(blob, { kernel: row.dataset.kernel }), signal })
          .then((r) => r.json())
          .then((data) => current() && showRow(row, data))
          .catch((error) => {
            if (current() && !isAbort(error)) row.querySelector(".error").textContent = error.message;
            throw error;
          })
      );
    },

    clear() {
      for (const row of rows) {
        for (const img of row.querySelectorAll("img")) img.removeAttribute("src");
        for (const shape of row.querySelectorAll(".shape")) shape.textContent = "";
        row.querySelector(".error").textContent = "";
      }
    },
  };
}
