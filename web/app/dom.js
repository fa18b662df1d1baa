// Small DOM helpers shared by the views.

// Views not on screen are kept out of the document, so that only the current
// view's labels and buttons exist (one "Passcode" field, one "Join" button).
const views = new Map(); // id -> <section class="view">

function collectViews() {
  if (views.size) return;
  for (const view of document.querySelectorAll(".view")) {
    views.set(view.id, view);
    view.remove();
  }
}

/** The element with this id, in the document or in a view off screen. */
export function byId(id) {
  collectViews();
  let element = document.getElementById(id);
  for (const view of views.values()) {
    if (element) break;
    element = view.id === id ? view : view.querySelector(`#${CSS.escape(id)}`);
  }
  if (!element) throw new Error(`no element #${id}`);
  return element;
}

/**
 * Build an element: h("button", {class: "x", onclick: f, "aria-label": "y"}, "text", child).
 * Attributes starting with "on" become listeners; false/null attributes are left out.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

/** An icon from the page's <symbol>s, with a text alternative (or hidden without one). */
export function icon(href, label, extraClass = "") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", `icon ${extraClass}`.trim());
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", href);
  svg.append(use);
  return svg;
}

/** Put exactly one of the views (<section class="view">) on screen. */
export function showView(id) {
  collectViews();
  const view = views.get(id);
  const main = document.getElementById("app");
  if (main.firstElementChild === view) return;
  view.hidden = false;
  main.replaceChildren(view);
  // Move focus to the new view's heading so keyboard and screen-reader users follow.
  const heading = view.querySelector("h1, h2");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

/** Set a toggle button's pressed state, its visible label and its accessible name. */
export function setToggle(button, pressed, label) {
  button.setAttribute("aria-pressed", String(pressed));
  if (label !== undefined) {
    const text = button.querySelector(".label");
    (text || button).textContent = label;
  }
}

/** Initials for a tile without video. */
export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/).filter(Boolean);
  return (words.slice(0, 2).map((w) => [...w][0]).join("") || "?").toUpperCase();
}
