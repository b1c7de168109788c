// The chat page: wires the API to the sidebar, the conversation, the composer, the summary
// panel and the dialogs, and owns the one piece of state they share: which chat is open and
// which turns are running.
//
// The open chat is the URL's fragment (#<chat id>), so reloads, bookmarks and the back button
// work; "New chat" is no fragment, and the chat is created, titled after its first question,
// when that question is sent. A turn goes on while another chat is shown; coming back shows
// its reply where it has got to. A regenerate or an edit is a turn of its own kind, which starts
// a branch; the arrows of a message with other versions make another branch current.

import { Api, newIdempotencyKey } from "./api.js";
import { openEditor } from "./branches.js";
import { ChatList, UNTITLED } from "./chat-list.js";
import { Composer } from "./composer.js";
import { Conversation } from "./conversation.js";
import { announce, byId, h, returnFocus } from "./dom.js";
import { KeyDialog } from "./key-dialog.js";
import {
  ReplyView,
  confirmQuestion,
  messageOf,
  offerToGoOn,
  pendingQuestion,
  redrawMessage,
  unsentQuestion,
  withdrawOffers,
} from "./messages.js";
import { ModelPicker } from "./models.js";
import { problemNotice } from "./problems.js";
import { PromptEditor } from "./prompt-editor.js";
import { Search } from "./search.js";
import { SummaryPanel } from "./summary.js";
import { Transfer } from "./export.js";
import { Turn } from "./turn.js";

const TITLE_CHARS = 60;
const CONTINUE = "Please continue from where you stopped.";
// What the server refuses in a title: control characters, line breaks, and the marks that reorder text.
const NOT_IN_TITLES = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;
const NARROW = window.matchMedia("(max-width: 899px)");

class ChatPage {
  constructor() {
    this.api = new Api();
    this.chat = null; // the open chat; null: a new one, not created until its first question
    this.generation = 0; // bumped whenever another chat opens: late answers for the last are dropped
    this.turns = new Map(); // chat id -> {turn, question, reply, unsent, branched} of its running turn
    this.switching = null; // the chat whose current branch is being changed
    this.dismissedOffline = false;
    const onError = (error) => this.noticeError(error);
    this.chats = new ChatList(this.api, { onError });
    this.conversation = new Conversation(this.api, { onError, onOffline: () => this.showOfflineNotice() });
    this.actions = {
      busy: () => this.chat !== null && this.busyChat(this.chat.id),
      regenerate: (article) => this.regenerate(article),
      edit: (article) => this.startEdit(article),
      switchTo: (article, messageId) => this.switchBranch(article, messageId),
    };
    this.conversation.actions = this.actions;
    this.composer = new Composer({ onSend: (text, images) => this.send(text, images), onStop: () => this.stop() });
    this.summary = new SummaryPanel(this.api, { onError, onClose: () => this.toggleSummary(false) });
    this.search = new Search(this.api, {
      conversation: this.conversation,
      openChat: (id) => this.openAt(id),
      offBranch: (chatId, messageId) => this.offerBranchOf(chatId, messageId),
      onError,
    });
    this.keys = new KeyDialog(this.api, { onChange: () => this.restart(), onClose: () => this.composer.refocus() });
    this.models = new ModelPicker(this.api, { onChange: (chat) => this.changed(chat), onError });
    this.prompt = new PromptEditor(this.api, { onChange: (chat) => this.changed(chat), onError });
    const onImported = (chatIds) => this.imported(chatIds);
    this.transfer = new Transfer(this.api, { chatId: () => this.chat?.id, onImported, onError });
    this.listen();
  }

  start() {
    this.chats.loadMore();
    this.models.load();
    this.route();
  }

  listen() {
    window.addEventListener("hashchange", () => this.route());
    byId("new-chat").addEventListener("click", () => this.newChat());
    byId("rename-button").addEventListener("click", () => this.startRename());
    byId("rename-cancel").addEventListener("click", () => this.endRename());
    byId("rename-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.rename();
    });
    byId("delete-button").addEventListener("click", () => this.confirmDelete());
    byId("delete-dialog").addEventListener("close", () => this.deleteConfirmed());
    byId("summary-toggle").addEventListener("click", () => this.toggleSummary(!this.summary.open));
    byId("sidebar-open").addEventListener("click", () => this.toggleDrawer(true));
    byId("sidebar-close").addEventListener("click", () => this.toggleDrawer(false));
    byId("backdrop").addEventListener("click", () => this.toggleDrawer(false));
    byId("offline-dismiss").addEventListener("click", () => {
      this.dismissedOffline = true;
      byId("offline-notice").hidden = true;
      this.composer.focus();
    });
    byId("skip-link").addEventListener("click", (event) => {
      event.preventDefault(); // its #prompt is no chat
      this.composer.focus();
    });
    byId("chat-list").addEventListener("click", (event) => {
      const link = event.target.closest("a");
      if (!link) return;
      this.toggleDrawer(false);
      if (decodeURIComponent(link.hash.slice(1)) === this.chat?.id) this.composer.focus(); // no hashchange
      else this.focusOnOpen = true;
    });
    document.addEventListener("keydown", (event) => this.escape(event));
  }

  escape(event) {
    if (event.key !== "Escape" || document.querySelector("dialog[open]")) return;
    if (byId("app").classList.contains("drawer-open")) {
      this.toggleDrawer(false);
    } else if (!byId("rename-form").hidden) {
      this.endRename();
    } else if (this.summary.open) {
      this.toggleSummary(false);
    }
  }

  /** Show the chat the URL names. */
  async route() {
    const chatId = decodeURIComponent(location.hash.slice(1)) || null;
    if (chatId !== null && chatId === this.chat?.id) return;
    this.toggleDrawer(false);
    this.endRename({ focus: false });
    byId("chat-notice").replaceChildren();
    this.chats.select(chatId);
    if (chatId === null) {
      this.showChat(null);
      this.toggleSummary(false);
      await this.conversation.show(null);
    } else {
      await this.open(chatId);
    }
    if (this.focusOnOpen) this.composer.focus();
    this.focusOnOpen = false;
  }

  async open(chatId) {
    const generation = ++this.generation;
    this.showChat({ id: chatId, title: this.chats.titleOf(chatId) ?? "Loading…" });
    let chat;
    try {
      chat = await this.api.getChat(chatId);
    } catch (error) {
      if (generation !== this.generation) return;
      await this.conversation.show(null);
      this.conversation.welcome.hidden = true;
      byId("chat-title").textContent = error.status === 404 ? "Chat not found" : "Chat unavailable";
      byId("chat-notice").replaceChildren(problemNotice(error, this.chatErrorOptions(error, () => this.reopen())));
      byId("chat-actions").hidden = true;
      this.noticeError(error);
      return;
    }
    if (generation !== this.generation) return;
    this.chat = chat;
    this.showChat(chat);
    this.chats.update(chat);
    const newest = await this.conversation.show(chatId);
    if (generation !== this.generation) return;
    this.attachTurn(chatId, newest);
    this.summary.update(chatId);
  }

  /** Open `chatId` from a search result; settles once its newest messages are drawn. */
  async openAt(chatId) {
    this.toggleDrawer(false);
    if (chatId !== this.chat?.id) history.pushState(null, "", `#${encodeURIComponent(chatId)}`);
    await this.route();
  }

  /** Chats were imported: listed anew, and the open one drawn again if it was among them. */
  imported(chatIds) {
    this.chats.reload();
    if (this.chat !== null && chatIds.includes(this.chat.id) && !this.turns.has(this.chat.id)) this.reopen();
  }

  reopen() {
    this.chat = null;
    return this.route();
  }

  chatErrorOptions(error, retry) {
    if (error.status === 404) return { actions: [{ label: "Start a new chat", run: () => this.newChat() }] };
    if (error.needsKey) return { actions: [{ label: "Enter an API key", run: () => this.keys.askFor(error) }] };
    return { retry };
  }

  showChat(chat) {
    const title = chat === null ? "New chat" : chat.title || UNTITLED;
    byId("chat-title").textContent = title;
    document.title = chat === null ? "chatkeep" : `${title} · chatkeep`;
    byId("chat-actions").hidden = chat === null;
    this.chat = chat;
    this.models.show(chat);
    this.prompt.show(chat);
    this.setBusy(chat !== null && this.turns.has(chat.id));
  }

  /** Whether a turn of `chatId` runs, or its branch changes: its messages' controls wait. */
  busyChat(chatId) {
    return this.turns.has(chatId) || this.switching === chatId;
  }

  /** A turn of the open chat runs (`busy`) or not: Send or Stop, the messages' controls. */
  setBusy(busy) {
    this.composer.setBusy(busy);
    this.conversation.setBusy(this.chat !== null && (busy || this.switching === this.chat.id));
  }

  /** The open chat's model or system prompt changed. */
  changed(chat) {
    this.chats.update(chat);
    if (this.chat?.id === chat.id) this.chat = chat;
  }

  newChat() {
    if (location.hash) history.pushState(null, "", location.pathname + location.search);
    this.route();
    this.composer.focus();
  }

  restart() {
    this.chats.reload();
    this.chat = null;
    this.route();
  }

  noticeError(error) {
    if (error?.needsKey) {
      this.keys.needed();
      this.keys.askFor(error);
    }
  }

  // Turns

  async send(text, images = []) {
    let chat = this.chat;
    this.composer.clear();
    if (chat === null) {
      try {
        const created = { title: titleFor(text), model: this.models.model };
        chat = await this.api.createChat(created, { idempotencyKey: newIdempotencyKey() });
      } catch (error) {
        this.composer.restore(text, images);
        this.composer.showNotice(problemNotice(error));
        this.noticeError(error);
        return;
      }
      this.chats.add(chat);
      this.chats.select(chat.id);
      this.generation += 1;
      this.showChat(chat);
      this.conversation.started(chat.id);
      history.pushState(null, "", `#${encodeURIComponent(chat.id)}`);
    }
    this.startTurn(chat.id, new Turn(this.api, chat.id, text, null, { images }), pendingQuestion(text, images));
  }

  /** Follow the turn answering the chat's newest message, a question left without a reply. */
  followTurn(chatId, question) {
    this.startTurn(chatId, Turn.following(this.api, chatId, question.id, null), null);
  }

  /** Run `turn` of `chatId` below its messages; `unsent(error)`, when given, handles its
   * failure before the server stored its question (a regenerate or an edit refused). */
  startTurn(chatId, turn, question, { unsent = null } = {}) {
    withdrawOffers(this.conversation.list);
    const running = { turn, question, reply: this.replyView(), unsent, branched: unsent !== null };
    turn.view = this.turnView(chatId, running);
    this.turns.set(chatId, running);
    if (question) this.conversation.append(question);
    this.conversation.append(running.reply.element);
    this.setBusy(true);
    turn.run();
  }

  replyView() {
    return new ReplyView({ around: (draw) => this.conversation.following(draw), actions: this.actions });
  }

  /** Show the running turn of `chatId` below its messages, or follow an unanswered question. */
  attachTurn(chatId, newest) {
    const running = this.turns.get(chatId);
    if (running === undefined) {
      const [last, question] = newest;
      if (last?.role === "user") this.followTurn(chatId, last);
      if (last?.status === "incomplete" && question?.role === "user") {
        const article = this.conversation.list.querySelector(`[data-id="${CSS.escape(last.id)}"]`);
        if (article) this.offerToGoOn(chatId, article);
      }
      return;
    }
    const id = running.turn.userMessageId;
    const stored = id !== null && this.conversation.list.querySelector(`[data-id="${CSS.escape(id)}"]`);
    if (running.question && !stored) this.conversation.append(running.question);
    this.conversation.append(running.reply.element);
    this.setBusy(true);
  }

  turnView(chatId, running) {
    return {
      question: (message) => {
        if (running.question) confirmQuestion(running.question, message, this.actions);
        this.chats.touched({ ...(this.chat?.id === chatId ? this.chat : {}), id: chatId }, message.created_at);
      },
      progress: (text) => running.reply.show(text),
      reconnecting: (flag) => running.reply.reconnecting(flag),
      answered: (message) => {
        running.reply.finish(message);
        this.chats.touched({ id: chatId }, message.created_at);
        this.turnEnded(chatId);
        this.conversation.noticeMessage(message);
        if (message.status !== "incomplete") return;
        announce(message.incomplete_reason === "stopped" ? "Reply stopped." : "Reply cut short.");
        if (running.reply.element.previousElementSibling?.classList.contains("message-user")) {
          this.offerToGoOn(chatId, running.reply.element);
        }
      },
      failed: (error) => this.turnFailed(chatId, running, error),
      stopFailed: (error) => {
        this.composer.stopAgain();
        this.composer.showNotice(problemNotice(error));
      },
    };
  }

  turnEnded(chatId) {
    this.turns.delete(chatId);
    if (chatId === this.chat?.id) {
      this.setBusy(false);
      this.summary.update(chatId);
    }
  }

  turnFailed(chatId, running, error) {
    this.turnEnded(chatId);
    this.noticeError(error);
    const { turn } = running;
    if (turn.userMessageId === null && running.unsent !== null) {
      running.question?.remove();
      running.reply.element.remove();
      running.unsent(error);
      return;
    }
    if (running.branched) this.showVersions(chatId);
    if (turn.userMessageId === null && running.question) {
      if (error.status === 413 || error.status === 422) {
        // Refused as written: nothing was stored, so the text goes back to be changed.
        running.question.remove();
        running.reply.element.remove();
        this.composer.restore(turn.content, turn.images);
        this.composer.showNotice(problemNotice(error));
        return;
      }
      unsentQuestion(running.question);
    }
    const actions = [];
    if (error.needsKey) actions.push({ label: "Enter an API key", run: () => this.keys.askFor(error) });
    if (error.slug === "chat-not-found") {
      this.chats.remove(chatId);
      actions.push({ label: "Start a new chat", run: () => this.newChat() });
    }
    const retry = error.slug !== "chat-not-found" ? () => this.retryTurn(chatId, running) : null;
    running.reply.fail(error, { retry, actions });
  }

  /** Continue or Retry below `article`, the newest reply of `chatId`, cut short: Retry
   * regenerates it, the cut-short reply staying as its other version. */
  offerToGoOn(chatId, article) {
    const goOn = () => {
      if (this.chat?.id !== chatId || this.busyChat(chatId)) return;
      this.startTurn(chatId, new Turn(this.api, chatId, CONTINUE, null), pendingQuestion(CONTINUE));
    };
    offerToGoOn(article, { onContinue: goOn, onRetry: () => this.regenerate(article) });
  }

  retryTurn(chatId, running) {
    if (this.turns.has(chatId)) return;
    const reply = this.replyView();
    running.reply.element.replaceWith(reply.element);
    running.reply = reply;
    this.turns.set(chatId, running);
    this.setBusy(true);
    running.turn.retry();
  }

  stop() {
    this.turns.get(this.chat?.id)?.turn.stop();
  }

  // Branches: regenerate, edit, the arrows between versions

  /** A new reply to the question of `article` (a reply, or a question left without one): what
   * followed the question leaves the page (the server keeps it as a branch) for the new reply. */
  regenerate(article) {
    const chatId = this.chat?.id;
    const message = messageOf(article);
    if (chatId === undefined || message === undefined || this.busyChat(chatId)) return;
    byId("chat-notice").replaceChildren();
    const question = message.role === "user" ? article : questionAbove(article);
    removeFrom(question === null ? article : question.nextElementSibling);
    const again = () => this.again(chatId, message.id, (shown) => this.regenerate(shown));
    const unsent = (error) => this.branchRefused(chatId, error, again);
    this.startTurn(chatId, Turn.regenerating(this.api, chatId, message.id, null), null, { unsent });
    this.composer.focus(); // the button pressed is gone (or hidden) while the reply is written
  }

  /** Open the editor on the question `article`, holding `text` (its own, or what a failed Save sent). */
  startEdit(article, text = messageOf(article)?.content, notice = null) {
    const chatId = this.chat?.id;
    if (chatId === undefined || text === undefined) return;
    openEditor(article, text, {
      busy: () => this.busyChat(chatId),
      notice,
      onSave: (content) => this.edit(chatId, article, content),
    });
  }

  /** Ask `content` in place of the question `article`, on a new branch: the question and what
   * followed it leave the page (the server keeps them as a branch) for the new one and its reply. */
  edit(chatId, article, content) {
    const message = messageOf(article);
    if (this.chat?.id !== chatId || message === undefined || this.busyChat(chatId)) return;
    byId("chat-notice").replaceChildren();
    const images = message.images ?? [];
    removeFrom(article);
    const unsent = (error) => this.editRefused(chatId, message.id, content, error);
    const turn = Turn.editing(this.api, chatId, message.id, content, images, null);
    this.startTurn(chatId, turn, pendingQuestion(content, images), { unsent });
    this.composer.focus(); // the editor is gone
  }

  /** A regenerate was refused: the chat's messages as the server has them, and why. */
  async branchRefused(chatId, error, again) {
    if (this.chat?.id !== chatId) return; // drawn as it is when it is next opened
    if (error.slug !== "chat-not-found" && !(await this.reloadMessages(chatId))) return;
    byId("chat-notice").replaceChildren(problemNotice(error, this.branchErrorOptions(error, again)));
  }

  /** An edit was refused: the chat's messages as the server has them, the editor open again with
   * the text sent and why it failed (Save tries again). */
  async editRefused(chatId, messageId, content, error) {
    if (error.slug === "chat-not-found") {
      this.branchRefused(chatId, error, null);
      return;
    }
    if (!(await this.reloadMessages(chatId))) return;
    const article = await this.conversation.reveal(chatId, messageId);
    const notice = problemNotice(error, this.branchErrorOptions(error, null));
    if (article === null) {
      byId("chat-notice").replaceChildren(notice);
      return;
    }
    this.startEdit(article, content, notice);
    article.scrollIntoView({ block: "nearest" });
  }

  /** What a notice offers when a regenerate, an edit or a change of branch failed: `again`
   * (null: nothing, as for an edit, whose Save tries again) when trying again may help. */
  branchErrorOptions(error, again) {
    if (error.slug === "chat-not-found") {
      this.chats.remove(this.chat?.id);
      return { actions: [{ label: "Start a new chat", run: () => this.newChat() }] };
    }
    if (error.needsKey) return { actions: [{ label: "Enter an API key", run: () => this.keys.askFor(error) }] };
    return again !== null && retryable(error) ? { retry: again } : {};
  }

  /** Run `act` on the message `messageId` of `chatId` again, once it is drawn. */
  async again(chatId, messageId, act) {
    if (this.chat?.id !== chatId) return;
    byId("chat-notice").replaceChildren();
    const article = await this.conversation.reveal(chatId, messageId);
    if (article !== null) act(article);
  }

  /** Make the branch through `messageId` (another version of `article`'s message) current, then
   * show the chat's messages as they now are, that version in view. */
  async switchBranch(article, messageId) {
    const chatId = this.chat?.id;
    if (chatId === undefined || this.busyChat(chatId)) return;
    const generation = this.generation;
    const arrow = [...document.activeElement.classList].find((name) => name.startsWith("siblings-")) ?? null;
    byId("chat-notice").replaceChildren();
    this.switching = chatId;
    this.setBusy(false); // no turn runs; the messages' controls wait for the switch
    let chat;
    try {
      chat = await this.api.switchBranch(chatId, messageId);
    } catch (error) {
      this.switching = null;
      if (generation !== this.generation) return;
      this.setBusy(this.turns.has(chatId));
      this.noticeError(error);
      const again = () => this.again(chatId, messageOf(article)?.id, (shown) => this.switchBranch(shown, messageId));
      byId("chat-notice").replaceChildren(problemNotice(error, this.branchErrorOptions(error, again)));
      return;
    }
    this.switching = null;
    if (generation !== this.generation) return;
    this.changed(chat);
    if (!(await this.reloadMessages(chatId))) return;
    const shown = await this.conversation.reveal(chatId, messageId);
    if (shown === null) return;
    (shown.querySelector(".siblings") ?? shown).scrollIntoView({ block: "center" });
    const arrows = [...shown.querySelectorAll(".siblings .message-action")];
    const focus = arrows.find((button) => button.classList.contains(arrow) && !button.disabled);
    (focus ?? arrows.find((button) => !button.disabled))?.focus();
    const siblings = messageOf(shown)?.siblings;
    if (siblings) announce(`Version ${siblings.index + 1} of ${siblings.ids.length}.`);
  }

  /** A message of `chatId` that is not on its current branch (a search found it before a branch was
   * made there): offer to make the branch it is on current. If it was deleted, the switch says so. */
  offerBranchOf(chatId, messageId) {
    if (this.chat?.id !== chatId) return;
    const run = () => this.switchBranch(null, messageId);
    const show = h("button", { type: "button", className: "button", text: "Show its branch", on: { click: run } });
    byId("chat-notice").replaceChildren(
      h(
        "div",
        { className: "notice notice-info", attrs: { role: "status" } },
        h("p", { text: "That message is not on the chat's current branch." }),
        h("div", { className: "notice-actions" }, show),
      ),
    );
    show.focus();
  }

  /** Draw the newest messages of `chatId` again with their versions, after a turn on a new branch
   * failed: its events drew the question (with its `siblings`, as they carry them) but no reply. */
  async showVersions(chatId) {
    let page;
    try {
      page = await this.api.listMessages(chatId, { limit: 2 });
    } catch {
      return; // shown when the chat is next drawn
    }
    if (this.chat?.id !== chatId) return;
    for (const message of page.data) {
      const article = this.conversation.list.querySelector(`[data-id="${CSS.escape(message.id)}"]`);
      if (article !== null) this.conversation.following(() => redrawMessage(article, message, this.actions));
    }
  }

  /** Draw the open chat `chatId`'s messages again, as the server now has them; false when
   * another chat was opened meanwhile. */
  async reloadMessages(chatId) {
    if (this.chat?.id !== chatId) return false;
    const generation = this.generation;
    const newest = await this.conversation.show(chatId);
    if (generation !== this.generation || this.chat?.id !== chatId) return false;
    this.attachTurn(chatId, newest);
    return true;
  }

  // The chat's header: rename, delete, summary

  startRename() {
    byId("rename-input").value = this.chat?.title ?? "";
    byId("chat-title").hidden = true;
    byId("chat-actions").hidden = true;
    byId("rename-form").hidden = false;
    byId("rename-input").select();
    byId("rename-input").focus();
  }

  endRename({ focus = true } = {}) {
    if (byId("rename-form").hidden) return;
    byId("rename-form").hidden = true;
    byId("chat-title").hidden = false;
    byId("chat-actions").hidden = this.chat === null;
    if (focus) byId("rename-button").focus();
  }

  async rename() {
    const chat = this.chat;
    const title = byId("rename-input").value.replace(NOT_IN_TITLES, "").trim() || null;
    try {
      const renamed = await this.api.updateChat(chat.id, { title });
      this.chats.update(renamed);
      if (this.chat?.id === renamed.id) this.showChat(renamed);
      this.endRename();
      announce(`Chat renamed to ${renamed.title || UNTITLED}.`);
    } catch (error) {
      byId("chat-notice").replaceChildren(problemNotice(error, this.chatErrorOptions(error, () => this.rename())));
      this.noticeError(error);
    }
  }

  confirmDelete() {
    const title = this.chat.title || UNTITLED;
    byId("delete-text").textContent = `“${title}” and all its messages will be deleted for good.`;
    byId("delete-dialog").returnValue = "";
    byId("delete-dialog").showModal();
  }

  async deleteConfirmed() {
    if (byId("delete-dialog").returnValue !== "delete") {
      returnFocus(byId("delete-button"));
      return;
    }
    const chat = this.chat;
    try {
      await this.api.deleteChat(chat.id);
    } catch (error) {
      if (error.status !== 404) {
        const options = this.chatErrorOptions(error, () => this.deleteConfirmed());
        byId("chat-notice").replaceChildren(problemNotice(error, options));
        this.noticeError(error);
        return;
      }
    }
    this.turns.delete(chat.id);
    this.chats.remove(chat.id);
    announce(`Chat “${chat.title || UNTITLED}” deleted.`);
    if (this.chat?.id === chat.id) this.newChat();
  }

  toggleSummary(open) {
    const toggle = byId("summary-toggle");
    toggle.setAttribute("aria-expanded", String(open));
    if (open && this.chat !== null) {
      this.summary.show(this.chat.id);
      byId("summary-title").focus();
    } else {
      const hadFocus = byId("summary").contains(document.activeElement);
      this.summary.hide();
      if (hadFocus) toggle.focus();
    }
  }

  toggleDrawer(open) {
    const app = byId("app");
    if (open === app.classList.contains("drawer-open")) return;
    app.classList.toggle("drawer-open", open);
    byId("backdrop").hidden = !open;
    byId("sidebar-open").setAttribute("aria-expanded", String(open));
    if (open) byId("new-chat").focus();
    else if (NARROW.matches && byId("sidebar").contains(document.activeElement)) byId("sidebar-open").focus();
  }

  showOfflineNotice() {
    if (!this.dismissedOffline) byId("offline-notice").hidden = false;
  }
}

/** The nearest question above `article` (a reply) on the page, or null. */
function questionAbove(article) {
  let above = article.previousElementSibling;
  while (above !== null && !above.classList.contains("message-user")) above = above.previousElementSibling;
  return above;
}

/** Take `first` and everything after it off the page. */
function removeFrom(first) {
  let next = first;
  while (next !== null) {
    const after = next.nextElementSibling;
    next.remove();
    next = after;
  }
}

/** Whether asking again may help: the server was unreachable, busy or failed. */
function retryable(error) {
  return error.network || error.status === 429 || error.status >= 500;
}

/** A chat's title from its first question: its first words on one line. */
function titleFor(text) {
  const line = text
    .replace(/[\n\r\t\u2028\u2029]+/g, " ")
    .replace(NOT_IN_TITLES, "")
    .replace(/[*`]+|^[#>\s]+/g, "")
    .replace(/\s+/g, " ")
    .trim();
  if (line.length <= TITLE_CHARS) return line || null;
  const cut = line.slice(0, TITLE_CHARS - 1);
  const space = cut.lastIndexOf(" ");
  return `${space > TITLE_CHARS / 2 ? cut.slice(0, space) : cut}…`;
}

new ChatPage().start();
