// The service's API client: POST to an endpoint, turn its errors into one readable sentence
// (ApiError), and build the multipart form the image endpoints take.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export const isAbort = (error) => error && error.name === "AbortError";

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

// "the image has no digit" -> "The image has no digit."
function sentence(text) {
  const t = String(text).trim();
  if (!t) return t;
  const head = t[0].toUpperCase() + t.slice(1);
  return /[.!?)]$/.test(head) ? head : `${head}.`;
}

// POST `form` (FormData) or `json` to `path`; the Response when it is ok, else an ApiError.
export async function api(path, { form, json, signal } = {}) {
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

// The form of the image endpoints: the image, plus string fields (layer, kernel, format).
export function imageForm(blob, fields = {}) {
  const form = new FormData();
  const name = blob.name || "digit.png";
  form.append("image", blob, name);
  for (const [key, value] of Object.entries(fields)) form.append(key, String(value));
  return form;
}

// The service's description of its model (see `model_info` in serving/service.py).
export const modelInfo = async () => (await api("/model_info", { json: {} })).json();
