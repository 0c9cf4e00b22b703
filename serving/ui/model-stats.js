// The model card's "served so far": what the service has answered since it started, what
// users said about it, and whether its inputs still look like MNIST. Read from the service's
// Prometheus endpoint, /metrics (the series of serving/monitoring.py), so the page shows the
// same figures a monitoring system scrapes.

import { $, el } from "./dom.js";

const REFRESH_MS = 10000;
const STABLE = 0.1;
const DRIFTED = 0.25;
const LINE = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

// Prometheus text format -> [{name, labels, value}], comments skipped.
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = LINE.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(LABEL)) {
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

export function driftReading(score) {
  if (score < STABLE) return "stable";
  return score <= DRIFTED ? "moderate" : "drifted";
}

const READING_TEXT = {
  stable: "inputs look like the training digits",
  moderate: "inputs differ somewhat from the training digits: worth a look",
  drifted: "inputs differ clearly from the training digits: expect worse answers",
};

const STATISTIC_TEXT = {
  ink_fraction: "ink fraction",
  mean_intensity: "mean intensity",
  spread: "spread of the ink",
  centre_offset: "off-centre",
};

const count = (n) => Math.round(n).toLocaleString("en-US");
const percent = (x) => `${(100 * x).toFixed(x > 0 && x < 0.1 ? 1 : 0)}%`;

// The figures the card shows, summed over workers (Prometheus already sums the counters).
export function summarize(samples) {
  const byLabel = new Array(10).fill(0);
  const buckets = new Map();
  const feedback = new Map();
  const drift = new Map();
  const windows = new Map();
  let noDigit = 0;
  let confidenceSum = 0;
  let confidenceCount = 0;
  for (const { name, labels, value } of samples) {
    if (name === "convlens_predictions_total") byLabel[Number(labels.label)] += value;
    else if (name === "convlens_prediction_confidence_bucket") {
      buckets.set(labels.le, (buckets.get(labels.le) || 0) + value);
    } else if (name === "convlens_prediction_confidence_sum") confidenceSum += value;
    else if (name === "convlens_prediction_confidence_count") confidenceCount += value;
    else if (name === "convlens_no_digit_answers_total") noDigit += value;
    else if (name === "convlens_feedback_total") {
      const row = feedback.get(labels.model_version) || { agreed: 0, total: 0 };
      row.total += value;
      if (labels.agreed === "true") row.agreed += value;
      feedback.set(labels.model_version, row);
    } else if (name === "convlens_input_drift_psi") {
      drift.set(labels.statistic, Math.max(drift.get(labels.statistic) ?? 0, value));
    } else if (name === "convlens_input_drift_window_inputs") windows.set(labels.pid, value);
  }
  // Cumulative buckets -> the count in each range.
  const bounds = [...buckets.keys()].sort((a, b) => Number(a) - Number(b));
  let below = 0;
  const confidence = bounds.map((le, i) => {
    const upTo = buckets.get(le);
    const row = { from: i ? bounds[i - 1] : "0", to: le, count: upTo - below };
    below = upTo;
    return row;
  });
  const score = drift.size ? Math.max(...drift.values()) : null;
  return {
    byLabel,
    total: byLabel.reduce((a, b) => a + b, 0),
    confidence,
    meanConfidence: confidenceCount ? confidenceSum / confidenceCount : null,
    noDigit,
    feedback,
    drift,
    score,
    windows: [...windows.values()],
  };
}

function bars(rows, label) {
  const most = Math.max(1, ...rows.map((row) => row.count));
  return el(
    "div",
    { className: "stat-bars", role: "list", "aria-label": label },
    ...rows.map((row) =>
      el(
        "div",
        { className: "stat-bar", role: "listitem", title: `${row.name}: ${count(row.count)}` },
        el("span", { className: "stat-count" }, count(row.count)),
        el("span", {
          className: "stat-fill",
          style: `height: ${(100 * row.count) / most}%`,
        }),
        el("span", { className: "stat-name" }, row.name)
      )
    )
  );
}

function panel(title, ...children) {
  return el("div", { className: "stat-panel" }, el("h4", {}, title), ...children);
}

function predictionsPanel(stats) {
  const rows = stats.byLabel.map((n, digit) => ({ name: String(digit), count: n }));
  return panel(
    "Predictions per digit",
    el("p", { className: "stat-line", dataset: { stat: "predictions" } }, `${count(stats.total)} served`),
    bars(rows, "Predictions per predicted digit")
  );
}

function confidencePanel(stats) {
  // Each bar: the predictions whose top probability is at most its bound, above the last.
  const rows = stats.confidence.map((row) => ({
    name: row.to === "+Inf" ? "100" : String(+(100 * Number(row.to)).toFixed(1)),
    count: row.count,
  }));
  const mean = stats.meanConfidence;
  return panel(
    "Confidence (top probability)",
    el(
      "p",
      { className: "stat-line", dataset: { stat: "confidence" } },
      mean === null ? "no predictions yet" : `mean ${percent(mean)}`
    ),
    bars(rows, "Predictions per confidence range"),
    el("p", { className: "stat-axis" }, "top probability up to, %")
  );
}

function feedbackPanel(stats) {
  const lines = [...stats.feedback.entries()]
    .sort(([a], [b]) => String(a).localeCompare(String(b), "en", { numeric: true }))
    .map(([version, row]) =>
      el(
        "li",
        { dataset: { version } },
        `v${version}: ${count(row.agreed)} of ${count(row.total)} agreed (${percent(row.agreed / row.total)})`
      )
    );
  return panel(
    "Feedback agreement",
    lines.length
      ? el("ul", { className: "stat-list", dataset: { stat: "feedback" } }, ...lines)
      : el("p", { className: "stat-line", dataset: { stat: "feedback" } }, "no feedback yet"),
    el(
      "p",
      { className: "stat-line", dataset: { stat: "no-digit" } },
      `${count(stats.noDigit)} upload${stats.noDigit === 1 ? "" : "s"} with no digit (422)`
    )
  );
}

function driftPanel(stats) {
  if (stats.score === null) {
    const most = stats.windows.length ? Math.max(...stats.windows) : 0;
    return panel(
      "Input drift",
      el(
        "p",
        { className: "stat-line", dataset: { stat: "drift", reading: "collecting" } },
        `collecting: ${count(most)} recent inputs so far; a score needs a few hundred in a worker`
      )
    );
  }
  const reading = driftReading(stats.score);
  const rows = [...stats.drift.entries()].map(([name, score]) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, STATISTIC_TEXT[name] || name),
      el("td", { className: "num" }, score.toFixed(3))
    )
  );
  return panel(
    "Input drift",
    el(
      "p",
      { className: `stat-line drift-${reading}`, dataset: { stat: "drift", reading } },
      el("strong", {}, `PSI ${stats.score.toFixed(2)}: ${reading}`),
      ` (${READING_TEXT[reading]})`
    ),
    el(
      "table",
      { className: "stat-table" },
      el("caption", {}, "Worst worker's last inputs vs MNIST training digits"),
      el("tbody", {}, ...rows)
    ),
    el("p", { className: "hint" }, "PSI < 0.1 stable, 0.1–0.25 moderate, > 0.25 drifted.")
  );
}

export async function showModelStats() {
  const box = $("model-stats");
  if (!box) return;
  let text;
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status}`);
    text = await response.text();
  } catch (_) {
    box.replaceChildren(el("p", { className: "note" }, "Monitoring is off (no /metrics)."));
    return;
  }
  const stats = summarize(parseMetrics(text));
  box.replaceChildren(
    predictionsPanel(stats),
    confidencePanel(stats),
    feedbackPanel(stats),
    driftPanel(stats)
  );
  box.dataset.loaded = "true";
}

// Load now, and again every few seconds while the page is visible.
export function watchModelStats() {
  showModelStats();
  setInterval(() => {
    if (document.visibilityState === "visible") showModelStats();
  }, REFRESH_MS);
}
