// The zoom panel beside the feature maps: one channel's activations drawn large in the
// service's viridis colours, with its value range and the value under the mouse.

import { api } from "./api.js";
import { $, el } from "./dom.js";

// matplotlib's viridis at 0, 16, ..., 240, 255: the service's feature-map colours.
const VIRIDIS_AT = [0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 255];
const VIRIDIS = [
  68, 1, 84, 72, 24, 106, 71, 45, 123, 66, 64, 134, 59, 82, 139, 51, 99, 141, 44, 114, 142, 38,
  130, 142, 33, 145, 140, 31, 160, 136, 40, 174, 128, 63, 188, 115, 94, 201, 98, 132, 212, 75,
  173, 220, 48, 216, 226, 25, 253, 231, 37,
];

function viridis(t) {
  const v = Math.max(0, Math.min(255, t * 255));
  let i = 0;
  while (i < VIRIDIS_AT.length - 2 && v > VIRIDIS_AT[i + 1]) i++;
  const f = (v - VIRIDIS_AT[i]) / (VIRIDIS_AT[i + 1] - VIRIDIS_AT[i]);
  const a = i * 3;
  const b = a + 3;
  return [0, 1, 2].map((k) => Math.round(VIRIDIS[a + k] + f * (VIRIDIS[b + k] - VIRIDIS[a + k])));
}

// One channel of a /feature_maps JSON answer ({shape: [C, H, W], activations}): {values, h, w}.
export function channelOf(data, channel) {
  const [, h, w] = data.shape;
  const flat = data.activations.flat(2);
  return { values: Float32Array.from(flat.slice(channel * h * w, (channel + 1) * h * w)), h, w };
}

const zoom = $("zoom");
const zctx = zoom.getContext("2d");
let zoomData = null;

// Draw `channelData` ({values, h, w, label}) under `title`; null empties the panel.
export function drawZoom(channelData, title) {
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

// The channel drawn now ({values, h, w, label, layer, channel}), or null: receptive.js asks.
export const zoomedChannel = () => zoomData;

// What excites an enlarged conv channel most: its nine top test patches (/top_patches), each
// shown in its digit with the receptive field outlined. Pooling layers have none: hidden.
const patchCache = new Map(); // "layer/channel" -> Promise of /top_patches' answer
let patchesWanted = "";

export async function showTopPatches(layer, channel, convLayers) {
  const box = $("top-patches");
  const key = `${layer}/${channel}`;
  patchesWanted = key;
  if (!convLayers.includes(layer)) {
    box.hidden = true;
    return;
  }
  if (!patchCache.has(key)) {
    const request = api("/top_patches", { json: { layer, channel } }).then((r) => r.json());
    request.catch(() => patchCache.delete(key));
    patchCache.set(key, request);
  }
  try {
    const data = await patchCache.get(key);
    if (patchesWanted !== key) return;
    $("top-patches-grid").replaceChildren(
      ...data.patches.map((p) =>
        el(
          "figure",
          {},
          el("img", {
            src: p.context_png,
            alt: `Test digit ${p.test_index}, ${data.receptive_field}×${data.receptive_field} patch at (${p.window.top}, ${p.window.left})`,
            title: `test digit #${p.test_index}: activation ${p.activation.toFixed(2)}`,
          }),
          p.activation.toFixed(2),
        ),
      ),
    );
    $("top-patches-info").textContent =
      `${layer} channel ${channel + 1}: the ${data.patches.length} test digits that excite it ` +
      `most, its ${data.receptive_field}×${data.receptive_field} receptive field outlined.`;
    box.dataset.channel = key;
    box.hidden = false;
  } catch (error) {
    if (patchesWanted !== key) return;
    $("top-patches-grid").replaceChildren();
    $("top-patches-info").textContent = error.message;
    box.dataset.channel = "";
    box.hidden = false;
  }
}
