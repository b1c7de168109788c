// The API key dialog: asked for when the server answers 401 with a Bearer challenge, and
// reachable from the sidebar to change or forget the key. The key is kept in this browser's
// localStorage (by the Api) and sent as `Authorization: Bearer <key>`.

import { byId } from "./dom.js";

export class KeyDialog {
  constructor(api, { onChange, onClose }) {
    this.api = api;
    this.onChange = onChange;
    this.onClose = onClose;
    this.dialog = byId("key-dialog");
    this.input = byId("key-input");
    this.reason = byId("key-reason");
    this.forget = byId("key-forget");
    this.button = byId("key-button");
    this.dialog.addEventListener("close", () => this.closed());
    this.button.addEventListener("click", () => this.ask("change"));
    this.forget.addEventListener("click", () => {
      this.api.key = "";
      this.dialog.close("forget");
    });
    this.refreshButton();
  }

  /** Open the dialog: `why` is "missing" (none sent), "refused" (the one sent was not valid) or "change". */
  ask(why) {
    if (this.dialog.open) return;
    this.reason.textContent = {
      missing: "This chatkeep server asks for an API key before it shows any chat.",
      refused: "The server refused the API key this browser sent. Check it and enter it again.",
      change: "Chats are kept per API key: another key shows that key's chats.",
    }[why];
    this.input.value = "";
    this.forget.hidden = !this.api.key;
    this.dialog.showModal();
    this.input.focus();
  }

  /** Ask for a key because `error` (a 401) says one is needed. */
  askFor(error) {
    this.ask(this.api.key && error.detail.includes("not valid") ? "refused" : "missing");
  }

  closed() {
    this.onClose();
    const action = this.dialog.returnValue;
    this.dialog.returnValue = "";
    if (action === "save" && this.input.value.trim()) {
      this.api.key = this.input.value.trim();
    } else if (action !== "forget") {
      return;
    }
    this.input.value = "";
    this.refreshButton();
    this.onChange();
  }

  refreshButton() {
    this.button.hidden = !this.api.key && !this.button.dataset.needed;
  }

  /** Show the sidebar's key button from now on: this server uses keys. */
  needed() {
    this.button.dataset.needed = "true";
    this.refreshButton();
  }
}
