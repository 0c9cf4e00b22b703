// Evaluating the input: debounce changes, send the input to every view at once (prediction,
// preprocessed digit, feature maps, building blocks), show the label, its probability bars and
// the status line, and mark on <body> when an evaluation has settled (tests wait for it).

import { api, imageForm, isAbort } from "./api.js";
import { $, el, showBlob } from "./dom.js";
import { createExplain } from "./explain.js";
import { drawZoom } from "./zoom.js";

const DEBOUNCE_MS = 250;
const MAX_WAIT_MS = 1000; // a long stroke still updates about once a second

export function setStatus(message, kind = "info") {
  const status = $("status");
  status.textContent = message;
  status.dataset.kind = kind;
}

function setResultsState(value) {
  $("results").dataset.state = value;
  document.body.dataset.state = value;
}

// For tests and screenshots: the last evaluation whose views have all arrived (or failed).
function settled(generation) {
  document.body.dataset.settled = String(generation);
}

function showPrediction(data) {
  const probabilities = data.probabilities || [];
  const label = Number(data.label);
  $("label").textContent = String(label);
  const p = probabilities[label];
  $("confidence").textContent =
    p === undefined ? "" : `${(p * 100).toFixed(p > 0.999 ? 2 : 1)}% sure`;
  $("bars").replaceChildren(
    ...probabilities.map((value, digit) => {
      const pct = Math.max(0, Math.min(1, value)) * 100;
      const text = pct >= 10 ? pct.toFixed(0) : pct.toFixed(1);
      return el(
        "div",
        {
          className: digit === label ? "bar top" : "bar",
          role: "listitem",
          "aria-label": `${digit}: ${text}%. Show why`,
          tabindex: "0",
          dataset: { digit: String(digit), p: String(value) },
        },
        el("span", { className: "digit", "aria-hidden": "true" }, String(digit)),
        el(
          "span",
          { className: "track", "aria-hidden": "true" },
          el("span", { className: "fill", style: `width: ${pct}%` })
        ),
        el("span", { className: "pct", "aria-hidden": "true" }, `${text}%`)
      );
    })
  );
  $("results").classList.remove("stale");
}

function showStale() {
  $("results").classList.add("stale");
  $("label").textContent = "?";
  $("confidence").textContent = "";
}

// `parts` (set with use()): the pad, and once /model_info has answered, the feature maps and
// the building blocks; the views that do not exist yet are skipped.
export function createEvaluator() {
  const parts = { pad: null, maps: null, blocks: null, feedback: null };
  let generation = 0;
  let controller = null;
  let timer = null;
  let firstScheduled = 0;
  const explain = createExplain(); // a clicked bar: the evidence for its class
  const explainBar = (target) => {
    const bar = target.closest(".bar");
    if (bar) explain.pick(Number(bar.dataset.digit));
  };
  $("bars").addEventListener("click", (event) => explainBar(event.target));
  $("bars").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    explainBar(event.target);
  });

  function clearViews() {
    $("bars").replaceChildren();
    explain.clear();
    showBlob($("preprocessed"), null);
    parts.maps?.clear();
    parts.blocks?.clear();
    drawZoom(null);
  }

  function showEmpty() {
    setResultsState("empty");
    $("results").removeAttribute("aria-busy");
    $("results").classList.remove("stale");
    $("label").textContent = "–";
    $("confidence").textContent = "";
    clearViews();
    parts.maps?.forgetInput();
    setStatus("Draw a digit to start.");
  }

  function schedule(delay = DEBOUNCE_MS) {
    const now = performance.now();
    if (timer === null) firstScheduled = now;
    clearTimeout(timer);
    const waited = now - firstScheduled;
    const wait = Math.max(0, Math.min(delay, MAX_WAIT_MS - waited));
    document.body.dataset.scheduled = "true"; // for tests: an evaluation is on its way
    timer = setTimeout(() => {
      timer = null;
      delete document.body.dataset.scheduled;
      evaluate();
    }, wait);
  }

  async function evaluate() {
    if (controller) controller.abort();
    const mine = ++generation;
    document.body.dataset.generation = String(mine);
    parts.maps?.invalidate();
    parts.feedback?.hide();
    if (!parts.pad.hasInk()) {
      controller = null;
      showEmpty();
      settled(mine);
      return;
    }
    controller = new AbortController();
    const signal = controller.signal;
    const blob = await parts.pad.input();
    if (mine !== generation) return;
    const current = () => mine === generation;

    setResultsState("loading");
    $("results").setAttribute("aria-busy", "true");
    setStatus("Thinking…");

    const prediction = api("/predict", { form: imageForm(blob), signal })
      .then((r) => r.json())
      .then((data) => {
        if (!current()) return;
        showPrediction(data);
        explain.update(blob);
        parts.feedback?.offer(blob, data); // "Right?" about exactly this image
      });
    const tasks = [
      prediction,
      api("/preprocessed", { form: imageForm(blob), signal })
        .then((r) => r.blob())
        .then((b) => current() && showBlob($("preprocessed"), b)),
      ...(parts.maps ? parts.maps.request(blob, signal, current) : []),
      ...(parts.blocks ? parts.blocks.request(blob, signal, current) : []),
    ];

    const results = await Promise.allSettled(tasks);
    if (!current()) return;
    $("results").removeAttribute("aria-busy");
    const failures = results.filter((r) => r.status === "rejected" && !isAbort(r.reason));
    const predictionFailure = (await Promise.allSettled([prediction]))[0];
    if (predictionFailure.status === "rejected") {
      clearViews(); // every view failed for the same reason: say it once
      showStale();
      setStatus(predictionFailure.reason.message || "Prediction failed.", "error");
      setResultsState("error");
      settled(mine);
      return;
    }
    if (failures.length) {
      setStatus(`Some views failed: ${failures[0].reason.message}`, "error");
      setResultsState("error");
    } else {
      setStatus("");
      setResultsState("done");
    }
    settled(mine);
    parts.maps?.reselect();
  }

  return {
    use: (more) => Object.assign(parts, more),
    schedule,
    showEmpty,
  };
}
