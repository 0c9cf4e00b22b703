// convlens web page, entry module: draw a digit, see what the CNN sees.
// Plain JavaScript modules, no build step and no dependencies; the page only calls the
// service's public endpoints. This module wires the parts together:
//   api.js           the service's API client
//   pad.js           the drawing pad, uploads, drops and the MNIST samples
//   prediction.js    evaluating the input: prediction, probability bars, status
//   feature-maps.js  feature-map grids and the learned filters (zoom.js: the enlarged channel)
//   blocks.js        the building blocks, by hand, one row per kernel of /model_info
//   model-card.js    the model card and the header's badge
//   map.js           the embedding map: test digits in the last hidden layer, and yours
//   feedback.js      "Right?" after each prediction, answered to POST /feedback
//   dom.js           DOM helpers

import { modelInfo } from "./api.js";
import { createBlocks } from "./blocks.js";
import { createFeedback } from "./feedback.js";
import { createFeatureMaps, loadFilters, spatialLayers } from "./feature-maps.js";
import { createEmbeddingMap } from "./map.js";
import { showModelCard, showModelUnavailable } from "./model-card.js";
import { createPad } from "./pad.js";
import { createEvaluator, setStatus } from "./prediction.js";

async function start() {
  const evaluator = createEvaluator();
  let embeddingMap = null;
  const pad = createPad({
    onChange: (delay) => {
      evaluator.schedule(delay);
      embeddingMap?.schedule(pad, delay);
    },
    onError: (message) => setStatus(message, "error"),
  });
  evaluator.use({ pad, feedback: createFeedback() });
  evaluator.showEmpty();
  try {
    const info = await modelInfo();
    const layers = spatialLayers(info);
    evaluator.use({ maps: createFeatureMaps(layers), blocks: createBlocks(info.kernels || []) });
    showModelCard(info);
    loadFilters(layers);
    embeddingMap = createEmbeddingMap();
  } catch (error) {
    showModelUnavailable();
    setStatus(`Could not load the model description: ${error.message}`, "error");
  }
  document.body.dataset.ready = "true";
  if (pad.hasInk()) evaluator.schedule(0);
  if (pad.hasInk()) embeddingMap?.schedule(pad, 0);
}

start();
