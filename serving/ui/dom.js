// DOM helpers shared by the page's modules: find an element by id, build one, and show a
// fetched image Blob in an <img>.

export const $ = (id) => document.getElementById(id);

// el("a", {href, className, dataset: {...}, "aria-label": ...}, child, "text", null, ...)
export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

// Object URLs of images fetched by POST, one per <img>, freed when replaced.
export function showBlob(img, blob) {
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
