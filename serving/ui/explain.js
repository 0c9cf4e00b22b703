// Why the model reads a digit as it does: clicking a probability bar asks /explain for that
// class's evidence on the current input, with the method picked here (Integrated Gradients,
// Saliency, Grad-CAM, Occlusion). Red pixels are evidence for the class, blue against.

import { api, imageForm, isAbort } from "./api.js";
import { $, el, showBlob } from "./dom.js";

export const METHODS = [
  ["integrated_gradients", "Integrated Gradients"],
  ["saliency", "Saliency"],
  ["grad_cam", "Grad-CAM"],
  ["occlusion", "Occlusion"],
];

export function createExplain() {
  const box = $("explain");
  let blob = null; // the current input
  let target = null; // the class shown, once a bar was clicked
  let method = METHODS[0][0];
  let controller = null;

  const radios = METHODS.map(([value, text]) =>
    el(
      "label",
      { className: "method" },
      el("input", { type: "radio", name: "explain-method", value, checked: value === method }),
      ` ${text}`
    )
  );
  $("explain-methods").replaceChildren(...radios);
  $("explain-methods").addEventListener("change", (event) => {
    method = event.target.value;
    show();
  });

  async function show() {
    if (!blob || target === null) return;
    if (controller) controller.abort();
    controller = new AbortController();
    const asked = { blob, target, method };
    const name = METHODS.find(([value]) => value === method)[1];
    box.hidden = false;
    box.dataset.state = "loading";
    $("explain-title").textContent = `Why ${target}?`;
    $("explain-info").textContent = `${name} for ${target}: computing…`;
    for (const bar of document.querySelectorAll("#bars .bar"))
      bar.classList.toggle("explained", Number(bar.dataset.digit) === target);
    try {
      const form = imageForm(blob, { method, target, format: "png" });
      const response = await api("/explain", { form, signal: controller.signal });
      const picture = await response.blob();
      if (asked.blob !== blob || asked.target !== target || asked.method !== method) return;
      showBlob($("explain-map"), picture);
      $("explain-map").alt = `${name} evidence for ${target} over the digit`;
      const label = response.headers.get("X-Predicted-Label");
      $("explain-info").textContent =
        `${name}: the pixels that raise (red) or lower (blue) the score of ${target}` +
        (label !== null && Number(label) !== target ? ` (the model reads ${label}).` : ".");
      box.dataset.state = "done";
      box.dataset.shown = `${target}/${method}`;
    } catch (error) {
      if (isAbort(error)) return;
      showBlob($("explain-map"), null);
      $("explain-info").textContent = error.message;
      box.dataset.state = "error";
    }
  }

  return {
    // A probability bar was clicked: explain that class for the current input.
    pick(digit) {
      target = digit;
      show();
    },
    // A new input was evaluated: follow it, keeping the class and method picked.
    update(newBlob) {
      blob = newBlob;
      show();
    },
    clear() {
      blob = null;
      target = null;
      if (controller) controller.abort();
      box.hidden = true;
      showBlob($("explain-map"), null);
      delete box.dataset.shown;
    },
  };
}
