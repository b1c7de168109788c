// Search across the owner's chats, from the box above the chat list: while it holds words, the
// list shows the messages that hold all of them (GET /search), best first, each with its chat's
// title and a snippet whose matched words are <mark>ed. Choosing one opens its chat, fetches
// older pages until the message is drawn, scrolls to it and highlights it for a moment.
//
// A snippet comes as parts of plain text, so it is drawn as text nodes and <mark> elements:
// whatever a message says is shown as characters, never parsed as HTML.

import { announce, byId, h, timeElement } from "./dom.js";
import { problemNotice } from "./problems.js";

const PAGE_SIZE = 20;
const TYPING_PAUSE_MS = 250;
const HIGHLIGHT_MS = 2500;
const UNTITLED = "Untitled chat";

export class Search {
  /**
   * `openChat(chatId)` opens a chat and settles once its newest messages are drawn;
   * `conversation` is the open chat's Conversation, which fetches older pages; `offBranch(chatId,
   * messageId)` is told of a result whose message is no longer on its chat's current branch.
   */
  constructor(api, { conversation, openChat, offBranch, onError }) {
    this.api = api;
    this.conversation = conversation;
    this.openChat = openChat;
    this.offBranch = offBranch;
    this.onError = onError;
    this.input = byId("search-input");
    this.results = byId("search-results");
    this.status = byId("search-status");
    this.query = "";
    this.cursor = null;
    this.generation = 0; // bumped on every new query: answers for an earlier one are dropped
    this.timer = null;
    this.listen();
  }

  listen() {
    this.input.addEventListener("input", () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.run(this.input.value), TYPING_PAUSE_MS);
    });
    byId("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearTimeout(this.timer);
      this.run(this.input.value);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || !this.input.value) return;
      event.stopPropagation(); // the page's own Escape closes the drawer; this one clears the search
      this.input.value = "";
      this.run("");
    });
  }

  /** Search for `text`, or show the chat list again when it holds nothing. */
  run(text) {
    const query = text.trim();
    if (query === this.query) return;
    this.generation += 1;
    this.query = query;
    this.cursor = null;
    this.results.replaceChildren();
    this.status.replaceChildren();
    this.showResults(query !== "");
    if (query !== "") this.loadPage();
  }

  showResults(shown) {
    this.results.hidden = !shown;
    this.status.hidden = !shown;
    byId("chat-list").hidden = shown;
    byId("chat-list-status").hidden = shown;
  }

  async loadPage() {
    const generation = this.generation;
    this.status.replaceChildren(h("span", { className: "loading", text: "Searching…" }));
    let page;
    try {
      page = await this.api.json("GET", `/search?${searchParams(this.query, this.cursor)}`);
    } catch (error) {
      if (generation !== this.generation) return;
      this.status.replaceChildren(problemNotice(error, { retry: () => this.loadPage() }));
      this.onError(error);
      return;
    }
    if (generation !== this.generation) return;
    this.results.append(...page.data.map((hit) => this.entry(hit)));
    this.cursor = page.next_cursor;
    this.status.replaceChildren();
    if (page.has_more) {
      this.status.append(h("button", { className: "button button-quiet", type: "button", text: "More results", on: { click: () => this.loadPage() } }));
    } else if (this.results.childElementCount === 0) {
      this.status.append(h("p", { className: "list-empty", text: "No message holds all of these words." }));
    }
    announce(`${this.results.childElementCount}${page.has_more ? " or more" : ""} results`);
  }

  entry(hit) {
    const title = h("span", { className: "chat-title", text: hit.chat_title || UNTITLED });
    const snippet = h("span", { className: "search-snippet" }, hit.snippet.map(snippetPart));
    const link = h(
      "a",
      { className: "search-hit", href: `#${encodeURIComponent(hit.chat_id)}` },
      h("span", { className: "search-hit-head" }, title, timeElement(hit.created_at)),
      snippet,
    );
    link.dataset.messageId = hit.message_id;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      this.open(hit);
    });
    return h("li", {}, link);
  }

  /** Open the hit's chat at its message. */
  async open(hit) {
    await this.openChat(hit.chat_id);
    const article = await this.conversation.reveal(hit.chat_id, hit.message_id);
    if (article === null) {
      // Found on the branch that was current then: a regenerate or an edit has made another one
      // current since, or the message was deleted.
      this.offBranch(hit.chat_id, hit.message_id);
      return;
    }
    article.scrollIntoView({ block: "center" });
    article.classList.add("search-target");
    setTimeout(() => article.classList.remove("search-target"), HIGHLIGHT_MS);
    announce(`Showing the message in ${hit.chat_title || UNTITLED}`);
  }
}

function snippetPart(part) {
  return part.match ? h("mark", { text: part.text }) : part.text;
}

function searchParams(query, cursor) {
  const params = new URLSearchParams({ q: query, limit: String(PAGE_SIZE) });
  if (cursor) params.set("after", cursor);
  return params.toString();
}
