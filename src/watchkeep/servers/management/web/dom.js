// Building the page from data, never from HTML strings: every text the site sends (a
// camera's name, a doctor's message) lands in a text node, so none of it can run.

const SVG = "http://www.w3.org/2000/svg";

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// h("p", {class: "x"}, "text", h("strong", {}, "more"))
export function h(tag, attributes, ...children) {
  return build(document.createElement(tag), attributes, children);
}

export function svg(tag, attributes, ...children) {
  return build(document.createElementNS(SVG, tag), attributes, children);
}

export function clear(element) {
  // Live pictures keep a connection open: give each one up before its element goes.
  for (const img of element.querySelectorAll("img")) img.removeAttribute("src");
  element.replaceChildren();
}

export function table(caption, headers, rows) {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", {scope: "col"}, text)))),
    h("tbody", {}, rows));
}

// "3 days ago", "in 12 days": how far from now an ISO time is.
export function relative(iso) {
  if (!iso) return "never";
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  const size = Math.abs(seconds);
  const [amount, unit] = size < 90 ? [size, "second"] : size < 5400 ? [size / 60, "minute"]
    : size < 129600 ? [size / 3600, "hour"] : [size / 86400, "day"];
  const n = Math.round(amount);
  const text = `${n} ${unit}${n === 1 ? "" : "s"}`;
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

export function day(iso) {
  return iso ? iso.slice(0, 10) : "—";
}

// A problem document (RFC 9457) from the API as a block: what, and the fix.
export function problemBlock(error) {
  const p = error.problem || {};
  return h("div", {class: "problem", role: "alert"},
    h("p", {}, h("strong", {}, p.title || "refused"), ": ", p.detail || error.message),
    p.fix ? h("p", {}, "Fix: ", h("code", {}, p.fix)) : null);
}
