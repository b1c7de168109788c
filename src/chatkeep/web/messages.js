// How one message looks: the user's as plain text, a reply as Markdown, each with its facts.
//
// `messageElement` draws a stored message, with its controls (branches.js) when the page gives
// it `actions`. `ReplyView` is the reply being written: it shows the text as it streams (redrawn
// at most once a frame), says when the connection is being resumed, and becomes the stored
// message, or the failure, when the turn ends.

import { messageControls } from "./branches.js";
import { fullTime, h, timeElement } from "./dom.js";
import { highlightCode } from "./highlight.js";
import { renderMarkdown } from "./markdown.js";
import { problemNotice } from "./problems.js";

export const OFFLINE_MODEL = "chatkeep-offline";
const COPIED_MS = 1500;

// Why a reply is incomplete, as its tag says it (the server's `incomplete_reason`).
const CUT_SHORT = {
  stopped: "Stopped: incomplete reply",
  max_tokens: "Cut short: it reached the token limit",
  content_filter: "Cut short by the model's content filter",
  timeout: "Cut short: the model went silent",
  upstream_error: "Cut short: the model's stream broke off",
  shutdown: "Cut short: the server shut down",
};

// The stored message each <article> shows, for the controls that act on it.
const shown = new WeakMap();

/** The <article> showing the stored `message`; `actions` (branches.js) give it its controls. */
export function messageElement(message, actions = null) {
  const article = h("article", { className: `message message-${message.role}` });
  fill(article, message, actions);
  return article;
}

/** The stored message `article` shows, or undefined for one not stored (yet). */
export function messageOf(article) {
  return shown.get(article);
}

function fill(article, message, actions) {
  const user = message.role === "user";
  shown.set(article, message);
  article.dataset.id = message.id;
  article.dataset.seq = message.seq;
  article.dataset.status = message.status;
  const parts = [
    h("h2", { className: "visually-hidden", text: user ? "You said" : "The assistant said" }),
    imagesElement(message.images ?? []),
    user ? h("div", { className: "message-body message-text", text: message.content }) : replyBody(message.content),
    footer(message, actions),
  ];
  article.replaceChildren(...parts.filter((part) => part !== null)); // replaceChildren writes a null as "null"
}

/** A message's images: an inline one (data: URL) shown, one by https URL linked (the page loads
 *  nothing from other hosts); null for none. */
function imagesElement(images) {
  if (images.length === 0) return null;
  return h(
    "div",
    { className: "message-images" },
    images.map((url, n) =>
      url.startsWith("data:")
        ? h("img", { className: "message-image", src: url, alt: `Image ${n + 1}` })
        : h("a", { href: url, text: `Image ${n + 1}`, attrs: { rel: "noreferrer noopener", target: "_blank" } }),
    ),
  );
}

function replyBody(text) {
  const body = h("div", { className: "message-body md" });
  body.append(renderMarkdown(text));
  highlightCode(body);
  for (const pre of body.querySelectorAll("pre")) pre.append(copyButton(() => pre.querySelector("code").textContent));
  return body;
}

function footer(message, actions) {
  const facts = [timeElement(message.created_at)];
  if (message.role === "assistant" && message.model === OFFLINE_MODEL) {
    facts.push(
      h("span", {
        className: "tag tag-offline",
        text: "offline, no model connected",
        attrs: { title: "chatkeep answers by itself until a model is connected (OPENAI_BASE_URL or OPENAI_API_KEY)" },
      }),
    );
  } else if (message.role === "assistant" && message.model) {
    facts.push(h("span", { className: "model", text: message.model }));
  }
  if (message.status === "incomplete") {
    const text = CUT_SHORT[message.incomplete_reason] ?? "Incomplete reply";
    facts.push(h("span", { className: "tag tag-incomplete", text }));
  }
  if (message.role === "assistant" && message.content) facts.push(copyButton(() => message.content, "Copy reply"));
  facts.push(messageControls(message, actions));
  return h("footer", { className: "message-meta", title: fullTime(message.created_at) }, facts);
}

function copyButton(text, label = "Copy code") {
  if (!navigator.clipboard) return null; // only in secure contexts (https, localhost)
  const button = h("button", {
    type: "button",
    className: "copy-button",
    text: "Copy",
    attrs: { "aria-label": label },
    on: {
      click: async () => {
        try {
          await navigator.clipboard.writeText(text());
          button.textContent = "Copied";
        } catch {
          button.textContent = "Copy failed";
        }
        setTimeout(() => {
          button.textContent = "Copy";
        }, COPIED_MS);
      },
    },
  });
  return button;
}

/** A user message not yet stored: shown at once, confirmed (or dropped) by the turn. */
export function pendingQuestion(content, images = []) {
  return h(
    "article",
    { className: "message message-user message-pending" },
    h("h2", { className: "visually-hidden", text: "You said" }),
    imagesElement(images),
    h("div", { className: "message-body message-text", text: content }),
    h("footer", { className: "message-meta" }, h("span", { text: "Sending…" })),
  );
}

/**
 * Offer to go on from `article`, the chat's newest reply when it was cut short: Continue asks the
 * model to go on from there, Retry writes a new reply in its place (each a new turn).
 */
export function offerToGoOn(article, { onContinue, onRetry }) {
  article.querySelector(".reply-actions")?.remove();
  const button = (label, run) => h("button", { type: "button", className: "button", text: label, on: { click: run } });
  article.append(h("div", { className: "reply-actions" }, button("Continue", onContinue), button("Retry", onRetry)));
}

/** Take the offer of `offerToGoOn` back from wherever it is (a new turn began). */
export function withdrawOffers(root) {
  for (const actions of root.querySelectorAll(".reply-actions")) actions.remove();
}

/** Mark `article` (a pending question) as not stored: its turn failed before the server had it. */
export function unsentQuestion(article) {
  article.querySelector(".message-meta").replaceChildren(h("span", { className: "tag tag-unsent", text: "Not sent" }));
}

/** Draw `article` again as the stored `message` when its versions changed; an offer to go on stays. */
export function redrawMessage(article, message, actions = null) {
  if (JSON.stringify(shown.get(article)?.siblings ?? null) === JSON.stringify(message.siblings ?? null)) return;
  const offers = article.querySelector(".reply-actions");
  fill(article, message, actions);
  if (offers !== null) article.append(offers);
}

/** Turn `article` (a pending question) into the stored `message`. */
export function confirmQuestion(article, message, actions = null) {
  article.classList.remove("message-pending");
  fill(article, message, actions);
}

export class ReplyView {
  /** `around(draw)` runs each redraw, so the conversation can keep following the text;
   * `actions` give the stored reply its controls. */
  constructor({ around = (draw) => draw(), actions = null } = {}) {
    this.around = around;
    this.actions = actions;
    this.status = h("p", { className: "reply-status" }, typingDots(), h("span", { text: "Writing…" }));
    this.body = h("div", { className: "message-body md" });
    this.element = h(
      "article",
      // Read out once written: aria-busy holds the announcement until the reply is whole.
      {
        className: "message message-assistant message-streaming",
        attrs: { "aria-live": "polite", "aria-busy": "true" },
      },
      h("h2", { className: "visually-hidden", text: "The assistant is replying" }),
      this.body,
      this.status,
    );
    this.text = "";
    this.frame = 0;
    this.isReconnecting = false;
  }

  show(text) {
    this.text = text;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    this.around(() => this.body.replaceChildren(renderMarkdown(this.text)));
  }

  reconnecting(flag) {
    if (flag === this.isReconnecting) return;
    this.isReconnecting = flag;
    const text = flag ? "Connection lost, reconnecting…" : "Writing…";
    this.status.replaceChildren(typingDots(), h("span", { text }));
    this.status.classList.toggle("reply-status-warning", flag);
  }

  /** The turn ended with the stored `message`. */
  finish(message) {
    cancelAnimationFrame(this.frame);
    this.element.classList.remove("message-streaming");
    this.element.removeAttribute("aria-busy");
    this.around(() => fill(this.element, message, this.actions));
  }

  /** The turn failed: `error` shown in the reply's place, with `retry` when it may help. */
  fail(error, { retry = null, actions = [] } = {}) {
    cancelAnimationFrame(this.frame);
    this.element.classList.remove("message-streaming");
    this.element.removeAttribute("aria-busy");
    this.around(() => {
      this.body.replaceChildren(renderMarkdown(this.text));
      this.status.remove();
      this.element.append(problemNotice(error, { retry, actions }));
    });
  }
}

function typingDots() {
  return h("span", { className: "typing", attrs: { "aria-hidden": "true" } }, h("span"), h("span"), h("span"));
}
