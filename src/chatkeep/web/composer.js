// The message box: Enter sends, Shift+Enter is a new line; while a reply is being written its
// Send button gives way to Stop. It grows with its text up to a limit, then scrolls.

import { byId } from "./dom.js";

const MAX_HEIGHT_PX = 220;

export class Composer {
  constructor({ onSend, onStop }) {
    this.form = byId("composer");
    this.input = byId("prompt");
    this.send = byId("send");
    this.stop = byId("stop");
    this.notice = byId("composer-notice");
    this.busy = false;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit(onSend);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.isComposing) {
        event.preventDefault();
        this.submit(onSend);
      }
    });
    this.input.addEventListener("input", () => this.fit());
    this.stop.addEventListener("click", () => {
      this.stop.disabled = true;
      onStop();
    });
  }

  submit(onSend) {
    const text = this.input.value;
    if (this.busy || !text.trim()) return;
    this.notice.replaceChildren();
    onSend(text);
  }

  /** Empty the box (the text was sent). */
  clear() {
    this.input.value = "";
    this.fit();
  }

  /** Put `text` back (it could not be sent), unless something new was typed meanwhile. */
  restore(text) {
    if (!this.input.value.trim()) this.input.value = text;
    this.fit();
  }

  setBusy(busy) {
    const focused = document.activeElement === this.stop || document.activeElement === this.send;
    this.busy = busy;
    this.send.hidden = busy;
    this.stop.hidden = !busy;
    this.stop.disabled = false;
    if (focused) (busy ? this.stop : this.input).focus();
  }

  /** Stop may be pressed again: the last press did not reach the server. */
  stopAgain() {
    this.stop.disabled = false;
  }

  showNotice(element) {
    this.notice.replaceChildren(element);
  }

  focus() {
    this.input.focus();
  }

  /** After a modal dialog hands focus back to the box, Chromium shows it focused but takes no
   *  typing until it is focused again. */
  refocus() {
    if (document.activeElement !== this.input) return;
    this.input.blur();
    this.input.focus();
  }

  fit() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, MAX_HEIGHT_PX)}px`;
  }
}
