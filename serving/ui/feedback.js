// After each prediction, ask "Right?": yes, or which digit it was. The answer goes to
// POST /feedback with the image exactly as it was sent to /predict, the predicted label and
// the model version; the line under the buttons says whether it was saved, or why not.
// A new input puts the question away until its prediction has arrived.

import { api, imageForm } from "./api.js";
import { $, el } from "./dom.js";

const DIGITS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

export function createFeedback() {
  const panel = $("feedback");
  const status = $("feedback-status");
  const yes = $("feedback-yes");
  const digits = DIGITS.map((digit) =>
    el(
      "button",
      { type: "button", className: "digit-choice", dataset: { digit: String(digit) } },
      String(digit)
    )
  );
  $("feedback-digits").replaceChildren(...digits);
  let asked = null; // { blob, label, version }: the prediction the question is about
  let generation = 0;

  function say(message, kind = "info") {
    status.textContent = message;
    status.dataset.kind = kind;
    panel.dataset.state = kind === "info" ? "asking" : kind;
  }

  function mark(chosen) {
    for (const button of [yes, ...digits]) {
      button.setAttribute("aria-pressed", String(button === chosen));
    }
  }

  function offer(blob, prediction) {
    generation += 1;
    asked = {
      blob,
      label: Number(prediction.label),
      version: prediction.model?.version ?? "",
    };
    yes.textContent = `Yes, it is ${asked.label}`;
    mark(null);
    say("");
    panel.hidden = false;
  }

  function hide() {
    generation += 1;
    asked = null;
    panel.hidden = true;
  }

  async function send(label, button) {
    if (!asked) return;
    const mine = generation;
    const fields = { label, predicted: asked.label };
    if (asked.version) fields.model_version = asked.version;
    mark(button);
    for (const b of [yes, ...digits]) b.disabled = true;
    say("Saving…");
    try {
      const receipt = await (await api("/feedback", { form: imageForm(asked.blob, fields) })).json();
      if (mine !== generation) return;
      const thanks = label === asked.label ? "the model was right" : `it is a ${label}`;
      say(
        receipt.created
          ? `Saved, thank you: ${thanks}.`
          : `Saved again: this image is now labelled ${receipt.label}.`,
        "saved"
      );
    } catch (error) {
      if (mine !== generation) return;
      say(`Not saved: ${error.message}`, "error");
    } finally {
      for (const b of [yes, ...digits]) b.disabled = false;
    }
  }

  yes.addEventListener("click", () => asked && send(asked.label, yes));
  for (const button of digits) {
    button.addEventListener("click", () => send(Number(button.dataset.digit), button));
  }
  hide();
  return { offer, hide };
}
