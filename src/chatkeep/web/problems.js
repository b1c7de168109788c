// What went wrong, said where it happened, with what to do about it.
//
// Each ApiError becomes a notice: a plain title, advice on what to do, the server's own detail
// when it adds something, the request id to look for in the server's log, and the actions that
// help (retry, once any Retry-After has passed; enter an API key).

import { h } from "./dom.js";

const ADVICE = {
  network: "chatkeep did not answer. Check that it is still running (make run) and that this device is online.",
  401: "This chatkeep server asks for an API key. Enter one to go on.",
  404: "It is gone: it was deleted, perhaps in another tab. Pick another chat or start a new one.",
  409: "Something else changed it meanwhile. Reload the chat and try again.",
  413: "That message is too large for the server. Shorten it and send it again.",
  422: "The server could not accept this. Change it and try again.",
  429: "Too many requests right now.",
  500: "chatkeep failed unexpectedly. Its log has the details; try again.",
  502: "The language model answered with an error. Try again; if it keeps failing, check the model server.",
  503: "The service is unavailable for the moment.",
  504: "The language model did not begin its reply in time: it may be overloaded, or still loading. Try again.",
};

// What happened, by the problem's slug, where the status alone would mislead.
const BY_SLUG = {
  "chat-not-found": {
    title: "Chat not found",
    advice: "This chat no longer exists: it was deleted, perhaps in another tab. Pick another chat or start a new one.",
  },
  "message-not-found": {
    title: "Message not found",
    advice: "That message is no longer in this chat, perhaps changed in another tab. Reload the chat and try again.",
  },
  "reply-not-found": {
    title: "The reply was lost",
    advice:
      "Your question is stored, but no reply to it was: the language model failed, or the server stopped, " +
      "while it was written. Retry to ask it again.",
  },
  "chat-moved-on": { title: "The chat has moved on", advice: "Other messages came since. Send your question again." },
  "llm-unavailable": {
    title: "The language model is unreachable",
    advice: "chatkeep cannot reach its model server. Check that it is running, then try again.",
  },
  "llm-circuit-open": {
    title: "The language model is failing",
    advice: "It failed several times in a row, so chatkeep waits a little before asking it again.",
  },
  "owner-busy": {
    title: "Too many of your replies at once",
    advice: "Wait for one of your replies to finish.",
  },
};

const TITLES = {
  network: "Can't reach chatkeep",
  401: "API key needed",
  404: "Not found",
};

/** {title, advice, detail} for `error`: what a person reading the notice needs. */
export function describe(error) {
  if (!error || typeof error.status !== "number") {
    return { title: "Something went wrong on this page", advice: "Reload the page and try again.", detail: "" };
  }
  const kind = error.network ? "network" : error.status;
  const known = error.network ? undefined : BY_SLUG[error.slug];
  const title = known?.title ?? TITLES[kind] ?? (error.title || `Error ${error.status}`);
  let advice = known?.advice ?? ADVICE[kind] ?? ADVICE[Math.floor(error.status / 100) * 100] ?? "Try again.";
  if (error.network && !navigator.onLine) advice = "This device is offline. Reconnect, then try again.";
  if (error.status === 429 || error.status === 503) advice += ` ${waitAdvice(error.retryAfter)}`;
  if (error.status === 401 && error.detail.includes("not valid")) {
    advice = "That API key was refused. Check it and enter it again.";
  }
  // A 401's detail speaks to API clients (headers); the advice says it for people.
  const detail = error.detail && error.detail !== title && !error.needsKey ? error.detail : "";
  return { title, advice, detail };
}

function waitAdvice(seconds) {
  if (seconds === null || seconds === undefined) return "Try again in a moment.";
  return `Try again in ${seconds} second${seconds === 1 ? "" : "s"}.`;
}

/**
 * A notice for `error`, announced as an alert. `actions` are {label, run} buttons; `retry`
 * adds a Retry button that waits out any Retry-After first.
 */
export function problemNotice(error, { retry = null, actions = [] } = {}) {
  const { title, advice, detail } = describe(error);
  const buttons = actions.map(({ label, run }) =>
    h("button", { type: "button", className: "button", text: label, on: { click: run } }),
  );
  if (retry && !error?.needsKey) buttons.unshift(retryButton(error, retry)); // a new key reloads all
  return h(
    "div",
    { className: "notice notice-error", attrs: { role: "alert" } },
    h("p", { className: "notice-title", text: title }),
    h("p", { text: advice }),
    detail ? h("p", { className: "notice-detail", text: detail }) : null,
    error?.requestId ? h("p", { className: "notice-id", text: `Request id: ${error.requestId}` }) : null,
    buttons.length ? h("div", { className: "notice-actions" }, buttons) : null,
  );
}

function retryButton(error, retry) {
  const button = h("button", { type: "button", className: "button", text: "Retry", on: { click: () => retry() } });
  let left = error?.retryAfter ?? 0;
  if (left > 0) {
    button.disabled = true;
    const tick = () => {
      button.textContent = left > 0 ? `Retry in ${left} s` : "Retry";
      button.disabled = left > 0;
      left -= 1;
      if (left >= 0) setTimeout(tick, 1000);
    };
    tick();
  }
  return button;
}
