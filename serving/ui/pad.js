// The drawing pad and every way to put a digit on it: drawing with a mouse, finger or pen,
// undo (also Ctrl+Z) and clear, uploading, dropping or pasting an image, and the MNIST samples.
// It knows nothing of the service: `onChange(delay)` asks for the input to be evaluated.

import { $, el } from "./dom.js";

const UNDO_LIMIT = 40;

export function createPad({ onChange, onError }) {
  const pad = $("pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  let source = null; // a File/Blob to send as is (upload, sample); null: send the canvas
  let hasInk = false;
  let stroke = null;
  const undoStack = [];

  function blank() {
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.restore();
  }

  function pushUndo() {
    undoStack.push({ pixels: ctx.getImageData(0, 0, pad.width, pad.height), source, hasInk });
    if (undoStack.length > UNDO_LIMIT) undoStack.shift();
    updateButtons();
  }

  function updateButtons() {
    $("undo").disabled = undoStack.length === 0;
    $("clear").disabled = !hasInk;
  }

  function penWidth(event) {
    const base = Number($("pen-size").value);
    if (event.pointerType === "pen" && event.pressure > 0) return base * (0.5 + event.pressure);
    return base;
  }

  function pointAt(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
      width: penWidth(event),
    };
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
    source = null; // from now on the canvas is the input
    hasInk = true;
    stroke = { id: event.pointerId, last: pointAt(event) };
    dot(stroke.last);
    updateButtons();
    onChange();
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
    onChange();
  });

  function endStroke(event) {
    if (!stroke || event.pointerId !== stroke.id) return;
    stroke = null;
    onChange();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);
  pad.addEventListener("contextmenu", (event) => event.preventDefault());

  function undo() {
    const last = undoStack.pop();
    if (!last) return;
    ctx.putImageData(last.pixels, 0, 0);
    source = last.source;
    hasInk = last.hasInk;
    updateButtons();
    onChange(0);
  }

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => {
    if (!hasInk) return;
    pushUndo();
    blank();
    source = null;
    hasInk = false;
    updateButtons();
    onChange(0);
  });

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
      onError(`${description} is not an image this browser can read.`);
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
    source = blob;
    hasInk = true;
    updateButtons();
    onChange(0);
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
    else onError("Drop an image file (PNG, JPEG, ...).");
  });
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) loadImage(item.getAsFile(), "The pasted image");
  });

  // One button per digit in samples/index.json (the first MNIST test image of each digit).
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
          onError(`Could not load ${name}.`);
        }
      });
      list.append(button);
    }
  }

  blank();
  updateButtons();
  loadSamples();

  return {
    hasInk: () => hasInk,
    // What to send: the uploaded or sample file as is, else the canvas as a PNG.
    input: () => source || new Promise((resolve) => pad.toBlob(resolve, "image/png")),
  };
}
