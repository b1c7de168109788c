// The sidebar's chats: the latest active first (a new message or a change moves a chat to the
// top), under a heading per day (chat-groups.js), the next page fetched as the end of the list
// comes into view. Each chat is a link to `#<chat id>`, so the browser's history, a reload and a
// bookmark all reopen it.

import { regroup } from "./chat-groups.js";
import { byId, h, timeElement } from "./dom.js";
import { problemNotice } from "./problems.js";

const PAGE_SIZE = 30;
export const UNTITLED = "Untitled chat";

export class ChatList {
  constructor(api, { onError }) {
    this.api = api;
    this.onError = onError;
    this.list = byId("chat-list");
    this.status = byId("chat-list-status");
    this.entries = new Map();
    this.cursor = null; // where the last page ended: a place that stays put while chats move
    this.hasMore = true;
    this.loading = null;
    this.selected = null;
    new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && this.loadMore(), {
      root: byId("chat-scroll"),
      rootMargin: "0px 0px 200px 0px",
    }).observe(byId("chat-list-end"));
  }

  /** Start again from the newest chat (after an API key was entered). */
  reload() {
    this.list.replaceChildren();
    this.entries.clear();
    this.cursor = null;
    this.hasMore = true;
    this.loading = null;
    return this.loadMore();
  }

  loadMore() {
    if (!this.hasMore || this.loading) return this.loading;
    this.status.replaceChildren(h("span", { className: "loading", text: "Loading chats…" }));
    this.loading = this.api
      .listChats({ limit: PAGE_SIZE, after: this.cursor })
      .then((page) => this.addPage(page))
      .catch((error) => {
        this.status.replaceChildren(problemNotice(error, { retry: () => this.loadMore() }));
        this.onError(error);
      })
      .finally(() => {
        this.loading = null;
      });
    return this.loading;
  }

  addPage(page) {
    this.cursor = page.last_cursor ?? this.cursor;
    this.hasMore = page.has_more;
    for (const chat of page.data) {
      if (!this.entries.has(chat.id)) this.list.append(this.entry(chat));
    }
    regroup(this.list);
    this.status.replaceChildren();
    if (this.entries.size === 0) {
      this.status.append(h("p", { className: "list-empty", text: "No chats yet. Ask something to start one." }));
    }
    // The page may not fill the list; the observer fires only on changes, so look again.
    const scroller = byId("chat-scroll");
    if (this.hasMore && scroller.scrollHeight <= scroller.clientHeight + 200) setTimeout(() => this.loadMore(), 0);
  }

  entry(chat) {
    const title = h("span", { className: "chat-title", text: chat.title || UNTITLED });
    const link = h("a", { className: "chat-link", href: `#${chat.id}` }, title, timeElement(chat.updated_at));
    const item = h("li", {}, link);
    item.dataset.updated = chat.updated_at;
    this.entries.set(chat.id, { item, link, title });
    if (chat.id === this.selected) link.setAttribute("aria-current", "page");
    return item;
  }

  /** A chat just created: first in the list. */
  add(chat) {
    this.status.replaceChildren();
    this.list.prepend(this.entry(chat));
    regroup(this.list);
  }

  /** `chat` was active at `when` (an ISO time: a message stored): it goes to the top, listed
   * now if it was not yet (given whole, with its title). */
  touched(chat, when) {
    const entry = this.entries.get(chat.id);
    if (entry === undefined) {
      if ("title" in chat) this.add({ ...chat, updated_at: when });
      return;
    }
    if (new Date(when) <= new Date(entry.item.dataset.updated)) return;
    entry.item.dataset.updated = when;
    entry.link.querySelector("time").replaceWith(timeElement(when));
    this.list.prepend(entry.item);
    regroup(this.list);
  }

  /** The title shown for `chatId`, or null when it is not listed (yet). */
  titleOf(chatId) {
    return this.entries.get(chatId)?.title.textContent ?? null;
  }

  update(chat) {
    const entry = this.entries.get(chat.id);
    if (entry) entry.title.textContent = chat.title || UNTITLED;
    if (entry) this.touched(chat, chat.updated_at);
  }

  remove(chatId) {
    this.entries.get(chatId)?.item.remove();
    this.entries.delete(chatId);
    regroup(this.list);
  }

  select(chatId) {
    this.entries.get(this.selected)?.link.removeAttribute("aria-current");
    this.selected = chatId;
    this.entries.get(chatId)?.link.setAttribute("aria-current", "page");
  }
}
