// Feature maps: one grid image per conv and pooling layer for the current input, the channel
// picked by mouse or keyboard marked on its grid and enlarged in the zoom panel (zoom.js), and
// the conv layers' learned filters.

import { api, imageForm, isAbort } from "./api.js";
import { $, el, showBlob } from "./dom.js";
import { createReceptive } from "./receptive.js";
import { channelOf, drawZoom, showTopPatches } from "./zoom.js";

// The conv and pooling layers /model_info lists, in order: {name, type, shape: [C, H, W], conv}.
export function spatialLayers(info) {
  const named = info.feature_map_layers || [];
  const convs = info.filter_layers || [];
  return (info.layers || [])
    .filter((l) => named.includes(l.name) && (l.output_shape || []).length === 3)
    .map((l) => ({
      name: l.name,
      type: l.type,
      shape: l.output_shape.map(Number),
      conv: convs.includes(l.name),
    }));
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

export function createFeatureMaps(layers) {
  let generation = 0; // bumped for every new input: late answers for an older one are dropped
  let input = null; // the Blob the current maps were computed from
  let signal; // aborts the current input's requests
  let mapJson = new Map(); // layer -> Promise of its JSON activations, for the current input
  let selected = null; // {layer, channel, pinned}
  const receptive = createReceptive(() => input); // a clicked pixel of the enlarged channel

  function markTile(layerName, channel) {
    for (const figure of document.querySelectorAll(".map")) {
      const mark = figure.querySelector(".mark");
      const img = figure.querySelector("img");
      const layer = layers.find((l) => l.name === figure.dataset.layer);
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
    if (!input) return Promise.reject(new Error("no input"));
    if (!mapJson.has(layerName)) {
      const request = api("/feature_maps", {
        form: imageForm(input, { layer: layerName, format: "json" }),
        signal,
      }).then((r) => r.json());
      request.catch(() => mapJson.delete(layerName));
      mapJson.set(layerName, request);
    }
    return mapJson.get(layerName);
  }

  async function selectChannel(layerName, channel, pinned) {
    const layer = layers.find((l) => l.name === layerName);
    if (!layer) return;
    selected = { layer: layerName, channel, pinned };
    markTile(layerName, channel);
    showTopPatches(layerName, channel, layers.filter((l) => l.conv).map((l) => l.name));
    const label = `${layerName} channel ${channel + 1} of ${layer.shape[0]}`;
    const asked = generation;
    $("zoom-info").textContent = `${label}: loading…`;
    try {
      const data = await layerJson(layerName);
      if (asked !== generation || selected.layer !== layerName || selected.channel !== channel)
        return;
      const channelData = channelOf(data, channel);
      channelData.label = label;
      Object.assign(channelData, { layer: layerName, channel });
      drawZoom(channelData, `${layerName} · channel ${channel + 1}`);
    } catch (error) {
      if (!isAbort(error) && error.message !== "no input")
        $("zoom-info").textContent = `${label}: ${error.message}`;
    }
  }

  function buildMap(layer) {
    const [c, h, w] = layer.shape;
    const img = el("img", {
      className: "pixelated",
      alt: `Feature maps of ${layer.name}, ${c} channels`,
    });
    const wrap = el(
      "div",
      {
        className: "grid-wrap",
        tabindex: "0",
        role: "group",
        "aria-label": `${layer.name}: ${c} channels of ${h}×${w}. Arrow keys pick a channel.`,
        "aria-describedby": "zoom-info",
      },
      img,
      el("div", { className: "mark", hidden: true })
    );
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
      if (selected && selected.pinned) return;
      if (selected && selected.layer === layer.name && selected.channel === channel) return;
      selectChannel(layer.name, channel, false);
    });
    img.addEventListener("click", (event) => {
      const channel = channelAt(event);
      if (channel !== null) selectChannel(layer.name, channel, true);
    });
    wrap.addEventListener("keydown", (event) => {
      if (!img.naturalWidth) return;
      const g = geometry(img, layer);
      let channel = selected && selected.layer === layer.name ? selected.channel : -1;
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
      if (img.naturalWidth && !(selected && selected.layer === layer.name))
        selectChannel(layer.name, 0, true);
    });
    return el(
      "figure",
      { className: "map", dataset: { layer: layer.name } },
      el("figcaption", {}, el("strong", {}, layer.name), ` ${layer.type} · ${c} × ${h} × ${w}`),
      wrap,
      el("p", { className: "error", role: "alert" })
    );
  }

  const figures = layers.map(buildMap);
  $("maps").replaceChildren(...figures);

  return {
    // A new input is on its way: answers for the previous one no longer count.
    invalidate() {
      generation++;
      receptive.clear();
    },

    // Forget the input (the pad is empty): the zoom has nothing to ask for.
    forgetInput() {
      input = null;
      mapJson = new Map();
    },

    // One grid request per layer for `blob`; each promise settles when its grid is shown or
    // failed. `current()` is false once a newer input replaced this one.
    request(blob, abortSignal, current) {
      input = blob;
      signal = abortSignal;
      mapJson = new Map();
      return figures.map((figure) => {
        const img = figure.querySelector("img");
        const form = imageForm(blob, { layer: figure.dataset.layer, format: "png" });
        figure.classList.add("loading");
        return api("/feature_maps", { form, signal })
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
          .finally(() => current() && figure.classList.remove("loading"));
      });
    },

    // Enlarge the selected channel again, for the new input.
    reselect() {
      if (selected) selectChannel(selected.layer, selected.channel, true);
    },

    clear() {
      for (const figure of figures) {
        showBlob(figure.querySelector("img"), null);
        figure.querySelector(".mark").hidden = true;
        figure.querySelector(".error").textContent = "";
      }
    },
  };
}

// The learned filters of each conv layer, as the service draws them.
export async function loadFilters(layers) {
  const container = $("filters");
  container.replaceChildren();
  for (const layer of layers.filter((l) => l.conv)) {
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
