// The summary panel: the chat's exact counts, its summary and highlights, and a refresh.
//
// The counts are exact on every call; the summary text is the model's (cached by the server and
// brought up to date when messages came since), and ?refresh=true writes it anew when messages
// came since (with nothing new, the server answers the cached one and asks the model nothing).

import { byId, fullTime, h } from "./dom.js";
import { problemNotice } from "./problems.js";

export class SummaryPanel {
  constructor(api, { onError, onClose }) {
    this.api = api;
    this.onError = onError;
    this.panel = byId("summary");
    this.body = byId("summary-body");
    this.refreshButton = byId("summary-refresh");
    this.chatId = null;
    this.shown = null; // the chat whose summary the body shows
    this.request = 0;
    this.refreshButton.addEventListener("click", () => this.load({ refresh: true }));
    byId("summary-close").addEventListener("click", () => onClose());
  }

  get open() {
    return !this.panel.hidden;
  }

  show(chatId) {
    this.panel.hidden = false;
    this.chatId = chatId;
    return this.load();
  }

  hide() {
    this.panel.hidden = true;
  }

  /** Fetch the summary again, if the panel is open (a turn ended, another chat was opened). */
  update(chatId) {
    if (!this.open) return null;
    if (chatId === null) {
      this.hide();
      return null;
    }
    this.chatId = chatId;
    return this.load();
  }

  async load({ refresh = false } = {}) {
    const request = ++this.request;
    this.panel.setAttribute("aria-busy", "true");
    this.refreshButton.disabled = true;
    const loading = h("p", { className: "loading", text: refresh ? "Summarizing again…" : "Loading the summary…" });
    if (this.shown === this.chatId) this.body.prepend(loading);
    else this.body.replaceChildren(loading);
    try {
      const summary = await this.api.summary(this.chatId, { refresh });
      if (request === this.request) {
        this.shown = summary.chat_id;
        this.body.replaceChildren(...summaryContent(summary));
      }
    } catch (error) {
      if (request === this.request) {
        this.shown = null;
        this.body.replaceChildren(problemNotice(error, { retry: () => this.load({ refresh }) }));
        this.onError(error);
      }
    } finally {
      if (request === this.request) {
        this.panel.removeAttribute("aria-busy");
        this.refreshButton.disabled = false;
      }
    }
  }
}

function summaryContent(summary) {
  const count = (name, label, value) =>
    h(
      "div",
      { className: "count" },
      h("dt", { text: label }),
      h("dd", { text: String(value), attrs: { "data-count": name } }),
    );
  const parts = [
    h(
      "dl",
      { className: "counts" },
      count("messages", "Messages", summary.message_count),
      count("user", "From you", summary.user_message_count),
      count("assistant", "Replies", summary.assistant_message_count),
    ),
  ];
  if (summary.first_message_at) {
    parts.push(
      h(
        "dl",
        { className: "span" },
        h("dt", { text: "First message" }),
        h("dd", { text: fullTime(summary.first_message_at) }),
        h("dt", { text: "Last message" }),
        h("dd", { text: fullTime(summary.last_message_at) }),
      ),
    );
  }
  parts.push(h("h3", { text: "Summary" }));
  parts.push(h("p", { className: "summary-text", text: summary.summary ?? noSummary(summary) }));
  if (summary.highlights.length) {
    parts.push(h("h3", { text: "Highlights" }));
    parts.push(h("ul", { className: "highlights" }, summary.highlights.map((text) => h("li", { text }))));
  }
  if (summary.stale) {
    parts.push(
      h("p", {
        className: "notice notice-info",
        text: "This summary does not cover the newest messages yet: the model could not be asked. "
          + "Refresh to try again.",
      }),
    );
  }
  return parts;
}

function noSummary(summary) {
  return summary.message_count === 0
    ? "Nothing to summarize yet: send a message first."
    : "No summary yet. Refresh to write one.";
}
