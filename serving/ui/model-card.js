// The model card: the badge in the header, the facts (registered model, version, test accuracy,
// MLflow run, input) and the architecture table, all from the service's /model_info; and what
// it has served so far, from /metrics (model-stats.js).

import { $, el } from "./dom.js";
import { watchModelStats } from "./model-stats.js";

const present = (value) => value !== undefined && value !== null && value !== "";

const shapeText = (shape) => (Array.isArray(shape) ? `(${shape.join(", ")})` : String(shape));

// {"shape": [1, 28, 28], "image": {"formats": [...], "max_bytes": ...}} -> one line.
function inputText(input) {
  if (typeof input !== "object") return String(input);
  const parts = [];
  if (Array.isArray(input.shape)) parts.push(`${input.shape.join("×")} tensor`);
  const image = input.image || {};
  if (Array.isArray(image.formats) && image.formats.length) {
    let text = `any-size image upload (${image.formats.join(", ")})`;
    if (image.max_bytes) text += `, up to ${(image.max_bytes / 2 ** 20).toFixed(0)} MiB`;
    parts.push(text);
  }
  if (parts.length) return parts.join(", from an ");
  return Object.entries(input)
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join("; ");
}

// 0.9912 -> "99.12%" (a fraction or already a percentage).
function accuracyText(accuracy) {
  if (!present(accuracy)) return undefined;
  if (typeof accuracy !== "number" && !/^[\d.]+$/.test(String(accuracy))) return accuracy;
  const value = Number(accuracy);
  return `${(value * (value <= 1 ? 100 : 1)).toFixed(2)}%`;
}

// The run's page in the MLflow UI, when /model_info gives one as an http(s) URL.
function runPage(runUrl) {
  if (!present(runUrl)) return null;
  try {
    const url = new URL(String(runUrl));
    return /^https?:$/.test(url.protocol) ? url : null;
  } catch (_) {
    return null;
  }
}

async function reachable(url) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 1500);
  try {
    await fetch(url, { mode: "no-cors", cache: "no-store", signal: controller.signal });
    return true;
  } catch (_) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

function showArchitecture(layers) {
  const table = $("architecture");
  let total = 0;
  table.tBodies[0].replaceChildren(
    ...layers.map((layer) => {
      total += Number(layer.parameters || 0);
      return el(
        "tr",
        {},
        el("th", { scope: "row" }, String(layer.name)),
        el("td", {}, String(layer.type)),
        el("td", {}, shapeText(layer.output_shape)),
        el("td", { className: "num" }, Number(layer.parameters || 0).toLocaleString("en-US"))
      );
    })
  );
  table.tFoot.replaceChildren(
    el(
      "tr",
      {},
      el("th", { scope: "row", colSpan: 3 }, "Total parameters"),
      el("td", { className: "num" }, total.toLocaleString("en-US"))
    )
  );
}

// The model could not be described: say so in the header.
export function showModelUnavailable() {
  $("model-badge").textContent = "model unavailable";
}

export async function showModelCard(info) {
  watchModelStats();
  const name = present(info.name) ? info.name : "model";
  const version = present(info.version) ? info.version : undefined;
  const runId = info.run_id;
  const accText = accuracyText(info.test_accuracy);

  $("model-badge").textContent = [
    version !== undefined ? `${name} v${version}` : name,
    accText ? `test accuracy ${accText}` : null,
  ]
    .filter(Boolean)
    .join(" · ");

  const facts = $("model-card");
  const add = (term, ...value) => facts.append(el("dt", {}, term), el("dd", {}, ...value));
  facts.replaceChildren();
  add("Registered model", String(name));
  if (version !== undefined) add("Version", String(version));
  if (accText) add("Test accuracy", accText);
  const runCell = runId ? el("code", {}, String(runId)) : el("span", {}, "not recorded");
  add("MLflow run", runCell);
  if (present(info.input)) add("Input", inputText(info.input));

  showArchitecture(info.layers || []);

  // Link the run to its page in the MLflow UI only when that UI answers.
  const page = runId ? runPage(info.run_url) : null;
  if (!page) return;
  if (await reachable(`${page.origin}/health`)) {
    const link = el(
      "a",
      { href: String(info.run_url), target: "_blank", rel: "noopener" },
      el("code", {}, String(runId))
    );
    runCell.replaceWith(link);
    if (version !== undefined) {
      // The registered version, in the same MLflow UI as the run's page.
      const ui = page.href.split("#")[0];
      const href = `${ui}#/models/${encodeURIComponent(name)}/versions/${version}`;
      const registry = el("a", { href, target: "_blank", rel: "noopener" });
      registry.textContent = `${name} version ${version} in MLflow`;
      facts.append(el("dt", {}, "Registry"), el("dd", {}, registry));
    }
  } else {
    runCell.after(
      el(
        "span",
        { className: "note" },
        " (the tracking server is not reachable: ",
        el("code", {}, "make ui"),
        " starts one)"
      )
    );
  }
}
