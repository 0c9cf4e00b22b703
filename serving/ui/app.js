// convlens web page: draw a digit, see what the CNN sees.
// Plain JavaScript, no dependencies; it only calls the service's public endpoints.
"use strict";

(() => {
  const DEBOUNCE_MS = 250;
  const MAX_WAIT_MS = 1000; // a long stroke still updates about once a second
  const UNDO_LIMIT = 40;
  const MLFLOW_UI = "http://127.0.0.1:5000"; // `make ui`, when the model's store is not a server
  const KERNELS = [
    ["horizontal_edge", "Horizontal edge"],
    ["vertical_edge", "Vertical edge"],
    ["blur", "Blur"],
    ["sharpen", "Sharpen"],
  ];
  const STEPS = [
    ["input", "input"],
    ["conv", "convolved"],
    ["relu", "ReLU"],
    ["pool", "max pool 2×2"],
  ];
  // matplotlib's viridis at 0, 16, ..., 240, 255: the service's feature-map colours.
  const VIRIDIS_AT = [0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 255];
  const VIRIDIS = [
    68, 1, 84, 72, 24, 106, 71, 45, 123, 66, 64, 134, 59, 82, 139, 51, 99, 141, 44, 114, 142, 38,
    130, 142, 33, 145, 140, 31, 160, 136, 40, 174, 128, 63, 188, 115, 94, 201, 98, 132, 212, 75,
    173, 220, 48, 216, 226, 25, 253, 231, 37,
  ];

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node && !key.includes("-")) node[key] = value;
      else node.setAttribute(key, value);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  };

  const state = {
    info: null,
    layers: [], // [{name, type, shape: [C, H, W]}] for conv and pool layers
    source: null, // a File/Blob to send as is (upload, sample); null: send the canvas
    hasInk: false,
    undo: [],
    generation: 0,
    controller: null,
    input: null, // the Blob the current results were computed from
    mapJson: new Map(), // layer -> Promise of its JSON activations, for the current input
    selected: null, // {layer, channel, pinned}
    timer: null,
    firstScheduled: 0,
  };

  // ---------------------------------------------------------------- service calls

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function findMessage(body) {
    if (!body) return "";
    if (typeof body === "string") return body.trim().slice(0, 400);
    if (Array.isArray(body)) return body.map(findMessage).filter(Boolean).join("; ");
    if (typeof body === "object") {
      const head = findMessage(body.message || body.error || body.msg || "");
      const detail = body.detail;
      if (Array.isArray(detail) && detail.length && typeof detail[0] === "object") {
        const parts = detail.map((d) => {
          const where = Array.isArray(d.loc) ? d.loc.filter((x) => x !== "body").join(".") : "";
          return where ? `${where}: ${d.msg}` : d.msg;
        });
        return [head, parts.filter(Boolean).join("; ")].filter(Boolean).join(": ");
      }
      return head || findMessage(detail);
    }
    return String(body);
  }

  async function api(path, { form, json, signal } = {}) {
    const init = { method: "POST", signal, headers: { Accept: "application/json, image/png" } };
    if (form) init.body = form;
    else {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json || {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError("The service cannot be reached: is it running (make serve)?", 0);
    }
    if (!response.ok) {
      let text = "";
      try {
        text = await response.text();
      } catch (_) {
        /* keep the status line */
      }
      let body = text;
      try {
        body = JSON.parse(text);
      } catch (_) {
        /* not JSON: show the text */
      }
      const message = findMessage(body) || `${response.status} ${response.statusText}`;
      throw new ApiError(sentence(message), response.status);
    }
    return response;
  }

  // "the image has no digit" -> "The image has no digit."
  function sentence(text) {
    const t = String(text).trim();
    if (!t) return t;
    const head = t[0].toUpperCase() + t.slice(1);
    return /[.!?)]$/.test(head) ? head : `${head}.`;
  }

  function imageForm(blob, fields = {}) {
    const form = new FormData();
    const name = blob.name || "digit.png";
    form.append("image", blob, name);
    for (const [key, value] of Object.entries(fields)) form.append(key, String(value));
    return form;
  }

  const isAbort = (error) => error && error.name === "AbortError";

  // Object URLs of images fetched by POST, one per <img>, freed when replaced.
  function showBlob(img, blob) {
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    if (!blob) {
      img.removeAttribute("src");
      delete img.dataset.url;
      return;
    }
    const url = URL.createObjectURL(blob);
    img.dataset.url = url;
    img.src = url;
  }

  // ---------------------------------------------------------------- status

  function setStatus(message, kind = "info") {
    const status = $("status");
    status.textContent = message;
    status.dataset.kind = kind;
  }

  function setResultsState(value) {
    $("results").dataset.state = value;
    document.body.dataset.state = value;
  }

  // ---------------------------------------------------------------- drawing pad

  const pad = $("pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  let stroke = null;

  function blank() {
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.restore();
  }

  function pushUndo() {
    state.undo.push({
      pixels: ctx.getImageData(0, 0, pad.width, pad.height),
      source: state.source,
      hasInk: state.hasInk,
    });
    if (state.undo.length > UNDO_LIMIT) state.undo.shift();
    updateButtons();
  }

  function updateButtons() {
    $("undo").disabled = state.undo.length === 0;
    $("clear").disabled = !state.hasInk;
  }

  function pointAt(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
      width: penWidth(event),
    };
  }

  function penWidth(event) {
    const base = Number($("pen-size").value);
    if (event.pointerType === "pen" && event.pressure > 0) return base * (0.5 + event.pressure);
    return base;
  }

  function segment(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = (from.width + to.width) / 2;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  function dot(p) {
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(p.x, p.y, p.width / 2, 0, Math.PI * 2);
    ctx.fill();
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    if (stroke) return; // a second finger: ignore
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    pushUndo();
    state.source = null; // from now on the canvas is the input
    state.hasInk = true;
    stroke = { id: event.pointerId, last: pointAt(event) };
    dot(stroke.last);
    updateButtons();
    schedule();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!stroke || event.pointerId !== stroke.id) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = pointAt(e);
      segment(stroke.last, p);
      stroke.last = p;
    }
    schedule();
  });

  function endStroke(event) {
    if (!stroke || event.pointerId !== stroke.id) return;
    stroke = null;
    schedule();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);
  pad.addEventListener("contextmenu", (event) => event.preventDefault());

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => {
    if (!state.hasInk) return;
    pushUndo();
    blank();
    state.source = null;
    state.hasInk = false;
    updateButtons();
    schedule(0);
  });

  function undo() {
    const last = state.undo.pop();
    if (!last) return;
    ctx.putImageData(last.pixels, 0, 0);
    state.source = last.source;
    state.hasInk = last.hasInk;
    updateButtons();
    schedule(0);
  }

  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, textarea, select");
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !typing) {
      event.preventDefault();
      undo();
    }
  });

  // Paint an uploaded or sample image on the pad, letterboxed, as the model will see it:
  // transparent images use their alpha as ink (as the service does), others keep their colours.
  async function loadImage(blob, description) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob);
    } catch (_) {
      setStatus(`${description} is not an image this browser can read.`, "error");
      return;
    }
    pushUndo();
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    const x = (pad.width - w) / 2;
    const y = (pad.height - h) / 2;
    ctx.clearRect(0, 0, pad.width, pad.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, x, y, w, h);
    const corner = ctx.getImageData(Math.floor(x), Math.floor(y), 1, 1).data;
    if (corner[3] < 255) {
      const pixels = ctx.getImageData(0, 0, pad.width, pad.height);
      const d = pixels.data;
      for (let i = 0; i < d.length; i += 4) {
        d[i] = d[i + 1] = d[i + 2] = d[i + 3];
        d[i + 3] = 255;
      }
      ctx.putImageData(pixels, 0, 0);
    } else {
      ctx.fillStyle = `rgb(${corner[0]}, ${corner[1]}, ${corner[2]})`;
      ctx.fillRect(0, 0, pad.width, pad.height);
      ctx.drawImage(bitmap, x, y, w, h);
    }
    bitmap.close && bitmap.close();
    state.source = blob;
    state.hasInk = true;
    updateButtons();
    schedule(0);
  }

  const upload = $("upload");
  upload.addEventListener("change", () => {
    const file = upload.files && upload.files[0];
    if (file) loadImage(file, file.name);
    upload.value = "";
  });

  const drop = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    const file = files.find((f) => f.type.startsWith("image/")) || files[0];
    if (file) loadImage(file, file.name);
    else setStatus("Drop an image file (PNG, JPEG, ...).", "error");
  });
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) loadImage(item.getAsFile(), "The pasted image");
  });

  async function loadSamples() {
    const list = $("samples");
    let samples;
    try {
      const response = await fetch("samples/index.json");
      samples = (await response.json()).samples;
    } catch (_) {
      list.textContent = "No sample digits found.";
      return;
    }
    for (const sample of samples) {
      const name = `MNIST test image ${sample.index}, a ${sample.label}`;
      const button = el(
        "button",
        { type: "button", className: "sample", title: name, "aria-label": `Use ${name}` },
        el("img", { src: `samples/${sample.file}`, alt: "", width: 28, height: 28 })
      );
      button.addEventListener("click", async () => {
        try {
          const response = await fetch(`samples/${sample.file}`);
          if (!response.ok) throw new Error(response.statusText);
          const blob = await response.blob();
          await loadImage(new File([blob], sample.file, { type: "image/png" }), name);
        } catch (_) {
          setStatus(`Could not load ${name}.`, "error");
        }
      });
      list.append(button);
    }
  }

  // ---------------------------------------------------------------- evaluation

  function schedule(delay = DEBOUNCE_MS) {
    const now = performance.now();
    if (state.timer === null) state.firstScheduled = now;
    clearTimeout(state.timer);
    const waited = now - state.firstScheduled;
    const wait = Math.max(0, Math.min(delay, MAX_WAIT_MS - waited));
    state.timer = setTimeout(() => {
      state.timer = null;
      evaluate();
    }, wait);
  }

  const canvasBlob = () =>
    new Promise((resolve) => pad.toBlob((blob) => resolve(blob), "image/png"));

  async function evaluate() {
    if (state.controller) state.controller.abort();
    const generation = ++state.generation;
    document.body.dataset.generation = String(generation);
    if (!state.hasInk) {
      state.controller = null;
      showEmpty();
      settled(generation);
      return;
    }
    const controller = new AbortController();
    state.controller = controller;
    const signal = controller.signal;
    const blob = state.source || (await canvasBlob());
    if (generation !== state.generation) return;
    state.input = blob;
    state.mapJson = new Map();
    const current = () => generation === state.generation;

    setResultsState("loading");
    $("results").setAttribute("aria-busy", "true");
    setStatus("Thinking…");

    const tasks = [];
    const prediction = api("/predict", { form: imageForm(blob), signal })
      .then((r) => r.json())
      .then((data) => current() && showPrediction(data));
    tasks.push(prediction);

    tasks.push(
      api("/preprocessed", { form: imageForm(blob), signal })
        .then((r) => r.blob())
        .then((b) => current() && showBlob($("preprocessed"), b))
    );

    for (const layer of state.layers) {
      const figure = document.querySelector(`.map[data-layer="${layer.name}"]`);
      const img = figure.querySelector("img");
      figure.classList.add("loading");
      tasks.push(
        api("/feature_maps", { form: imageForm(blob, { layer: layer.name, format: "png" }), signal })
          .then(async (r) => {
            const b = await r.blob();
            if (!current()) return;
            figure.dataset.label = r.headers.get("X-Predicted-Label") || "";
            figure.querySelector(".error").textContent = "";
            showBlob(img, b);
          })
          .catch((error) => {
            if (current() && !isAbort(error)) {
              figure.querySelector(".error").textContent = error.message;
              showBlob(img, null);
            }
            throw error;
          })
          .finally(() => current() && figure.classList.remove("loading"))
      );
    }

    for (const [kernel] of KERNELS) {
      const row = document.querySelector(`.block-row[data-kernel="${kernel}"]`);
      tasks.push(
        api("/building_blocks", { form: imageForm(blob, { kernel }), signal })
          .then((r) => r.json())
          .then((data) => current() && showBlocks(row, data))
          .catch((error) => {
            if (current() && !isAbort(error)) row.querySelector(".error").textContent = error.message;
            throw error;
          })
      );
    }

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
      settled(generation);
      return;
    }
    if (failures.length) {
      setStatus(`Some views failed: ${failures[0].reason.message}`, "error");
      setResultsState("error");
    } else {
      setStatus("");
      setResultsState("done");
    }
    settled(generation);
    if (state.selected) selectChannel(state.selected.layer, state.selected.channel, true);
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
    const bars = $("bars");
    bars.replaceChildren(
      ...probabilities.map((value, digit) => {
        const pct = Math.max(0, Math.min(1, value)) * 100;
        const text = pct >= 10 ? pct.toFixed(0) : pct.toFixed(1);
        return el(
          "div",
          {
            className: digit === label ? "bar top" : "bar",
            role: "listitem",
            "aria-label": `${digit}: ${text}%`,
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

  function clearViews() {
    $("bars").replaceChildren();
    showBlob($("preprocessed"), null);
    for (const img of document.querySelectorAll(".map img")) showBlob(img, null);
    for (const mark of document.querySelectorAll(".map .mark")) mark.hidden = true;
    for (const row of document.querySelectorAll(".block-row")) {
      for (const img of row.querySelectorAll("img")) img.removeAttribute("src");
      for (const shape of row.querySelectorAll(".shape")) shape.textContent = "";
    }
    for (const error of document.querySelectorAll(".map .error, .block-row .error"))
      error.textContent = "";
    drawZoom(null);
  }

  function showEmpty() {
    setResultsState("empty");
    $("results").removeAttribute("aria-busy");
    $("results").classList.remove("stale");
    $("label").textContent = "–";
    $("confidence").textContent = "";
    clearViews();
    state.input = null;
    state.mapJson = new Map();
    setStatus("Draw a digit to start.");
  }

  // ---------------------------------------------------------------- building blocks

  function buildBlocks() {
    const container = $("blocks");
    for (const [kernel, title] of KERNELS) {
      const figures = STEPS.map(([step, caption], i) =>
        el(
          "figure",
          { className: `step step-${step}` },
          i ? el("span", { className: "arrow", "aria-hidden": "true" }, "→") : null,
          el("img", { className: "pixelated", alt: `${title}: ${caption}`, width: 84, height: 84 }),
          el("figcaption", {}, caption, el("span", { className: "shape" }))
        )
      );
      container.append(
        el(
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
        )
      );
    }
  }

  function formatWeight(w) {
    if (Number.isInteger(w)) return String(w);
    const ninths = w * 9;
    if (Math.abs(ninths - Math.round(ninths)) < 1e-6) return `${Math.round(ninths)}/9`;
    return w.toFixed(2);
  }

  function showBlocks(row, data) {
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

  // ---------------------------------------------------------------- feature maps

  function buildMaps() {
    const container = $("maps");
    container.replaceChildren();
    for (const layer of state.layers) {
      const [c, h, w] = layer.shape;
      const wrap = el(
        "div",
        {
          className: "grid-wrap",
          tabindex: "0",
          role: "group",
          "aria-label": `${layer.name}: ${c} channels of ${h}×${w}. Arrow keys pick a channel.`,
          "aria-describedby": "zoom-info",
        },
        el("img", {
          className: "pixelated",
          alt: `Feature maps of ${layer.name}, ${c} channels`,
        }),
        el("div", { className: "mark", hidden: true })
      );
      const figure = el(
        "figure",
        { className: "map", dataset: { layer: layer.name } },
        el(
          "figcaption",
          {},
          el("strong", {}, layer.name),
          ` ${layer.type} · ${c} × ${h} × ${w}`
        ),
        wrap,
        el("p", { className: "error", role: "alert" })
      );
      const img = wrap.querySelector("img");
      const channelAt = (event) => {
        if (!img.naturalWidth) return null;
        const g = geometry(img, layer);
        const x = (event.offsetX * img.naturalWidth) / img.clientWidth;
        const y = (event.offsetY * img.naturalHeight) / img.clientHeight;
        const col = Math.min(g.cols - 1, Math.max(0, Math.floor((x - g.pad / 2) / (g.tw + g.pad))));
        const row = Math.min(g.rows - 1, Math.max(0, Math.floor((y - g.pad / 2) / (g.th + g.pad))));
        const channel = row * g.cols + col;
        return channel < c ? channel : null;
      };
      img.addEventListener("mousemove", (event) => {
        const channel = channelAt(event);
        if (channel === null) return;
        if (state.selected && state.selected.pinned) return;
        if (state.selected && state.selected.layer === layer.name && state.selected.channel === channel)
          return;
        selectChannel(layer.name, channel, false);
      });
      img.addEventListener("click", (event) => {
        const channel = channelAt(event);
        if (channel !== null) selectChannel(layer.name, channel, true);
      });
      wrap.addEventListener("keydown", (event) => {
        if (!img.naturalWidth) return;
        const g = geometry(img, layer);
        const sel = state.selected;
        let channel = sel && sel.layer === layer.name ? sel.channel : -1;
        const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: g.cols, ArrowUp: -g.cols };
        if (event.key in moves) {
          channel = channel < 0 ? 0 : channel + moves[event.key];
        } else if (event.key === "Home") channel = 0;
        else if (event.key === "End") channel = c - 1;
        else if (event.key === "Enter" || event.key === " ") channel = Math.max(0, channel);
        else return;
        event.preventDefault();
        selectChannel(layer.name, Math.max(0, Math.min(c - 1, channel)), true);
      });
      wrap.addEventListener("focus", () => {
        const sel = state.selected;
        if (img.naturalWidth && !(sel && sel.layer === layer.name)) selectChannel(layer.name, 0, true);
      });
      container.append(figure);
    }
  }

  // Where each channel's tile is in a grid image. The service lays tiles out in rows of 8
  // (or fewer), each enlarged by a whole factor, with a thin gap; the image's size confirms it.
  function geometry(img, layer) {
    const key = `${img.naturalWidth}x${img.naturalHeight}`;
    if (img._geometry && img._geometry.key === key) return img._geometry;
    const [c, h, w] = layer.shape;
    const W = img.naturalWidth;
    const H = img.naturalHeight;
    const preferred = c >= 8 ? 8 : c;
    const columns = [preferred];
    for (let n = 1; n <= c; n++) if (n !== preferred) columns.push(n);
    let found = null;
    search: for (const cols of columns) {
      const rows = Math.ceil(c / cols);
      for (const gap of [2, 1, 0, 3, 4]) {
        const tw = (W - gap * (cols + 1)) / cols;
        const th = (H - gap * (rows + 1)) / rows;
        if (tw > 0 && Number.isInteger(tw) && Number.isInteger(th) && tw % w === 0 && th % h === 0) {
          if (tw / w === th / h) {
            found = { cols, rows, pad: gap, tw, th };
            break search;
          }
        }
      }
    }
    if (!found) {
      const rows = Math.ceil(c / preferred);
      found = { cols: preferred, rows, pad: 0, tw: W / preferred, th: H / rows };
    }
    found.key = key;
    img._geometry = found;
    return found;
  }

  function markTile(layerName, channel) {
    for (const figure of document.querySelectorAll(".map")) {
      const mark = figure.querySelector(".mark");
      const img = figure.querySelector("img");
      const layer = state.layers.find((l) => l.name === figure.dataset.layer);
      if (figure.dataset.layer !== layerName || channel === null || !img.naturalWidth) {
        mark.hidden = true;
        continue;
      }
      const g = geometry(img, layer);
      const row = Math.floor(channel / g.cols);
      const col = channel % g.cols;
      const W = img.naturalWidth;
      const H = img.naturalHeight;
      mark.style.left = `${((g.pad + col * (g.tw + g.pad)) / W) * 100}%`;
      mark.style.top = `${((g.pad + row * (g.th + g.pad)) / H) * 100}%`;
      mark.style.width = `${(g.tw / W) * 100}%`;
      mark.style.height = `${(g.th / H) * 100}%`;
      mark.hidden = false;
    }
  }

  function layerJson(layerName) {
    if (!state.input) return Promise.reject(new Error("no input"));
    if (!state.mapJson.has(layerName)) {
      const signal = state.controller ? state.controller.signal : undefined;
      const request = api("/feature_maps", {
        form: imageForm(state.input, { layer: layerName, format: "json" }),
        signal,
      }).then((r) => r.json());
      request.catch(() => state.mapJson.delete(layerName));
      state.mapJson.set(layerName, request);
    }
    return state.mapJson.get(layerName);
  }

  // One channel of a JSON feature-map answer, whatever its nesting: {values, h, w}.
  function channelOf(data, channel, layer) {
    let maps = data.activations ?? data.feature_maps ?? data.maps ?? data.values ?? data.data;
    let shape = data.shape || layer.shape;
    if (shape.length === 4) shape = shape.slice(1);
    while (Array.isArray(maps) && maps.length === 1 && shape.length === 3 && shape[0] !== 1)
      maps = maps[0]; // a batch of one
    const [, h, w] = shape;
    const flat = Array.isArray(maps) ? maps.flat(3) : [];
    const values = Float32Array.from(flat.slice(channel * h * w, (channel + 1) * h * w));
    return { values, h, w };
  }

  function viridis(t) {
    const v = Math.max(0, Math.min(255, t * 255));
    let i = 0;
    while (i < VIRIDIS_AT.length - 2 && v > VIRIDIS_AT[i + 1]) i++;
    const f = (v - VIRIDIS_AT[i]) / (VIRIDIS_AT[i + 1] - VIRIDIS_AT[i]);
    const a = i * 3;
    const b = a + 3;
    return [0, 1, 2].map((k) => Math.round(VIRIDIS[a + k] + f * (VIRIDIS[b + k] - VIRIDIS[a + k])));
  }

  const zoom = $("zoom");
  const zctx = zoom.getContext("2d");
  let zoomData = null;

  function drawZoom(channelData, title) {
    zoomData = channelData;
    zctx.fillStyle = getComputedStyle(zoom).getPropertyValue("--empty") || "#ddd";
    zctx.fillRect(0, 0, zoom.width, zoom.height);
    if (!channelData) {
      $("zoom-title").textContent = "Channel";
      $("zoom-info").textContent = "Hover or click a tile.";
      return;
    }
    const { values, h, w } = channelData;
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const span = hi - lo;
    const tile = new ImageData(w, h);
    for (let i = 0; i < values.length; i++) {
      const [r, g, b] = viridis(span > 0 ? (values[i] - lo) / span : 0.5);
      tile.data.set([r, g, b, 255], i * 4);
    }
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    small.getContext("2d").putImageData(tile, 0, 0);
    zctx.imageSmoothingEnabled = false;
    zctx.drawImage(small, 0, 0, zoom.width, zoom.height);
    channelData.lo = lo;
    channelData.hi = hi;
    $("zoom-title").textContent = title;
    zoomInfo();
  }

  function zoomInfo(x, y) {
    if (!zoomData) return;
    const { h, w, lo, hi, values, label } = zoomData;
    let text = `${label}: ${h}×${w}, values ${lo.toFixed(2)} to ${hi.toFixed(2)}`;
    if (x !== undefined) text += ` · at (${x}, ${y}): ${values[y * w + x].toFixed(3)}`;
    $("zoom-info").textContent = text;
  }

  zoom.addEventListener("mousemove", (event) => {
    if (!zoomData) return;
    const x = Math.floor((event.offsetX / zoom.clientWidth) * zoomData.w);
    const y = Math.floor((event.offsetY / zoom.clientHeight) * zoomData.h);
    if (x >= 0 && y >= 0 && x < zoomData.w && y < zoomData.h) zoomInfo(x, y);
  });
  zoom.addEventListener("mouseleave", () => zoomInfo());

  async function selectChannel(layerName, channel, pinned) {
    const layer = state.layers.find((l) => l.name === layerName);
    if (!layer) return;
    state.selected = { layer: layerName, channel, pinned };
    markTile(layerName, channel);
    const label = `${layerName} channel ${channel + 1} of ${layer.shape[0]}`;
    const generation = state.generation;
    $("zoom-info").textContent = `${label}: loading…`;
    try {
      const data = await layerJson(layerName);
      const sel = state.selected;
      if (generation !== state.generation || sel.layer !== layerName || sel.channel !== channel) return;
      const channelData = channelOf(data, channel, layer);
      channelData.label = label;
      drawZoom(channelData, `${layerName} · channel ${channel + 1}`);
    } catch (error) {
      if (!isAbort(error) && error.message !== "no input")
        $("zoom-info").textContent = `${label}: ${error.message}`;
    }
  }

  // ---------------------------------------------------------------- model card

  function field(info, ...names) {
    for (const name of names) {
      const value = name.split(".").reduce((o, k) => (o == null ? undefined : o[k]), info);
      if (value !== undefined && value !== null && value !== "") return value;
    }
    return undefined;
  }

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

  async function showModelCard(info) {
    const name = field(info, "name", "model.name", "model_name") || "model";
    const version = field(info, "version", "model.version", "model_version");
    const runId = field(info, "run_id", "runId", "run.id", "run.run_id");
    const experimentId = field(info, "experiment_id", "run.experiment_id");
    const accuracy = field(info, "test_accuracy", "test_acc", "metrics.test_acc", "accuracy");
    const tracking = field(info, "tracking_uri", "mlflow_tracking_uri", "tracking.uri");
    const input = field(info, "input", "input_spec", "inputs");
    const accText =
      typeof accuracy === "number" || /^[\d.]+$/.test(String(accuracy))
        ? `${(Number(accuracy) * (Number(accuracy) <= 1 ? 100 : 1)).toFixed(2)}%`
        : accuracy;

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
    if (input) add("Input", inputText(input));

    const rows = field(info, "layers", "architecture.layers") || [];
    const body = $("architecture").tBodies[0];
    let total = 0;
    body.replaceChildren(
      ...rows.map((layer) => {
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
    $("architecture").tFoot.replaceChildren(
      el(
        "tr",
        {},
        el("th", { scope: "row", colSpan: 3 }, "Total parameters"),
        el("td", { className: "num" }, total.toLocaleString("en-US"))
      )
    );

    // Link the run only when its tracking server answers: the model's own server when it was
    // loaded from one, else the `make ui` default on this machine.
    if (runId) {
      const base = /^https?:\/\//.test(String(tracking || ""))
        ? String(tracking).replace(/\/+$/, "")
        : MLFLOW_UI;
      if (await reachable(`${base}/health`)) {
        const path = experimentId
          ? `#/experiments/${experimentId}/runs/${runId}`
          : `#/runs/${runId}`;
        const link = el(
          "a",
          { href: `${base}/${path}`, target: "_blank", rel: "noopener" },
          el("code", {}, String(runId))
        );
        runCell.replaceWith(link);
        if (version !== undefined) {
          facts.append(
            el("dt", {}, "Registry"),
            el(
              "dd",
              {},
              el(
                "a",
                {
                  href: `${base}/#/models/${encodeURIComponent(name)}/versions/${version}`,
                  target: "_blank",
                  rel: "noopener",
                },
                `${name} version ${version} in MLflow`
              )
            )
          );
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
  }

  // The conv and pool layers, in order: the service's own list when it gives one.
  function spatialLayers(info) {
    const rows = (field(info, "layers", "architecture.layers") || []).filter(
      (l) => (l.output_shape || []).length === 3
    );
    const named = info.feature_map_layers;
    const convs = info.filter_layers;
    const chosen = Array.isArray(named)
      ? rows.filter((l) => named.includes(l.name))
      : rows.filter((l) => /conv|pool/i.test(`${l.type} ${l.name}`));
    return chosen.map((l) => ({
      name: l.name,
      type: l.type,
      shape: l.output_shape.map(Number),
      conv: Array.isArray(convs) ? convs.includes(l.name) : /conv/i.test(`${l.type}`),
    }));
  }

  async function loadFilters() {
    const container = $("filters");
    container.replaceChildren();
    for (const layer of state.layers.filter((l) => l.conv)) {
      const img = el("img", { className: "pixelated", alt: `Learned filters of ${layer.name}` });
      const error = el("p", { className: "error", role: "alert" });
      container.append(
        el(
          "figure",
          { className: "filter", dataset: { layer: layer.name } },
          el("figcaption", {}, el("strong", {}, layer.name), ` ${layer.shape[0]} filters`),
          img,
          error
        )
      );
      try {
        const response = await api("/filters", { json: { layer: layer.name, format: "png" } });
        showBlob(img, await response.blob());
      } catch (e) {
        error.textContent = e.message;
      }
    }
  }

  async function start() {
    blank();
    buildBlocks();
    updateButtons();
    loadSamples();
    showEmpty();
    try {
      const info = await (await api("/model_info", { json: {} })).json();
      state.info = info;
      state.layers = spatialLayers(info);
      buildMaps();
      showModelCard(info);
      loadFilters();
    } catch (error) {
      $("model-badge").textContent = "model unavailable";
      setStatus(`Could not load the model description: ${error.message}`, "error");
    }
    document.body.dataset.ready = "true";
    if (state.hasInk) schedule(0);
  }

  start();
})();
