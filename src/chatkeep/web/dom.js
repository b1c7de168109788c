// Building DOM nodes from code: the page's only way of making elements.
//
// Text always goes in as text nodes, so whatever a model, a user or a server wrote is shown as
// characters, never parsed as HTML.

/**
 * `tag` with `props` (className, text, hidden, any other property, `attrs` set as attributes,
 * `on` event handlers) and `children` (nodes, or strings that become text).
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "attrs") {
      for (const [attr, attrValue] of Object.entries(value)) node.setAttribute(attr, attrValue);
    } else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "text") {
      node.textContent = value;
    } else {
      node[name] = value;
    }
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

/** The element with `id`; the page's fixed skeleton is in index.html. */
export function byId(id) {
  return document.getElementById(id);
}

/** Give focus to `element` as a dialog closes, unless focus is already somewhere. Chromium fires a
 * dialog's close event at its next frame, after it has put focus back where it was when the dialog
 * opened; a busy machine delays that frame, and by then the reader may be typing in the message box. */
export function returnFocus(element) {
  if (document.activeElement === null || document.activeElement === document.body) element.focus();
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const DAY = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const DATE = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

/** A <time> for `iso`: the time of day when it is today, the day otherwise; in full on hover. */
export function timeElement(iso) {
  const when = new Date(iso);
  const now = new Date();
  const today = when.toDateString() === now.toDateString();
  const thisYear = when.getFullYear() === now.getFullYear();
  const label = today ? TIME.format(when) : thisYear ? DAY.format(when) : DATE.format(when);
  return h("time", { dateTime: iso, title: FULL.format(when), text: label });
}

/** `iso` as a full date and time, for text. */
export function fullTime(iso) {
  return FULL.format(new Date(iso));
}

/** Tell screen readers `text` once, politely. */
export function announce(text) {
  const region = byId("announcer");
  region.textContent = "";
  // A fresh text node in a later task is announced even when the text repeats.
  setTimeout(() => {
    region.textContent = text;
  }, 50);
}
