// The open chat's messages: newest first from the API, drawn oldest at the top, older pages
// fetched as the reader scrolls up (keeping what they read in place), new ones added at the
// bottom while the view follows them if it was already at the bottom.

import { setControlsBusy } from "./branches.js";
import { byId, h } from "./dom.js";
import { OFFLINE_MODEL, messageElement } from "./messages.js";
import { problemNotice } from "./problems.js";

const PAGE_SIZE = 30;
const NEAR_BOTTOM_PX = 80;
const MOST_OLDER_PAGES = 200; // how far back `reveal` looks for a message

export class Conversation {
  constructor(api, { onOffline, onError }) {
    this.api = api;
    this.onOffline = onOffline;
    this.onError = onError;
    this.scroller = byId("messages-scroll");
    this.list = byId("messages");
    this.status = byId("history-status");
    this.welcome = byId("welcome");
    this.chatId = null;
    this.oldestId = null;
    this.hasMore = false;
    this.loading = null;
    this.generation = 0; // bumped on every show(): answers for an earlier chat are dropped
    this.actions = null; // what each message's controls do (branches.js), given by the page
    this.busy = false; // a turn of this chat runs: the controls are disabled
    new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && this.loadOlder(), {
      root: this.scroller,
      rootMargin: "300px 0px 0px 0px",
    }).observe(byId("history-start"));
  }

  /** Show the chat `chatId` (null: a new, empty chat); answers its newest messages. */
  async show(chatId) {
    this.generation += 1;
    this.chatId = chatId;
    this.oldestId = null;
    this.hasMore = chatId !== null;
    this.loading = null;
    this.list.replaceChildren();
    this.status.replaceChildren();
    this.welcome.hidden = chatId !== null;
    if (chatId === null) return [];
    return (await this.loadOlder()) ?? [];
  }

  /** The chat `chatId` was just created here: it has nothing older to fetch. */
  started(chatId) {
    this.generation += 1;
    this.chatId = chatId;
    this.oldestId = null;
    this.hasMore = false;
    this.loading = null;
  }

  /** Disable the messages' controls while a turn of the chat runs, enable them after. */
  setBusy(busy) {
    this.busy = busy;
    setControlsBusy(this.list, busy);
  }

  /** The drawn message `messageId` of the chat `chatId`, fetching older pages until it is; null when gone. */
  async reveal(chatId, messageId) {
    for (let pages = 0; pages <= MOST_OLDER_PAGES; pages++) {
      if (this.chatId !== chatId) return null; // another chat was opened meanwhile
      const article = this.list.querySelector(`[data-id="${CSS.escape(messageId)}"]`);
      if (article !== null) return article;
      if (!this.hasMore && !this.loading) return null;
      await this.loadOlder();
    }
    return null;
  }

  get empty() {
    return this.list.childElementCount === 0;
  }

  /** Add `element` (a message or a reply) at the bottom. */
  append(element) {
    const follow = this.atBottom();
    this.welcome.hidden = true;
    this.list.append(element);
    if (follow) this.toBottom();
  }

  noticeMessage(message) {
    if (message.role === "assistant" && message.model === OFFLINE_MODEL) this.onOffline();
  }

  /** Keep the newest text in view while a reply grows, if the reader was following it. */
  following(change) {
    const follow = this.atBottom();
    change();
    if (follow) this.toBottom();
  }

  atBottom() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    return scrollHeight - scrollTop - clientHeight < NEAR_BOTTOM_PX;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  loadOlder() {
    if (!this.hasMore || this.loading) return this.loading;
    const generation = this.generation;
    this.status.replaceChildren(h("span", { className: "loading", text: "Loading messages…" }));
    this.loading = this.api
      .listMessages(this.chatId, { limit: PAGE_SIZE, after: this.oldestId })
      .then((page) => {
        if (generation !== this.generation) return null;
        this.prepend(page);
        return page.data;
      })
      .catch((error) => {
        if (generation !== this.generation) return null;
        this.status.replaceChildren(problemNotice(error, { retry: () => this.loadOlder() }));
        this.onError(error);
        return null;
      })
      .finally(() => {
        if (generation === this.generation) this.loading = null;
      });
    return this.loading;
  }

  prepend(page) {
    const first = this.oldestId === null;
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.status.replaceChildren();
    this.oldestId = page.last_id ?? this.oldestId;
    this.hasMore = page.has_more;
    const older = [...page.data].reverse().map((message) => {
      this.noticeMessage(message);
      return messageElement(message, this.actions);
    });
    this.list.prepend(...older);
    if (first) this.toBottom();
    else this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    if (!this.hasMore && !this.empty) {
      this.status.replaceChildren(h("p", { className: "history-start", text: "Start of the conversation" }));
    }
    // The first pages may not fill the view; the observer fires only on changes, so look again.
    if (this.hasMore && this.scroller.scrollTop < 300) setTimeout(() => this.loadOlder(), 0);
  }
}
